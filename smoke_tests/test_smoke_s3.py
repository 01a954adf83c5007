"""S3 Zarr read benchmark: the reader must reach a fraction of raw parallel GET throughput."""

from __future__ import annotations

import contextlib
import os

import pytest

from smokesuite.plugin import Figures


def test_s3_zarr_read_benchmark(figures: Figures) -> None:
    for module in ("zarr", "s3fs", "numpy"):
        pytest.importorskip(module, reason=f"{module} is not installed (the data stack is not on this host)")
    from smokesuite import s3bench

    threshold = s3bench.min_ratio()
    target = os.environ.get("SMOKE_S3_URL")
    with contextlib.ExitStack() as stack:
        if target:
            url, opts, embedded = s3bench.unique_prefix(target), s3bench.storage_options_from_env(), False
            stack.callback(s3bench.cleanup, url, opts)
        else:
            from zarrloader.s3server import embedded_s3

            server = stack.enter_context(embedded_s3())
            url, opts, embedded = f"s3://{server.make_bucket('smoke')}/bench.zarr", server.storage_options(), True
        result = s3bench.run_benchmark(url, opts, embedded=embedded, threshold=threshold)
    figures.update(result.figures())
    figures["min_ratio"] = threshold
    assert result.ratio >= threshold, (
        f"{result.reader} read {result.reader_mib_per_s:.0f} MiB/s, {result.ratio:.2f} of raw parallel GETs "
        f"({result.raw_mib_per_s:.0f} MiB/s); the floor is {threshold} (set {s3bench.MIN_RATIO_ENV} to change it)")
