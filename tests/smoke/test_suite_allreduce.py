"""The all-reduce harness for real (gloo on CPU): a corrupted element is caught, a hang is killed
at the timeout, failures are classified."""

from __future__ import annotations

import pytest

from smokesuite.allreduce import AllReduceResult, bus_bandwidth, classify_failure, run_allreduce

pytest.importorskip("torch.distributed")


def test_corrupted_element_is_caught() -> None:
    res = run_allreduce("gloo", 2, [64 * 1024], timeout_s=60, measure=False, inject="corrupt:1")
    assert not res.ok
    assert any("wrong result" in e and "1 element(s)" in e for e in res.errors), res.errors


def test_hang_fails_at_the_timeout() -> None:
    res = run_allreduce("gloo", 2, [4096], timeout_s=10, measure=False, inject="hang:1")
    assert not res.ok and res.timed_out
    assert res.duration_s < 10 + 15  # killed at the deadline (plus kill/cleanup), not left to hang
    assert "timed out after 10 s" in res.summary() and "1]" in res.summary()


def test_bus_bandwidth_formula() -> None:
    assert bus_bandwidth(100.0, 1) == 0.0
    assert bus_bandwidth(100.0, 2) == 100.0
    assert bus_bandwidth(100.0, 8) == pytest.approx(175.0)


def test_classification() -> None:
    ok = AllReduceResult("nccl", 2, ok=True)
    bad = AllReduceResult("nccl", 2, ok=False, errors=["rank 0: NCCL error"])
    hung = AllReduceResult("nccl", 2, ok=False, timed_out=True, errors=["timed out"])
    assert classify_failure(ok, None) == "ok"
    assert classify_failure(bad, ok) == "p2p"
    assert classify_failure(bad, bad) == "nccl"
    assert classify_failure(hung, hung) == "hang"
