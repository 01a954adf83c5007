"""S3 Zarr read benchmark: the reader must reach a fraction of raw parallel GET throughput."""

from __future__ import annotations

import contextlib
import os

import pytest

from smokesuite.expect import require_data_stack
from smokesuite.plugin import Figures


def test_s3_zarr_read_benchmark(figures: Figures) -> None:
    require_data_stack("zarr", "s3fs", "obstore", "numpy", "zarrloader")
    from smokesuite import s3bench

    try:
        threshold, reader = s3bench.min_ratio(), s3bench.reader_name()
        target = os.environ.get("SMOKE_S3_URL")
        prefix = s3bench.unique_prefix(target) if target else None
    except ValueError as exc:  # a mistyped setting: its own message, not a traceback
        pytest.fail(str(exc), pytrace=False)
    figures["reader"] = reader
    with contextlib.ExitStack() as stack:
        if prefix:
            url, opts, embedded = prefix, s3bench.storage_options_from_env(), False
            stack.callback(s3bench.cleanup, url, opts)
        else:
            from zarrloader.s3server import embedded_s3

            server = stack.enter_context(embedded_s3())
            url, opts, embedded = f"s3://{server.make_bucket('smoke')}/bench.zarr", server.storage_options(), True
        result = s3bench.run_benchmark(url, opts, embedded=embedded, threshold=threshold)
    figures.update(result.figures())
    figures["min_ratio"] = threshold
    assert result.ratio >= threshold, (
        f"{result.reader} read {result.reader_mib_per_s:.0f} MiB/s, {result.ratio:.2f} of the fastest raw client's "
        f"parallel GETs ({result.raw_client}: {result.raw_mib_per_s:.0f} MiB/s); the floor is {threshold} "
        f"(set {s3bench.MIN_RATIO_ENV} to change it)")


def test_zarrloader_reads_whole_chunks_directly_and_exactly(figures: Figures) -> None:
    """The loader decodes whole chunks itself through zarr's codec pipeline (zarrloader.chunkread),
    which leans on zarr internals: with this image's zarr the direct path must be active for simple
    layouts and return exactly what zarr's own read returns; plain chunks must be received into the
    loader's own memory (zarrloader.receive, which leans on s3fs and aiobotocore). Catches any of them
    drifting at a version bump. Small plain chunks must be read by tensorstore's kvstore (its probe
    read succeeds with this image's tensorstore and botocore)."""
    require_data_stack("zarr", "s3fs", "numpy", "zarrloader", "tensorstore")
    import numpy as np
    import zarr
    from zarr.storage import FsspecStore

    from zarrloader import ZarrSource, make_loader
    from zarrloader.s3server import embedded_s3

    rng = np.random.default_rng(0)
    cases = {  # name: (data, chunks, create_array options)
        "v3-raw": (rng.random((50, 8, 8), dtype=np.float32), (8, 8, 8), {"compressors": None}),
        "v3-zstd": (rng.integers(0, 1000, (50, 16), dtype=np.int32), (7, 16), {}),
        "v2-blosc": (rng.random((30, 4)).astype(">f8"), (4, 4), {"zarr_format": 2}),
    }
    with embedded_s3() as server:
        bucket = server.make_bucket("direct")
        for name, (data, chunks, kw) in cases.items():
            url = f"s3://{bucket}/{name}.zarr"
            store = FsspecStore.from_url(url, storage_options=server.storage_options(), read_only=False)
            zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype, **kw)[:] = data
            src = ZarrSource(url, storage_options=server.storage_options())
            assert src.direct_arrays == ("",), f"{name}: zarr {zarr.__version__} no longer fits the direct chunk path"
            if name == "v3-raw":  # plain chunks: received into the loader's memory (s3fs/aiobotocore internals)
                assert src.received_arrays == ("",), "plain chunks are no longer received into the loader's memory"
            batches = list(make_loader(src, batch_size=5, shuffle=True, seed=1, return_index=True, concurrency=4))
            got = np.concatenate([b[""].numpy() for b in batches])
            order = np.argsort(np.concatenate([b["index"].numpy() for b in batches]))
            np.testing.assert_array_equal(got[order], data, err_msg=f"{name}: direct reads differ from the data written")
            if name == "v3-raw":  # small plain chunks: read by tensorstore's kvstore (backends.tensorstore_reads)
                note = getattr(src.backend, "native_note", None)
                assert getattr(src.backend, "native_active", False), \
                    f"small plain chunks are no longer read by tensorstore: {note}"
                figures["small_chunks_client"] = "tensorstore"
            src.close()
    figures["zarr"] = zarr.__version__
    figures["direct_cases"] = sorted(cases)
