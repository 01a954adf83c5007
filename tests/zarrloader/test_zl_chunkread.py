"""The direct whole-chunk path (zarrloader.chunkread): which arrays take it, and that what it returns
is exactly what zarr's own read returns, over the real S3 server. Batches stay writable."""

from __future__ import annotations

import warnings
from typing import Any

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
                     min_read_bytes=2000)  # small reads coalesced: several chunks (and a partial last one) per fetch
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


# -- received straight into memory we own (zarrloader.receive) --------------------------------------
def test_storage_order_batches_are_views_of_one_fetch(scratch_s3: S3Server) -> None:
    """Plain chunks are received into one writable buffer per fetch, chunks back to back: storage-order
    batches inside a fetch are views of it (no copy), writable, and independent of each other."""
    import torch

    data = rng.random((64, 16, 16), dtype=np.float32)  # chunks of 8 rows = 8 KiB
    url = _write(scratch_s3, "views.zarr", data, (8, 16, 16), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    assert src.received_arrays == ("",)
    ld = make_loader(src, batch_size=16, shuffle=False, concurrency=2, min_read_bytes=4 * 8 * 16 * 16 * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = [b[""] for b in ld]
    assert [len(b) for b in batches] == [16, 16, 16, 16]
    # back to back in memory: views of one buffer (separate allocations never touch: malloc headers)
    adjacent = [batches[i + 1].data_ptr() == batches[i].data_ptr() + batches[i].nbytes for i in range(3)]
    assert adjacent == [True, False, True], "batches of one fetch (4 chunks) should be views of its buffer"
    batches[0].mul_(0)  # writable, and only its own rows
    np.testing.assert_array_equal(torch.cat(batches[1:]).numpy(), data[16:])
    assert (batches[0] == 0).all()


def test_receivers_come_from_the_backends_that_know_their_read_path(scratch_s3: S3Server, tmp_path) -> None:
    from zarrloader import StorageOptions
    from zarrloader.backends import open_backend
    from zarrloader.storage import parse_url

    def receiver(url: str, backend: str | None = None) -> object:
        return open_backend(parse_url(url), StorageOptions(extra=scratch_s3.storage_options(), backend=backend)).receiver()

    s3fs_receiver, obstore_receiver = receiver("s3://data/x.zarr", "fsspec"), receiver("s3://data/x.zarr")
    assert s3fs_receiver is not None and not s3fs_receiver.adopts
    # obstore hands over its own buffer: adopted (no copy), or copied into a block when asked to fill
    assert obstore_receiver is not None and obstore_receiver.adopts
    local = open_backend(parse_url(str(tmp_path)), StorageOptions()).receiver()
    assert local is not None and not local.adopts
    assert open_backend(parse_url("http://127.0.0.1:9/x.zarr"), StorageOptions()).receiver() is None


def _owner(a: np.ndarray) -> object:
    """What finally holds the memory of ``a`` (numpy's chain of bases, to the first non-array)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base


@pytest.mark.parametrize("contiguous", [True, False])
def test_obstore_fills_a_block_or_adopts_its_buffers(scratch_s3: S3Server, contiguous: bool) -> None:
    """Asked for one block (storage-order batches spanning reads): chunks copied back to back into it;
    otherwise obstore's own buffers are adopted, no copy. Writable and exact either way."""
    data = rng.random((64, 16, 16), dtype=np.float32)
    url = _write(scratch_s3, f"obs-{contiguous}.zarr", data, (8, 16, 16), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    assert src.backend_name == "obstore" and src.received_arrays == ("",)
    fut = src.submit_ranges([(0, 8), (8, 16)], contiguous=contiguous)
    got = [g[""] for g in src.wait_fetch(fut, [(0, 8), (8, 16)])]
    assert all(g.flags.writeable for g in got)
    adjacent = got[1].ctypes.data == got[0].ctypes.data + got[0].nbytes
    assert adjacent == contiguous
    assert [type(_owner(g)).__name__ == "_Adopted" for g in got] == [not contiguous] * 2
    np.testing.assert_array_equal(np.concatenate(got), data[:16])
    src.close()


def test_adopted_buffers_are_the_loaders_alone(scratch_s3: S3Server) -> None:
    """Writing into an adopted chunk changes nothing else: not another read of the same object (in
    flight at the same time or later), not the stored object."""
    import asyncio

    data = rng.random((16, 64, 64), dtype=np.float32)  # 128 KiB chunks: bodies of one frame and of several
    url = _write(scratch_s3, "adopt.zarr", data, (8, 64, 64), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    receiver = src.backend.receiver()
    assert receiver is not None and receiver.adopts
    nbytes = 8 * 64 * 64 * 4

    async def both() -> list[np.ndarray]:
        return list(await asyncio.gather(receiver.adopt("c/0/0/0", nbytes), receiver.adopt("c/0/0/0", nbytes),
                                         receiver.adopt("c/1/0/0", nbytes)))

    a, b, c = src.backend.run(both(), "test")
    assert a.flags.writeable and a.flags.owndata is False
    a[:] = 0
    expected = data[:8].view(np.uint8).reshape(-1)
    np.testing.assert_array_equal(b, expected)
    np.testing.assert_array_equal(c, data[8:].view(np.uint8).reshape(-1))
    again = src.backend.run(receiver.adopt("c/0/0/0", nbytes), "test")
    np.testing.assert_array_equal(again, expected)
    assert src.backend.run(receiver.adopt("c/9/0/0", nbytes), "test") is None
    with pytest.raises(Exception, match="holds"):
        src.backend.run(receiver.adopt("c/0/0/0", nbytes + 4), "test")
    src.close()


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_storage_order_batches_inside_a_chunk_are_views(scratch_s3: S3Server, backend: str) -> None:
    """Batches no longer than a chunk: views of the received chunk (obstore: of its own buffer, no copy
    at all), writable, only their own rows; the next epoch reads the stored data, not our writes."""
    data = rng.random((64, 32, 32), dtype=np.float32)  # chunks of 16 rows = 64 KiB
    url = _write(scratch_s3, f"inchunk-{backend}.zarr", data, (16, 32, 32), compressors=None)
    from zarrloader import StorageOptions

    src = ZarrSource(url, storage_options=StorageOptions(extra=scratch_s3.storage_options(), backend=backend))
    ld = make_loader(src, batch_size=8, shuffle=False, concurrency=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = [b[""] for b in ld]
    assert len(batches) == 8
    assert all(batches[i + 1].data_ptr() == batches[i].data_ptr() + batches[i].nbytes for i in (0, 2, 4, 6))
    batches[0].mul_(0)
    assert (batches[0] == 0).all()
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches[1:]]), data[8:])
    again = np.concatenate([b[""].numpy() for b in make_loader(src, batch_size=8, shuffle=False, concurrency=2)])
    np.testing.assert_array_equal(again, data)
    src.close()


@pytest.mark.parametrize("change", ["longer", "shorter"])
def test_received_chunk_of_the_wrong_size_is_named(scratch_s3: S3Server, change: str) -> None:
    data = rng.random((24, 4), dtype=np.float32)
    url = _write(scratch_s3, f"size-{change}.zarr", data, (6, 4), compressors=None)
    fs = fsspec.filesystem("s3", **scratch_s3.storage_options())
    key = f"{BUCKET}/size-{change}.zarr/c/2/0"
    body = fs.cat_file(key)
    fs.pipe_file(key, body + b"\0" * 8 if change == "longer" else body[:-8])
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    with pytest.raises(Exception, match=r"c/2/0"):
        list(make_loader(src, batch_size=4, shuffle=False, concurrency=2))


@pytest.mark.parametrize("shuffle", [False, True])
def test_local_files_are_received_too(tmp_path, shuffle: bool) -> None:
    data = rng.random((40, 3, 3), dtype=np.float32)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(6, 3, 3), dtype=data.dtype,
                          compressors=None, fill_value=2.0)
    z[6:] = data[6:]  # chunk 0 missing: fill value
    expected = z[:]
    src = ZarrSource(str(tmp_path / "a.zarr"))
    assert src.direct_arrays == src.received_arrays == ("",)
    ld = make_loader(src, batch_size=5, shuffle=shuffle, return_index=True, concurrency=3, min_read_bytes=900)
    batches = list(ld)
    got = np.concatenate([b[""].numpy() for b in batches])[np.argsort(np.concatenate([b["index"].numpy() for b in batches]))]
    np.testing.assert_array_equal(got, expected)
    (tmp_path / "a.zarr" / "c" / "3" / "0" / "0").write_bytes(b"short")
    with pytest.raises(Exception, match=r"c/3/0/0"):
        list(make_loader(ZarrSource(str(tmp_path / "a.zarr")), batch_size=5, shuffle=shuffle, concurrency=3))


def test_missing_chunks_refused_when_zarr_says_so(scratch_s3: S3Server) -> None:
    from zarr.core.array_spec import ArrayConfig

    if "read_missing_chunks" not in ArrayConfig.__dataclass_fields__:
        pytest.skip("this zarr has no read_missing_chunks setting (added in zarr 3.2)")
    data = rng.random((24, 4), dtype=np.float32)
    url = _write(scratch_s3, "nomissing.zarr", data, (6, 4), compressors=None, skip_chunks=1)
    with zarr.config.set({"array.read_missing_chunks": False}):
        src = ZarrSource(url, storage_options=scratch_s3.storage_options())
        with pytest.raises(Exception, match=r"c/0/0|missing"):
            list(make_loader(src, batch_size=4, shuffle=False, concurrency=2))


class _FaultyS3:
    """A bare HTTP server answering every GET with one object of ``size`` bytes, misbehaving on
    demand the way real connections do (rclone cannot be made to): ``cut`` sends half the body and
    drops the connection, ``chunked`` sends ``size + 8`` bytes without a Content-Length."""

    def __init__(self, size: int) -> None:
        import socket
        import threading

        self.size, self.faults, self.gets = size, [], 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def options(self) -> dict[str, object]:
        return {"key": "k", "secret": "s",
                "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{self.sock.getsockname()[1]}",
                                  "region_name": "us-east-1"},
                "config_kwargs": {"response_checksum_validation": "when_required",
                                  "request_checksum_calculation": "when_required"}}

    def _serve(self) -> None:
        import threading

        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: Any) -> None:
        import socket

        f = conn.makefile("rb")
        with conn:
            while f.readline():
                while f.readline() not in (b"\r\n", b""):
                    pass
                self.gets += 1
                fault = self.faults.pop(0) if self.faults else None
                if fault == "chunked":
                    body = b"\x02" * (self.size + 8)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
                    continue
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size
                if fault == "cut":
                    conn.sendall(head + b"\x01" * (self.size // 2))
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(head + b"\x01" * self.size)


def test_s3_receiver_retries_a_cut_body_and_refuses_an_overlong_one() -> None:
    import asyncio

    from zarrloader import StorageOptions
    from zarrloader.backends.fsspec import FsspecBackend
    from zarrloader.receive import ObjectSizeError
    from zarrloader.storage import parse_url

    server = _FaultyS3(100_000)
    out = np.zeros(100_000, dtype=np.uint8)
    backend = FsspecBackend(parse_url("s3://bkt/a.zarr"), StorageOptions(extra=server.options))

    async def run() -> None:
        receive = backend.receiver()
        assert receive is not None
        server.faults = ["cut", "cut"]  # two connections reset mid-body, then a good answer
        assert await receive("c/0", memoryview(out))
        assert server.gets == 3 and int(out.sum()) == 100_000
        server.faults = ["chunked"]
        with pytest.raises(ObjectSizeError, match="more than the 100000 bytes"):
            await receive("c/0", memoryview(out))

    asyncio.run(run())


def test_small_adopted_bodies_stay_the_loaders_alone(scratch_s3: S3Server) -> None:
    """1 KiB bodies arrive in one frame, inside the connection's read buffer: the case whose
    exclusivity needs the argument in backends.obstore. Many are held at once while more responses
    arrive on the same connections; writing into them changes no other read, later ones included."""
    data = rng.random((96, 256), dtype=np.float32)  # chunks of one row = 1 KiB
    url = _write(scratch_s3, "small.zarr", data, (1, 256), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    receiver = src.backend.receiver()

    async def adopt(rows: range) -> list[np.ndarray]:
        import asyncio

        return list(await asyncio.gather(*(receiver.adopt(f"c/{r}/0", 1024) for r in rows)))

    held = src.backend.run(adopt(range(48)), "test")
    for a in held:
        a[:] = 0xFF  # our memory: scribble over all of it
    later = src.backend.run(adopt(range(96)), "test")
    for r, a in enumerate(later):
        np.testing.assert_array_equal(a.view(np.float32), data[r])
    assert all((a == 0xFF).all() for a in held)
    src.close()


def test_an_adopted_buffer_not_aligned_for_the_dtype_is_copied(tmp_path) -> None:
    """numpy and torch want aligned memory: a client buffer starting at an odd address is copied."""
    import asyncio

    from zarr.core.sync import sync

    from zarrloader.chunkread import DirectChunkReader

    data = rng.random((16, 4), dtype=np.float64)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(8, 4), dtype=data.dtype, compressors=None)
    z[:] = data

    class Unaligned:
        adopts = True

        async def __call__(self, key: str, out: memoryview) -> bool:
            raise AssertionError("must adopt")

        async def adopt(self, key: str, nbytes: int) -> np.ndarray:
            await asyncio.sleep(0)
            raw = np.zeros(nbytes + 1, dtype=np.uint8)[1:]  # one byte off the allocation's alignment
            raw[:] = np.frombuffer((tmp_path / "a.zarr" / key).read_bytes(), dtype=np.uint8)
            return raw

    reader = DirectChunkReader.for_array(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"), Unaligned())
    assert reader is not None
    got = sync(reader.read_many([(0, 8), (8, 16)], contiguous=False))
    assert all(g.ctypes.data % 8 == 0 and g.flags.writeable for g in got)
    np.testing.assert_array_equal(np.concatenate(got), data)


@pytest.mark.parametrize("tensorstore", ["0", "1"])
def test_a_one_chunk_fetch_costs_the_event_loop_one_task(scratch_s3: S3Server, monkeypatch: pytest.MonkeyPatch,
                                                         tensorstore: str) -> None:
    """A fetch of one chunk per array is the coroutine submitted, nothing more: no gather, no task
    per chunk (they were most of the loop's own work per fetch, see chunkread). Where tensorstore
    reads the small chunks (``backends.tensorstore_reads``), a fetch costs the loop nothing at all.
    Arrays inside a group (chunk keys under the array's path) read exactly."""
    import asyncio

    from zarrloader.backends.base import zarr_loop
    from zarrloader.backends.tensorstore_reads import ENV_SWITCH

    if tensorstore == "1":
        pytest.importorskip("tensorstore")
    monkeypatch.setenv(ENV_SWITCH, tensorstore)

    data = rng.random((32, 8, 8), dtype=np.float32)
    group = zarr.open_group(_store(scratch_s3, "onetask.zarr", read_only=False), mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype, compressors=None)[:] = data
    src = ZarrSource(f"s3://{BUCKET}/onetask.zarr", arrays=["a"], storage_options=scratch_s3.storage_options())
    assert src.received_arrays == ("a",)
    src.wait_fetch(src.submit_ranges([(0, 8)], contiguous=False), [(0, 8)])  # opened, warm
    loop = zarr_loop()
    made: list[object] = []
    previous = loop.get_task_factory()

    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    loop.call_soon_threadsafe(loop.set_task_factory, factory)
    try:
        for contiguous in (False, True):
            got = src.wait_fetch(src.submit_ranges([(8, 16)], contiguous=contiguous), [(8, 16)])
            np.testing.assert_array_equal(got[0]["a"], data[8:16])
    finally:
        loop.call_soon_threadsafe(loop.set_task_factory, previous)
    assert len(made) == (2 if tensorstore == "0" else 0), [getattr(c, "__qualname__", c) for c in made]
    src.close()
