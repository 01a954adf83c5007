"""``inspect`` against a server frozen mid-inspect (after the metadata is read, while objects are
sampled and listed): ``StorageUnavailableError`` naming the endpoint, the operation and the settings,
within connect + read x (retries + 1) + grace, on both S3 backends. Real ``rclone serve s3``, SIGSTOP."""

from __future__ import annotations

import os
import signal
import time

import pytest
from faultkit import BUCKET, run_bounded

from zarrloader import StorageOptions, StorageUnavailableError
from zarrloader.advice import CostModel, inspect_store
from zarrloader.backends import Deadline
from zarrloader.backends.base import Backend
from zarrloader.s3server import S3Server

FAST = {"connect_timeout": 1.0, "read_timeout": 2.0, "retries": 1}
BOUND = Deadline(1.0, 2.0, 1).seconds
MARGIN = 3.0


def _freeze_on_request(monkeypatch: pytest.MonkeyPatch, server: S3Server, method: str, nth: int,
                       box: dict[str, float]) -> None:
    """SIGSTOP the server just before the ``nth`` call of ``Backend.<method>`` (a real freeze, at a
    known point of the command: after its metadata reads)."""
    original = getattr(Backend, method)
    calls = [0]

    def wrapper(self: Backend, *a: object, **k: object) -> object:
        calls[0] += 1
        if calls[0] == nth and "t" not in box:
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            box["t"] = time.monotonic()
        return original(self, *a, **k)

    monkeypatch.setattr(Backend, method, wrapper)


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
@pytest.mark.parametrize(("method", "nth"), [("size", 3), ("list_objects", 1)])  # sampling sizes, listing
def test_frozen_server_mid_inspect_raises_within_the_bound(s3: S3Server, monkeypatch: pytest.MonkeyPatch,
                                                            backend: str, method: str, nth: int) -> None:
    opts = StorageOptions(extra=s3.storage_options(), backend=backend, **FAST)  # type: ignore[arg-type]
    box: dict[str, float] = {}
    _freeze_on_request(monkeypatch, s3, method, nth, box)
    try:
        outcome = run_bounded(lambda: inspect_store(f"s3://{BUCKET}/zstd.zarr", opts, model=CostModel(),
                                                    list_objects=True), BOUND + 60)
        t_end = time.monotonic()
    finally:
        assert s3.process is not None
        os.kill(s3.process.pid, signal.SIGCONT)
    assert outcome.done, f"inspect hung on a frozen server ({backend}, {method})"
    assert "t" in box, "the server was never frozen"
    err = outcome.error
    assert isinstance(err, StorageUnavailableError), repr(err)
    for needle in (s3.endpoint_url, "read_timeout=2 s", "retries=1", "Fix:"):
        assert needle in str(err), f"{needle!r} missing from: {err}"
    print(f"\ninspect, {backend}, frozen at {method} #{nth}: error {t_end - box['t']:.1f} s after SIGSTOP")
    assert t_end - box["t"] <= BOUND + MARGIN, f"error {t_end - box['t']:.1f} s after the freeze, bound {BOUND:g} s"
    # and once the server is back, the same inspect works
    monkeypatch.undo()
    rep = inspect_store(f"s3://{BUCKET}/zstd.zarr", opts, model=CostModel(latency_s=0.01))
    assert rep.arrays and rep.arrays[0].info.shape == (400, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_frozen_server_mid_inspect_with_the_default_settings_ends_within_90_s(
        s3: S3Server, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """The documented defaults: 5 + 20 x 3 + 2 = 67 s per operation, under the 90 s promised."""
    default = Deadline.from_options(StorageOptions())
    assert default.seconds <= 90
    opts = StorageOptions(extra=s3.storage_options(), backend=backend)
    box: dict[str, float] = {}
    _freeze_on_request(monkeypatch, s3, "size", 3, box)
    try:
        outcome = run_bounded(lambda: inspect_store(f"s3://{BUCKET}/zstd.zarr", opts), 150)
        t_end = time.monotonic()
    finally:
        assert s3.process is not None
        os.kill(s3.process.pid, signal.SIGCONT)
    assert outcome.done, f"inspect hung with the default settings ({backend})"
    assert isinstance(outcome.error, StorageUnavailableError), repr(outcome.error)
    waited = t_end - box["t"]
    print(f"\ninspect, {backend}, default settings: error {waited:.1f} s after SIGSTOP (bound {default.seconds:g} s)")
    assert waited <= default.seconds + MARGIN
