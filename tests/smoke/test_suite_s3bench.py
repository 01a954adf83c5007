"""S3 benchmark helpers: env handling, the zarrloader fallback, and a real (small) run against the
embedded loopback S3 server."""

from __future__ import annotations

import sys

import pytest

from smokesuite import s3bench


def test_storage_options_from_env() -> None:
    assert s3bench.storage_options_from_env({}) == {}
    opts = s3bench.storage_options_from_env({"SMOKE_S3_ANON": "1", "SMOKE_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert opts["anon"] is True and opts["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert opts["config_kwargs"]["response_checksum_validation"] == "when_required"
    assert s3bench.storage_options_from_env({"AWS_ENDPOINT_URL": "http://x:1"})["client_kwargs"]["endpoint_url"] == "http://x:1"


def test_min_ratio() -> None:
    assert s3bench.min_ratio({}) == 0.7
    assert s3bench.min_ratio({"SMOKE_S3_MIN_RATIO": "0.5"}) == 0.5
    with pytest.raises(ValueError, match="SMOKE_S3_MIN_RATIO"):
        s3bench.min_ratio({"SMOKE_S3_MIN_RATIO": "fast"})


def test_fallback_reader_against_embedded_s3() -> None:
    pytest.importorskip("zarr")
    pytest.importorskip("s3fs")
    from zarrloader.s3server import embedded_s3

    with embedded_s3() as server:
        url = f"s3://{server.make_bucket('t')}/a.zarr"
        res = s3bench.run_fallback(url, server.storage_options(), chunks=6, chunk_mib=1, repeats=1, embedded=True)
    assert res.reader == s3bench.FALLBACK_READER
    assert res.objects == 6 and res.nbytes == 6 * 1024 * 1024
    assert res.raw_mib_per_s > 0 and res.reader_mib_per_s > 0
    assert res.ratio == pytest.approx(res.reader_mib_per_s / res.raw_mib_per_s)
    assert list(res.figures())[:3] == ["ratio", "raw_mib_per_s", "reader_mib_per_s"]


def test_fallback_is_used_and_said_when_zarrloader_bench_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zarrloader.bench", None)  # as if zarrloader had no benchmark
    seen = {}

    def fake_fallback(url, storage_options, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)
        return s3bench.S3BenchResult(s3bench.FALLBACK_READER, url, True, 1, 1, 1.0, 1.0, 1.0, kw.get("note"))

    monkeypatch.setattr(s3bench, "run_fallback", fake_fallback)
    res = s3bench.run_benchmark("s3://b/p", {}, embedded=True)
    assert res.reader == "zarr+s3fs (zarrloader unavailable)" and "zarrloader not importable" in (res.note or "")


def test_zarrloader_is_used_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    fake = types.ModuleType("zarrloader.bench")
    calls = []

    def run_quick_benchmark(url=None, storage_options=None, **kw):  # type: ignore[no-untyped-def]
        calls.append((url, storage_options))
        assert kw["reader"] == "loader_sequential"
        return {"raw_mib_per_s": 400.0, "loader_mib_per_s": 360.0 if len(calls) > 1 else 200.0,
                "ratio": 0.9 if len(calls) > 1 else 0.5, "reader": kw["reader"],
                "total_bytes": 64 << 20, "chunk_bytes": 4 << 20}

    fake.run_quick_benchmark = run_quick_benchmark  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zarrloader.bench", fake)
    res = s3bench.run_benchmark("s3://b/p", {"anon": True}, embedded=False, threshold=0.7)
    assert res.reader == "zarrloader (loader_sequential)" and res.objects == 16
    assert res.ratio == 0.9 and len(calls) == 2 and calls[0] == ("s3://b/p", {"anon": True})  # retried, then passed
    assert "best of 2 runs" in (res.note or "")
    assert s3bench.run_benchmark("s3://b/p", {}, embedded=False).ratio == 0.9  # no threshold: no retry


def test_a_slow_reader_stays_slow_after_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    fake = types.ModuleType("zarrloader.bench")
    calls = []

    def run_quick_benchmark(url=None, storage_options=None, **kw):  # type: ignore[no-untyped-def]
        calls.append(url)
        return {"raw_mib_per_s": 400.0, "loader_mib_per_s": 100.0, "ratio": 0.25}

    fake.run_quick_benchmark = run_quick_benchmark  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zarrloader.bench", fake)
    res = s3bench.run_benchmark("s3://b/p", {}, embedded=True, threshold=0.7)
    assert len(calls) == s3bench.ATTEMPTS and res.ratio == 0.25 and "best of 3 runs" in (res.note or "")
