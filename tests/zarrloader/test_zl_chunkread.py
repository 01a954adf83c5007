"""The direct whole-chunk path (zarrloader.chunkread): which arrays take it, and that what it returns
is exactly what zarr's own read returns, over the real S3 server. Batches stay writable."""

from __future__ import annotations

import warnings

import fsspec
import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore
from zl_helpers import BUCKET

from zarrloader import ZarrSource, make_loader
from zarrloader.s3server import S3Server


def _store(server: S3Server, name: str, read_only: bool = True) -> FsspecStore:
    return FsspecStore.from_url(f"s3://{BUCKET}/{name}", storage_options=server.storage_options(), read_only=read_only)


def _write(server: S3Server, name: str, data: np.ndarray, chunks: tuple[int, ...], *, skip_chunks: int = 0,
           **kw: object) -> str:
    z = zarr.create_array(_store(server, name, read_only=False), shape=data.shape, chunks=chunks, dtype=data.dtype, **kw)
    if skip_chunks:  # leave the first chunks unwritten: they read back as fill_value
        z[skip_chunks * chunks[0] :] = data[skip_chunks * chunks[0] :]
    else:
        z[:] = data
    return f"s3://{BUCKET}/{name}"


def _epoch(url: str, server: S3Server, shuffle: bool, batch_size: int = 7) -> np.ndarray:
    src = ZarrSource(url, storage_options=server.storage_options())
    ld = make_loader(src, batch_size=batch_size, shuffle=shuffle, return_index=True, concurrency=4, seed=3,
                     min_read_bytes=64)  # small reads coalesced: several chunks per fetch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor is built on read-only memory
        batches = list(ld)
        for b in batches:
            b[""].add_(0)  # in-place write: every batch tensor owns writable memory
    got = np.concatenate([b[""].numpy() for b in batches])
    return got[np.argsort(np.concatenate([b["index"].numpy() for b in batches]))]


def _direct(url: str, server: S3Server) -> bool:
    return ZarrSource(url, storage_options=server.storage_options()).direct_arrays == ("",)


rng = np.random.default_rng(7)
SIMPLE = {
    "v3 raw float32": (rng.random((45, 6, 5), dtype=np.float32), (4, 6, 5), {"compressors": None}),
    "v3 zstd int16": (rng.integers(-900, 900, (45, 8), dtype=np.int16), (6, 8), {}),
    "v3 big-endian": (rng.random((30, 4)).astype(">f8"), (8, 4), {"compressors": None}),
    "v2 raw uint8": (rng.integers(0, 255, (33, 3, 3), dtype=np.uint8), (5, 3, 3), {"zarr_format": 2, "compressors": None}),
    "v2 big-endian blosc": (rng.random((20, 3)).astype(">f4"), (6, 3), {"zarr_format": 2}),
    "v3 missing chunks": (rng.random((40, 2), dtype=np.float32), (8, 2), {"compressors": None, "fill_value": 5.0}),
}


@pytest.mark.parametrize("case", list(SIMPLE))
@pytest.mark.parametrize("shuffle", [False, True])
def test_direct_path_equals_zarr(scratch_s3: S3Server, case: str, shuffle: bool) -> None:
    data, chunks, kw = SIMPLE[case]
    skip = 2 if case == "v3 missing chunks" else 0
    url = _write(scratch_s3, case.replace(" ", "_") + ".zarr", data, chunks, skip_chunks=skip, **kw)
    assert _direct(url, scratch_s3), "this layout should take the direct path"
    expected = zarr.open_array(_store(scratch_s3, url.split("/")[-1]), mode="r")[:]
    if skip:
        assert (expected[: skip * chunks[0]] == 5.0).all()
    got = _epoch(url, scratch_s3, shuffle)
    assert got.dtype == expected.dtype.newbyteorder("=")  # tensors are native-endian
    np.testing.assert_array_equal(got, expected)


FALLBACK = {
    "sharded": (rng.random((32, 4), dtype=np.float32), (4, 4), {"shards": (16, 4)}),
    "split along axis 1": (rng.random((20, 8), dtype=np.float32), (5, 4), {}),
    "v2 Fortran order": (rng.random((20, 3), dtype=np.float32), (5, 3), {"zarr_format": 2, "order": "F"}),
    "structured dtype": (np.zeros(12, dtype=[("a", "i4"), ("b", "f4")]), (4,), {"zarr_format": 2}),
}


@pytest.mark.parametrize("case", list(FALLBACK))
def test_other_layouts_go_through_zarr_and_read_the_same(scratch_s3: S3Server, case: str) -> None:
    data, chunks, kw = FALLBACK[case]
    url = _write(scratch_s3, case.replace(" ", "_").replace(".", "") + ".zarr", data, chunks, **kw)
    assert not _direct(url, scratch_s3)
    if data.dtype.names:
        return  # the loader's tensors cannot hold structured dtypes; the point is the fallback
    np.testing.assert_array_equal(_epoch(url, scratch_s3, shuffle=False), data)


def test_direct_reads_of_a_corrupt_chunk_still_name_it(scratch_s3: S3Server) -> None:
    data = rng.random((24, 4), dtype=np.float32)
    url = _write(scratch_s3, "trunc.zarr", data, (6, 4), compressors=None)
    fs = fsspec.filesystem("s3", **scratch_s3.storage_options())
    key = f"{BUCKET}/trunc.zarr/c/2/0"
    fs.pipe_file(key, fs.cat_file(key)[:10])  # wrong size for an uncompressed chunk
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    with pytest.raises(Exception, match=r"c/2/0"):
        list(make_loader(src, batch_size=4, shuffle=False, concurrency=2))
