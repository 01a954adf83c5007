"""The smoke suite's S3 benchmark: settings from the environment, and a real (small) run of the
image's loader against raw clients on the embedded loopback S3 server."""

from __future__ import annotations

import pytest

from smokesuite import s3bench


def test_storage_options_from_env() -> None:
    assert s3bench.storage_options_from_env({}) == {}
    opts = s3bench.storage_options_from_env({"SMOKE_S3_ANON": "1", "SMOKE_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert opts["anon"] is True and opts["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert opts["config_kwargs"]["response_checksum_validation"] == "when_required"
    assert s3bench.storage_options_from_env({"AWS_ENDPOINT_URL": "http://x:1"})["client_kwargs"]["endpoint_url"] == "http://x:1"


def test_settings_are_checked() -> None:
    assert s3bench.min_ratio({}) == 0.7
    assert s3bench.min_ratio({"SMOKE_S3_MIN_RATIO": "0.5"}) == 0.5
    with pytest.raises(ValueError, match="SMOKE_S3_MIN_RATIO"):
        s3bench.min_ratio({"SMOKE_S3_MIN_RATIO": "fast"})
    assert s3bench.reader_name({}) == "loader_sequential"
    with pytest.raises(ValueError, match="SMOKE_S3_READER"):
        s3bench.reader_name({"SMOKE_S3_READER": "naive"})


@pytest.mark.parametrize("url", ["notaurl", "bucket/prefix", "s3://", "gs://bucket"])
def test_smoke_s3_url_must_be_an_s3_url(url: str) -> None:
    with pytest.raises(ValueError, match="is not an S3 URL: use s3://BUCKET"):
        s3bench.unique_prefix(url)
    assert s3bench.unique_prefix("s3://bucket/base/").startswith("s3://bucket/base/smoke-")


def test_real_run_against_embedded_s3() -> None:
    pytest.importorskip("zarr")
    from zarrloader.s3server import embedded_s3

    with embedded_s3() as server:
        url = f"s3://{server.make_bucket('t')}/a.zarr"
        res = s3bench.run_benchmark(url, server.storage_options(), embedded=True, chunks=6, chunk_mib=1, repeats=1)
    assert res.reader == "zarrloader (loader_sequential)"
    assert res.objects == 6 and res.nbytes == 6 * 1024 * 1024
    assert set(res.raw_clients_mib_per_s) == {"obstore", "s3fs"}  # both measured, the faster is the yardstick
    assert res.raw_mib_per_s == max(res.raw_clients_mib_per_s.values())
    assert res.ratio == pytest.approx(res.reader_mib_per_s / res.raw_mib_per_s)
    assert list(res.figures())[:3] == ["ratio", "raw_mib_per_s", "reader_mib_per_s"]


def test_wrong_data_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first loader run is compared with what was written: a loader returning other bytes fails."""
    pytest.importorskip("zarr")
    import numpy as np

    from zarrloader.s3server import embedded_s3

    real = s3bench.expected_data
    with embedded_s3() as server:
        url = f"s3://{server.make_bucket('t')}/a.zarr"
        s3bench.write_dataset(url, server.storage_options(), chunks=2, chunk_mib=1)
        monkeypatch.setattr(s3bench, "expected_data", lambda c, r: real(c, r) + np.uint32(1))
        with pytest.raises(AssertionError, match="different data"):
            s3bench.measure(url, server.storage_options(), chunks=2, chunk_mib=1, repeats=1,
                            reader="loader_sequential", embedded=True)
