"""Whole chunk objects in writable memory the loader may hand out, with no copy the client does not need.

Why: a zarr store returns each chunk as an immutable ``bytes``-like object, so a decoded plain-bytes
chunk is a read-only view and every batch built from it has to be copied before it may become a
tensor. Two ways round that, one per kind of client:

* receive into our buffer (``Receiver.adopts`` False: ``await receive(key, out)``): s3fs (the body
  read with the public ``readinto`` of aiobotocore's stream) and local files (``readinto`` on the
  file). Receiving costs the same one copy out of the network buffers that ``bytes`` assembly costs,
  and storage-order batches are then views of one buffer per fetch. Measured on 2 cores against a
  loopback S3 server (4 MiB chunks, 256 MiB, median of 7, before and after in one session):
  storage-order client CPU per MiB went from 1.36 x to 1.02 x that of raw GETs.
* adopt the client's buffer (``adopts`` True: ``await receive.adopt(key, nbytes)``): obstore, which
  has no ``readinto``, hands back a buffer that nothing else holds; the loader takes it over as
  writable memory (``adopt_buffer``), so batches inside a chunk are views of what the HTTP client
  received, no copy at all (see ``backends.obstore`` for why this is safe). Where the batches of a
  storage-order epoch span chunks, obstore's receiver is called like the others instead (one copy
  into one block per fetch, right after each body arrived): measured at 1 MiB chunks and 4 MiB
  batches, that costs less than adopting and copying every batch together later (see
  ``chunkread.DirectChunkReader.read_many``).

Each backend that knows its read path exactly gives its own receiver (``Backend.receiver()``).
Stores without one keep going through ``store.get``.
"""

from __future__ import annotations

import asyncio
import ctypes
import tracemalloc
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Receiver(Protocol):
    """``await receive(key, out)`` fills ``out`` (a writable byte memoryview) with the object at ``key``
    (relative to the store's root) and returns True, or returns False when the object does not exist.
    Raises ``ObjectSizeError`` when the object is not exactly ``len(out)`` bytes, and whatever the
    transport raises otherwise (the caller classifies it, and redoes other failures through zarr,
    whose error names the chunk). ``adopts``: the receiver is also an ``AdoptingReceiver``."""

    adopts: bool

    async def __call__(self, key: str, out: memoryview) -> bool: ...


class AdoptingReceiver(Receiver, Protocol):
    """``await receive.adopt(key, nbytes)`` returns the object as a writable 1-D uint8 array of the
    client's own memory (kept alive by the array), or None when it does not exist; errors as above."""

    async def adopt(self, key: str, nbytes: int) -> np.ndarray | None: ...


class ObjectSizeError(ValueError):
    """The object does not hold the number of bytes its chunk must have."""


class FillReceiver:
    """Base of the receivers that can only fill the caller's buffer (``adopts`` False)."""

    adopts = False

    async def __call__(self, key: str, out: memoryview) -> bool:
        raise NotImplementedError


class LocalReceiver(FillReceiver):
    """Files under ``root``: ``readinto`` on the file, in a worker thread as zarr's LocalStore reads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def _read(path: Path, out: memoryview) -> bool:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; opening is what may fail
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        with f:
            n = f.readinto(out)
            if n != len(out) or f.read(1):
                raise ObjectSizeError(f"{path} holds {path.stat().st_size} bytes, expected {len(out)}")
        return True

    async def __call__(self, key: str, out: memoryview) -> bool:
        return await asyncio.to_thread(self._read, self.root / key, out)


class _Adopted:
    """Exposes memory of ``owner`` (a read-only buffer nothing else uses) to numpy as writable, and keeps
    ``owner`` alive for as long as any array made from it lives (numpy keeps this object as the
    arrays' base). While tracemalloc traces, the memory is reported to it in numpy's domain, as numpy
    reports its own buffers: the client allocated it outside Python's view, and the memory-bound
    checks (``zarrloader bench``, the tests) must see what the loader holds."""

    __slots__ = ("__array_interface__", "owner", "traced")

    def __init__(self, owner: Any, address: int, nbytes: int, *, trace: bool = True) -> None:
        self.owner = owner
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1", "data": (address, False)}
        self.traced = trace and tracemalloc.is_tracing() and _trace(address, nbytes)

    def __del__(self) -> None:
        # not contextlib.suppress: at interpreter shutdown module globals may already be gone
        if self.traced:
            try:  # noqa: SIM105
                _untrace(self.__array_interface__["data"][0])
            except Exception:  # pragma: no cover
                pass


def _trace(address: int, nbytes: int) -> bool:
    return ctypes.pythonapi.PyTraceMalloc_Track(ctypes.c_uint(_NUMPY_DOMAIN), ctypes.c_size_t(address),
                                                ctypes.c_size_t(nbytes)) == 0


def _untrace(address: int) -> None:
    ctypes.pythonapi.PyTraceMalloc_Untrack(ctypes.c_uint(_NUMPY_DOMAIN), ctypes.c_size_t(address))


#: numpy's tracemalloc domain (``np.lib.tracemalloc_domain``), where it reports its own buffers
_NUMPY_DOMAIN = int(getattr(np.lib, "tracemalloc_domain", 389047))


def adopt_buffer(data: Any) -> np.ndarray:
    """``data`` (a bytes-like object the caller holds the only reference to, and whose producer never
    touches its memory again) as a writable uint8 array over the same memory, no copy. The caller
    vouches for exclusivity: see ``backends.obstore`` and ``backends.tensorstore_reads`` for the two
    clients this is used with. A ``bytes`` object is Python's own allocation, which tracemalloc
    already sees: it is not reported a second time. Bodies under 2 bytes are copied."""
    view = np.frombuffer(data, dtype=np.uint8)
    if view.size < 2:  # CPython shares every empty and one-byte ``bytes``: never write into those
        return view.copy()
    return np.asarray(_Adopted(data, view.ctypes.data, view.size, trace=not isinstance(data, bytes)))


async def read_body(resp: dict[str, Any], out: memoryview, where: str) -> None:
    """Fill ``out`` from the body of an aiobotocore ``get_object`` response, checking its size."""
    body = resp["Body"]
    try:
        size = resp.get("ContentLength")
        if size is not None and size != len(out):
            raise ObjectSizeError(f"{where} holds {size} bytes, expected {len(out)}")
        n = 0
        while n < len(out):
            got = await body.readinto(out[n:])
            if not got:
                raise ObjectSizeError(f"{where}: body ended after {n} of {len(out)} bytes")
            n += got
        # with a Content-Length equal to len(out) nothing more can come; without one (chunked
        # encoding) the body must end now
        if size is None and await body.read(1):
            raise ObjectSizeError(f"{where} holds more than the {len(out)} bytes expected")
    finally:
        body.close()


def body_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of a body cut off mid-way (worth one more attempt, as s3fs retries its own reads)."""
    errors: list[type[BaseException]] = []
    try:
        from aiohttp import ClientPayloadError

        errors.append(ClientPayloadError)
    except ImportError:  # pragma: no cover - s3fs depends on aiohttp
        pass
    try:
        from botocore.exceptions import ResponseStreamingError

        errors.append(ResponseStreamingError)
    except ImportError:  # pragma: no cover - older botocore
        pass
    return tuple(errors)
