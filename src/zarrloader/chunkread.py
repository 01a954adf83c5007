"""Whole-chunk reads that skip zarr's indexing layer: GET the chunk objects, decode each with the
array's own codec pipeline, hand back the decoded chunks.

Why: the loader only ever asks for whole chunks along axis 0. zarr's ``getitem`` would allocate an
output array and copy every decoded chunk into it on zarr's event loop — the one thread that also
receives every byte from the network. Measured on 2 cores against a loopback S3 server (4 MiB
chunks, 256 MiB, median of 6): 1.69 ms of client CPU per MiB this way against 2.22 ms through
``getitem``, and raw GETs alone cost 1.57. The decoded chunk is often a read-only view of the
received bytes; the batcher copies it into each batch (off the event loop), so no tensor ever
aliases read-only memory. Where the backend gives a receiver (see ``receive``), plain-bytes chunks
are instead received straight into one writable buffer per call, the chunks of a call back to back
in row order (s3fs, local files, and obstore by one copy of each body), or adopted from the client
as writable memory (obstore, where each range lies in one chunk): storage-order batches inside a
fetch, or inside an adopted chunk, are then views.

Only simple layouts qualify (see ``DirectChunkReader.for_array``); everything else — sharded
arrays, chunks split along other axes, v2 arrays in Fortran order, object/string dtypes — keeps
using zarr's own read path. Errors here are never reported as they are: the caller redoes the read
through zarr, whose error names the chunk (see ``ZarrSource.submit_ranges``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .receive import AdoptingReceiver, ObjectSizeError, Receiver, adopt_buffer


@dataclass(frozen=True)
class DirectChunkReader:
    """Reads row ranges of one array as whole decoded chunks (``chunk_len`` rows each)."""

    async_array: Any
    chunk_shape: tuple[int, ...]
    nrows: int
    dtype: np.dtype[Any]
    fill_value: Any
    spec: Any  # zarr ArraySpec of a full chunk
    prototype: Any
    read_missing: bool
    stored_dtype: np.dtype[Any] | None  # set when chunks are stored as plain bytes: decode is a view
    receiver: Receiver | None = None  # set when plain native-order chunks can be received into our memory
    prefix: str = ""  # the array's path in the store ("" at its root), to which chunk keys are relative

    @classmethod
    def for_array(cls, arr: Any, receiver: Receiver | None = None) -> DirectChunkReader | None:
        """A reader for the zarr ``Array`` ``arr``, or None when it must go through zarr's read path.
        ``receiver``: the backend's (see ``Backend.receiver``), used for plain native-order chunks."""
        try:
            from zarr.core.array_spec import ArraySpec
            from zarr.core.buffer import default_buffer_prototype

            aa = getattr(arr, "async_array", None) or arr._async_array
            md = aa.metadata
            shape, chunks = tuple(arr.shape), tuple(arr.chunks)
            if not shape or getattr(arr, "shards", None) or chunks[1:] != shape[1:]:
                return None
            if md.zarr_format == 2 and getattr(md, "order", "C") != "C":
                return None
            # chunks come back in native byte order whatever the stored order (torch has no other)
            dtype = np.dtype(arr.dtype).newbyteorder("=")
            if dtype.kind not in "biufc":
                return None
            if not (hasattr(aa, "codec_pipeline") and hasattr(aa, "store_path") and hasattr(md, "encode_chunk_key")):
                return None
            proto = default_buffer_prototype()
            spec = ArraySpec(shape=chunks, dtype=md.dtype, fill_value=md.fill_value, config=aa.config, prototype=proto)
            fill = arr.fill_value if arr.fill_value is not None else 0
            stored = _plain_bytes_dtype(md, np.dtype(arr.dtype))
            receiver = receiver if stored == dtype else None
            return cls(aa, chunks, shape[0], dtype, fill, spec, proto,
                       bool(getattr(aa.config, "read_missing_chunks", True)), stored, receiver, aa.store_path.path)
        except Exception:  # any API drift in zarr: use its public read path instead
            return None

    @property
    def chunk_len(self) -> int:
        return self.chunk_shape[0]

    async def read_many(self, ranges: Sequence[tuple[int, int]], *, contiguous: bool = True) -> list[np.ndarray]:
        """Rows ``[a, b)`` for every range: all their chunks fetched at once and decoded in one call.
        Received chunks (``receiver`` set): every range is a writable view of one block, the chunks back
        to back. Where the receiver ``adopts``, the caller does not need the block (``contiguous``
        False: shuffled batches, or storage-order batches that fit the chunks) and every range lies
        inside one chunk, chunks are adopted instead: each range a writable view of the client's own
        buffer, no copy at all. Decoded chunks: a range inside one chunk is a slice of its chunk (may
        be read-only), a range over several chunks their concatenation."""
        c = self.chunk_len
        spans = [(a // c, (b - 1) // c) for a, b in ranges]
        index = sorted({i for lo, hi in spans for i in range(lo, hi + 1)})
        # adopted chunks are separate allocations: a range over several would need a copy later, after
        # every body is in, where receiving copies each one while it is still in cache
        one_chunk = all(lo == hi for lo, hi in spans)
        if self.receiver is not None:
            keys = [self._key(i) for i in index]
            if contiguous or not self.receiver.adopts or not one_chunk:
                return await self._receive_many(ranges, index, keys)
            chunks = dict(zip(index, await self._adopt_many(keys), strict=True))
        else:
            paths = [self.async_array.store_path / self._chunk_key(i) for i in index]
            bufs = await asyncio.gather(*(p.get(prototype=self.prototype) for p in paths))
            chunks = dict(zip(index, await self._decode(bufs), strict=True))
        return self._slices(ranges, spans, chunks)

    def _slices(self, ranges: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]],
                chunks: dict[int, np.ndarray]) -> list[np.ndarray]:
        """Every range cut from its decoded chunks: a slice of one, or the concatenation of several."""
        c = self.chunk_len
        out = []
        for (a, b), (lo, hi) in zip(ranges, spans, strict=True):
            parts = [chunks[i][max(a, i * c) - i * c : min(b, (i + 1) * c, self.nrows) - i * c] for i in range(lo, hi + 1)]
            out.append(parts[0] if len(parts) == 1 else np.concatenate(parts))
        return out

    # -- whole chunks read by a native client (see ``backends.tensorstore_reads``) -------------------
    @property
    def chunk_nbytes(self) -> int:
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    @property
    def metadata_key(self) -> str:
        """The key of the array's metadata object relative to the store's root (it exists)."""
        name = "zarr.json" if self.async_array.metadata.zarr_format == 3 else ".zarray"
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def plain_native(self) -> bool:
        """Chunks are stored as the array's bytes in native order: a body is the decoded chunk."""
        return self.stored_dtype is not None and self.stored_dtype == self.dtype

    def chunk_keys(self, ranges: Sequence[tuple[int, int]]) -> list[str]:
        """The keys (relative to the store's root) of every chunk ``ranges`` need, by chunk index."""
        c = self.chunk_len
        return [self._key(i) for i in sorted({i for a, b in ranges for i in range(a // c, (b - 1) // c + 1)})]

    def from_bodies(self, ranges: Sequence[tuple[int, int]], bodies: Sequence[Any], *,
                    contiguous: bool = True) -> list[np.ndarray]:
        """``read_many``'s result from the bodies of ``chunk_keys(ranges)`` (None: no such object), for
        plain native-order chunks. ``contiguous``: copied back to back into one writable block (every
        range a view of it); else the bodies are adopted (``receive.adopt_buffer``: each one a fresh
        ``bytes`` only we hold) and each range is a writable view of its chunk, or the concatenation
        of several."""
        c = self.chunk_len
        spans = [(a // c, (b - 1) // c) for a, b in ranges]
        index = sorted({i for lo, hi in spans for i in range(lo, hi + 1)})
        nbytes = self.chunk_nbytes
        for k, data in zip(index, bodies, strict=True):
            if data is None:
                self._missing()
            elif len(data) != nbytes:
                raise ObjectSizeError(f"chunk {self._key(k)} holds {len(data)} bytes, expected {nbytes}")
        if contiguous:
            block = np.empty((len(index), *self.chunk_shape), dtype=self.dtype)
            raw = block.reshape(len(index), -1).view(np.uint8)
            for j, data in enumerate(bodies):
                if data is None:
                    block[j] = self.fill_value
                else:
                    raw[j] = np.frombuffer(data, dtype=np.uint8)
            return self._block_views(ranges, index, block)
        chunks = {}
        for i, data in zip(index, bodies, strict=True):
            if data is None:
                chunks[i] = np.full(self.chunk_shape, self.fill_value, dtype=self.dtype)
                continue
            chunks[i] = self._as_chunk(adopt_buffer(data))  # the client's fresh copy, ours alone (tensorstore_reads)
        return self._slices(ranges, spans, chunks)

    def _as_chunk(self, raw: np.ndarray) -> np.ndarray:
        """An adopted body (1-D uint8) as the chunk: copied only where it is not aligned for the dtype
        (a small body may start anywhere in a client's buffer; numpy and torch want aligned memory)."""
        if raw.ctypes.data % self.dtype.alignment:
            raw = raw.copy()
        return raw.view(self.dtype).reshape(self.chunk_shape)

    def _chunk_key(self, i: int) -> str:
        """The key of chunk ``i`` (along axis 0) relative to the array."""
        return str(self.async_array.metadata.encode_chunk_key((i, *(0,) * (len(self.chunk_shape) - 1))))

    def _key(self, i: int) -> str:
        """The key of chunk ``i`` relative to the store's root, as ``StorePath`` would give it: without
        building one (its path normalisation costs as much of the event loop as the rest of a
        one-chunk fetch)."""
        key = self._chunk_key(i)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _adopt_many(self, keys: list[str]) -> list[np.ndarray]:
        """The chunks at ``keys`` in the client's own memory, taken over as writable arrays (see
        ``receive``): no copy, except of a buffer not aligned for the dtype (a small body may start
        anywhere in the connection's read buffer; numpy and torch want aligned memory)."""
        receiver = cast(AdoptingReceiver, self.receiver)  # read_many checked ``adopts``
        got = await _all_or_none([receiver.adopt(k, self.chunk_nbytes) for k in keys])
        out = []
        for raw in got:
            if raw is None:
                self._missing()
                out.append(np.full(self.chunk_shape, self.fill_value, dtype=self.dtype))
                continue
            out.append(self._as_chunk(raw))
        return out

    async def _receive_many(self, ranges: Sequence[tuple[int, int]], index: list[int], keys: list[str]) -> list[np.ndarray]:
        """``read_many`` for plain native-order chunks: every chunk received into its slot of one
        writable block, sorted by chunk index, so the rows of adjacent chunks lie back to back and
        every range (even one over several chunks) is a view of the block."""
        assert self.receiver is not None
        block = np.empty((len(index), *self.chunk_shape), dtype=self.dtype)
        raw = block.reshape(len(index), -1).view(np.uint8)
        found = await _all_or_none([self.receiver(k, memoryview(raw[j])) for j, k in enumerate(keys)])
        for j, present in enumerate(found):
            if not present:
                self._missing()
                block[j] = self.fill_value
        return self._block_views(ranges, index, block)

    def _block_views(self, ranges: Sequence[tuple[int, int]], index: list[int], block: np.ndarray) -> list[np.ndarray]:
        """Every range as a view of ``block``, which holds the chunks ``index`` back to back."""
        c = self.chunk_len
        rows = block.reshape(-1, *self.chunk_shape[1:])
        slot = {i: j for j, i in enumerate(index)}
        # a range's chunks are consecutive indices, hence consecutive slots: one slice of the block
        return [rows[slot[a // c] * c + a % c : slot[a // c] * c + a % c + (b - a)] for a, b in ranges]

    def _missing(self) -> None:
        """A chunk object does not exist: the fill value, unless zarr is told to refuse."""
        if not self.read_missing:
            raise KeyError("missing chunk with array.read_missing_chunks=False")  # zarr's path names it

    async def _decode(self, bufs: Sequence[Any]) -> list[np.ndarray]:
        if any(b is None for b in bufs):
            self._missing()
        want = math.prod(self.chunk_shape)
        if self.stored_dtype is not None:
            decoded: list[np.ndarray | None] = []
            for buf in bufs:
                if buf is None:
                    decoded.append(None)
                    continue
                raw = buf.as_numpy_array()
                if raw.nbytes != want * self.stored_dtype.itemsize:
                    raise ValueError(f"chunk holds {raw.nbytes} bytes, expected {want * self.stored_dtype.itemsize}")
                decoded.append(raw.view(self.stored_dtype).reshape(self.chunk_shape))
        else:
            present = [(b, self.spec) for b in bufs if b is not None]
            it = iter(await self.async_array.codec_pipeline.decode(present)) if present else iter(())
            decoded = [None if b is None else np.asarray(next(it).as_numpy_array()) for b in bufs]
        out = []
        for chunk in decoded:
            if chunk is None:
                out.append(np.full(self.chunk_shape, self.fill_value, dtype=self.dtype))
                continue
            if chunk.shape != self.chunk_shape:
                raise ValueError(f"decoded chunk has shape {chunk.shape}, expected {self.chunk_shape}")
            # another byte order on disk: one conversion to native, as torch needs anyway
            out.append(chunk if chunk.dtype == self.dtype else chunk.astype(self.dtype))
        return out


async def _all_or_none(coros: list[Any]) -> list[Any]:
    """Every result, or the first failure with the other downloads cancelled (the fetch is then redone
    through zarr, so they would only waste the link). A single download is awaited in the caller's
    task: a task and a gather per fetch are most of the event loop's own work at one chunk per fetch."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


def _plain_bytes_dtype(md: Any, dtype: np.dtype[Any]) -> np.dtype[Any] | None:
    """The dtype of the stored bytes when a chunk is just its array's bytes (no compressor, no filter,
    C order): decoding is then a view. None when zarr's codec pipeline has to decode."""
    if md.zarr_format == 2:
        return dtype if md.compressor is None and not md.filters else None
    codecs = tuple(md.codecs)
    if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if endian is None or dtype.itemsize == 1:
        return dtype
    return dtype.newbyteorder("<" if endian == "little" else ">")
