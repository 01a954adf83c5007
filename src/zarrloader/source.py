"""ZarrSource: a lazily opened, fork-safe handle on one Zarr array or several arrays of a group that
share the sample axis (axis 0), e.g. ``images`` (N, C, H, W) and ``labels`` (N,).

Nothing touches the network or creates a filesystem object until the first read (or an explicit
``open()``), and opened handles are dropped when the object is pickled or used in a forked child:
fsspec/s3fs clients and zarr's event loop must never cross a fork.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import math
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .chunkread import DirectChunkReader
from .errors import (
    AccessDeniedError,
    ChunkReadError,
    DatasetLayoutError,
    StorageUnavailableError,
    StoreNotFoundError,
    ZarrLoaderError,
)
from .storage import Location, StorageOptions, close_store, filesystem, parse_url, zarr_store

# A block spanning more than this many chunk rows of the most finely chunked array is not worth
# aligning (lcm of chunk lengths): fall back to the longest chunk length.
_MAX_LCM_FACTOR = 8
_MAX_PROBES = 4096


@dataclass(frozen=True)
class ArrayInfo:
    """What the loader needs to know about one array."""

    name: str  # path inside the group; "" when the URL is an array
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]  # read chunk (inner chunk for sharded arrays)
    shards: tuple[int, ...] | None  # stored object shape when sharded
    zarr_format: int
    codecs: tuple[str, ...]
    fill_value: Any

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def chunk_nbytes(self) -> int:
        """Uncompressed bytes of one read chunk."""
        return math.prod(self.chunks) * self.itemsize

    @property
    def object_shape(self) -> tuple[int, ...]:
        """Shape of one stored object (a shard when sharded, else a chunk)."""
        return self.shards or self.chunks

    @property
    def n_objects(self) -> int:
        """Nominal number of chunk/shard objects (missing ones are read as fill_value)."""
        return math.prod(math.ceil(s / c) for s, c in zip(self.shape, self.object_shape, strict=True)) if self.shape else 1

    @property
    def n_read_chunks(self) -> int:
        return math.prod(math.ceil(s / c) for s, c in zip(self.shape, self.chunks, strict=True)) if self.shape else 1


def _codec_names(arr: Any) -> tuple[str, ...]:
    md = arr.metadata
    if getattr(md, "zarr_format", 3) == 2:
        names = [type(f).__name__ if not hasattr(f, "codec_id") else f.codec_id for f in (md.filters or ())]
        comp = md.compressor
        if comp is not None:
            names.append(getattr(comp, "codec_id", type(comp).__name__))
        return tuple(names)

    def walk(codecs: Sequence[Any]) -> list[str]:
        out: list[str] = []
        for c in codecs:
            name = type(c).__name__
            inner = getattr(c, "codecs", None)
            if inner:
                out.append(f"{name}[{', '.join(walk(inner))}]")
            else:
                cname = getattr(c, "cname", None)
                out.append(f"{name}({getattr(cname, 'value', cname)})" if cname is not None else name)
        return out

    return tuple(walk(md.codecs))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) is a network failure rather than bad data."""
    names = {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
             "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError",
             "HTTPClientError", "ConnectTimeout", "TimeoutError"}
    # obstore (Rust) reports transport failures as GenericError with the cause in the message
    transport = ("error sending request", "connection refused", "connection reset", "connection closed",
                 "operation timed out", "timed out")
    for e in _chain(exc):
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in names:
            return True
        if type(e).__name__ == "GenericError" and any(t in str(e).lower() for t in transport):
            return True
    return False


def translate_error(exc: BaseException, url: str, what: str) -> ZarrLoaderError:
    """Map a storage/zarr exception to a ZarrLoaderError with cause and fix."""
    if isinstance(exc, ZarrLoaderError):
        return exc
    chain = _chain(exc)
    if any(isinstance(e, PermissionError) for e in chain) or any(
        code in str(e) for e in chain for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")
    ) or any(type(e).__name__ == "NoCredentialsError" for e in chain):
        return AccessDeniedError(
            f"access denied while {what} {url}: {exc}. Fix: check the credentials the standard chain finds "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance/IRSA role; for GCS "
            "GOOGLE_APPLICATION_CREDENTIALS), use anon=True for public data, requester_pays=True for "
            "requester-pays buckets, or endpoint_url for an S3-compatible server"
        )
    if is_connection_error(exc):
        return StorageUnavailableError(
            f"cannot reach storage while {what} {url} (gave up after bounded retries): {exc}. Fix: check the "
            "endpoint URL and network, that the server is running, or raise StorageOptions.retries/read_timeout"
        )
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return StoreNotFoundError(f"not found while {what} {url}: {exc}. Fix: check the bucket and path spelling")
    return ZarrLoaderError(f"error while {what} {url}: {type(exc).__name__}: {exc}")


_LIVE: weakref.WeakSet[ZarrSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent thread at fork time stays held forever in the child: replace them.
    for src in list(_LIVE):
        src._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_live_sources() -> None:
    # At exit, close the HTTP clients of sources still open while zarr's event loop still runs:
    # left to garbage collection after the loop stops, every one of them prints aiohttp's
    # "Unclosed client session" / "Unclosed connector" on the way out.
    for src in list(_LIVE):
        with contextlib.suppress(Exception):
            src.close()


_exit_hook: list[bool] = []


def _register_exit_hook() -> None:
    """Once, after zarr is imported: atexit runs hooks last-in first-out, so ours runs before
    zarr's own, which stops its event loop."""
    if not _exit_hook:
        import atexit

        import zarr.core.sync  # noqa: F401  (registers zarr's hook first)

        atexit.register(_close_live_sources)
        _exit_hook.append(True)


class ZarrSource:
    """One Zarr array, or several arrays of a group aligned on axis 0, at ``url``.

    ``url``: ``s3://bucket/path.zarr``, ``gs://...``, ``https://...`` (read-only), ``file://...`` or a
    path; zarr v2 or v3, consolidated metadata used when present, sharded arrays and any codec zarr
    supports. ``arrays``: names inside the group to load (default: every array directly in it).
    ``storage_options``: a :class:`StorageOptions` or a raw fsspec options dict.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        arrays: Sequence[str] | None = None,
        storage_options: StorageOptions | Mapping[str, Any] | None = None,
    ) -> None:
        self.location: Location = parse_url(url)
        self.url = self.location.url
        self.array_names_requested: tuple[str, ...] | None = tuple(arrays) if arrays is not None else None
        self.options: StorageOptions = StorageOptions.coerce(storage_options)
        self._user_pool = self.options.max_connections is not None
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._arrays: dict[str, Any] | None = None
        self._direct: dict[str, DirectChunkReader | None] = {}
        self._infos: tuple[ArrayInfo, ...] | None = None
        _LIVE.add(self)

    # -- pickling / fork safety ------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _pid=None, _arrays=None, _direct={})  # handles never travel; infos are plain data
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"ZarrSource({self.url!r}, arrays={self.array_names_requested!r})"

    @property
    def is_open(self) -> bool:
        return self._arrays is not None and self._pid == os.getpid()

    def reserve_connections(self, n: int) -> None:
        """Make the HTTP pool at least ``n`` connections (unless the options fix a size). Called by the
        loader before it opens anything; a source already open with a smaller pool reopens lazily."""
        if self._user_pool or (self.options.max_connections or 0) >= n:
            return
        self.options = dataclasses.replace(self.options, max_connections=max(10, n))
        self.close()  # reopens lazily with the larger pool; closing frees the old client now

    def with_options(self, options: StorageOptions) -> ZarrSource:
        """A new, unopened source on the same data with other storage options."""
        return ZarrSource(self.url, self.array_names_requested, options)

    def open(self) -> ZarrSource:
        """Open metadata now (normally done lazily on first use, in the process that reads)."""
        self._handles()
        return self

    def close(self) -> None:
        """Drop the handles and close the HTTP client (reopened on next use)."""
        arrays, pid = self._arrays, self._pid
        self._arrays = None
        self._direct = {}
        self._pid = None
        if not arrays or pid != os.getpid():
            return
        close_store(next(iter(arrays.values())).store)

    def __enter__(self) -> ZarrSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handles(self) -> dict[str, Any]:
        if self._arrays is not None and self._pid == os.getpid():
            return self._arrays
        with self._lock:
            if self._arrays is None or self._pid != os.getpid():
                self._arrays = self._open_arrays()
                self._direct = {n: DirectChunkReader.for_array(a) for n, a in self._arrays.items()}
                self._pid = os.getpid()
                if self._infos is None:
                    self._infos = tuple(self._info(n, a) for n, a in self._arrays.items())
                    self._validate()
        return self._arrays

    def _open_arrays(self) -> dict[str, Any]:
        import zarr

        _register_exit_hook()
        try:
            store = zarr_store(self.location, self.options, read_only=True)
            node = zarr.open(store=store, mode="r")
        except Exception as exc:
            err = translate_error(exc, self.url, "opening")
            if isinstance(err, StoreNotFoundError):
                err = StoreNotFoundError(self._not_found_message(exc))
            raise err from exc
        if isinstance(node, zarr.Array):
            if self.array_names_requested:
                raise DatasetLayoutError(
                    f"{self.url} is an array, not a group: drop arrays={list(self.array_names_requested)}"
                )
            return {"": node}
        names = self.array_names_requested
        if names is None:
            names = tuple(sorted(k for k in node.array_keys()))
            if not names:
                raise DatasetLayoutError(f"group {self.url} has no arrays: point the URL at an array or a group holding some")
        out: dict[str, Any] = {}
        for name in names:
            try:
                arr = node[name]
            except KeyError as exc:
                available = sorted(node.array_keys())
                raise StoreNotFoundError(f"no array {name!r} in {self.url}; available: {available}") from exc
            if not isinstance(arr, zarr.Array):
                raise DatasetLayoutError(f"{self.url}/{name} is a group, not an array: name its arrays instead")
            out[name] = arr
        return out

    def _not_found_message(self, exc: BaseException) -> str:
        loc = self.location
        if loc.bucket:
            try:
                fs = filesystem(loc, self.options)
                if not fs.exists(loc.bucket):
                    return (f"bucket {loc.bucket!r} does not exist (or is not visible to these credentials) "
                            f"for {self.url}. Fix: check the bucket name, region and endpoint_url")
            except Exception:  # the probe is best effort; the main message below still applies
                pass
        return (f"no Zarr array or group at {self.url} (no zarr.json/.zarray/.zgroup found): {exc}. "
                "Fix: check the path; for a group's member append /NAME or pass arrays=[...]")

    @staticmethod
    def _info(name: str, arr: Any) -> ArrayInfo:
        shards = getattr(arr, "shards", None)
        return ArrayInfo(
            name=name,
            shape=tuple(int(s) for s in arr.shape),
            dtype=str(arr.dtype),
            chunks=tuple(int(c) for c in arr.chunks),
            shards=tuple(int(s) for s in shards) if shards else None,
            zarr_format=int(arr.metadata.zarr_format),
            codecs=_codec_names(arr),
            fill_value=arr.fill_value.item() if hasattr(arr.fill_value, "item") else arr.fill_value,
        )

    def _validate(self) -> None:
        infos = self._infos or ()
        scalars = [i.name or "<array>" for i in infos if not i.shape]
        if scalars:
            raise DatasetLayoutError(f"0-d arrays have no sample axis: {scalars}; exclude them with arrays=[...]")
        lengths = {i.name or "<array>": i.shape[0] for i in infos}
        if len(set(lengths.values())) > 1:
            raise DatasetLayoutError(
                f"arrays in {self.url} are not aligned on axis 0 (sample axis): lengths {lengths}. "
                "Fix: pass arrays=[...] naming arrays of equal length, or rewrite the shorter ones"
            )

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def infos(self) -> tuple[ArrayInfo, ...]:
        if self._infos is None:
            self._handles()
        assert self._infos is not None
        return self._infos

    @property
    def direct_arrays(self) -> tuple[str, ...]:
        """Arrays the loader reads as whole decoded chunks, bypassing zarr's indexing (see chunkread);
        the others go through zarr's ``getitem``. Opens metadata if needed."""
        self._handles()
        return tuple(n for n, r in self._direct.items() if r is not None)

    @property
    def received_arrays(self) -> tuple[str, ...]:
        """Of ``direct_arrays``, those whose chunks are received straight into the loader's own
        writable memory (plain chunks on S3 via s3fs or on local disk, see receive): their
        storage-order batches can be views. Opens metadata if needed."""
        self._handles()
        return tuple(n for n, r in self._direct.items() if r is not None and r.receiver is not None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.infos)

    def __len__(self) -> int:
        return self.infos[0].shape[0]

    @property
    def num_samples(self) -> int:
        return len(self)

    @property
    def block_length(self) -> int:
        """Rows read together: a common multiple of the arrays' chunk lengths on axis 0 when small,
        so every read covers whole chunks of every array."""
        lens = [i.chunks[0] for i in self.infos]
        lcm = math.lcm(*lens)
        return lcm if lcm <= _MAX_LCM_FACTOR * max(lens) else max(lens)

    @property
    def sample_nbytes(self) -> int:
        """Uncompressed bytes of one sample across all arrays."""
        return sum(math.prod(i.shape[1:]) * i.itemsize for i in self.infos)

    @property
    def nbytes(self) -> int:
        return self.sample_nbytes * len(self)

    # -- reads ------------------------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) of every array, decoded. Raises ChunkReadError naming the bad chunk."""
        return {name: self.read_array_rows(name, start, stop) for name in self._handles()}

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
        """Several row ranges at once, split back per range. Adjacent ranges are merged; the rest are
        read as basic slices gathered on zarr's event loop in one call, so their chunks are fetched
        concurrently. Used to coalesce reads of small chunks, where per-call overhead dominates."""
        merged = _merge_ranges(ranges)
        handles = self._handles()
        if len(merged) == 1:
            data = {name: [self.read_array_rows(name, *merged[0])] for name in handles}
        else:
            data = self._gather_slices(handles, merged)
        return _split_ranges(ranges, merged, data)

    def submit_ranges(self, ranges: Sequence[tuple[int, int]]) -> concurrent.futures.Future[list[dict[str, np.ndarray]]] | None:
        """Start reading ``ranges`` on zarr's event loop and return its future at once (no thread waits
        on it until the result is needed), or None when this zarr has no loop to submit to.

        Arrays with a simple layout are read as whole decoded chunks (``chunkread``; results may be
        read-only views of the received bytes, or writable views of one buffer per call where the
        chunks are received into memory we own, see ``receive``); the others through zarr's ``getitem``, adjacent ranges
        merged. A failed future carries the raw exception: redo with ``read_ranges``, which goes
        through zarr and names the chunk."""
        try:
            from zarr.core.sync import _get_loop
        except ImportError:  # pragma: no cover - present in zarr 3.0 to 3.4
            return None
        handles = self._handles()
        direct = self._direct
        merged = _merge_ranges(ranges)

        async def run() -> list[dict[str, np.ndarray]]:
            import asyncio

            jobs: list[tuple[str, DirectChunkReader | None, list[Any]]] = []
            for name, arr in handles.items():
                reader = direct.get(name)
                if reader is not None:
                    jobs.append((name, reader, [reader.read_many(ranges)]))
                else:
                    jobs.append((name, None, [_async_array(arr).getitem(slice(a, b)) for a, b in merged]))
            flat = await asyncio.gather(*(c for _, _, coros in jobs for c in coros))
            out: list[dict[str, np.ndarray]] = [{} for _ in ranges]
            i = 0
            for name, reader, coros in jobs:
                got, i = flat[i : i + len(coros)], i + len(coros)
                if reader is not None:
                    per_range = got[0]
                else:
                    per_range = [d[name] for d in _split_ranges(ranges, merged, {name: [np.asarray(x) for x in got]})]
                for o, x in zip(out, per_range, strict=True):
                    o[name] = x
            return out

        import asyncio

        return asyncio.run_coroutine_threadsafe(run(), _get_loop())

    def _gather_slices(self, handles: dict[str, Any], segments: list[list[int]]) -> dict[str, list[np.ndarray]]:
        import asyncio

        from zarr.core.sync import sync

        async def all_reads() -> list[Any]:
            coros = [
                _async_array(arr).getitem(slice(a, b))
                for arr in handles.values()
                for a, b in segments
            ]
            return await asyncio.gather(*coros)

        try:
            flat = sync(all_reads())
        except Exception:
            # redo one by one: the failing read raises with the chunk named
            return {name: [self.read_array_rows(name, a, b) for a, b in segments] for name in handles}
        n = len(segments)
        return {name: [np.asarray(x) for x in flat[i * n : (i + 1) * n]] for i, name in enumerate(handles)}

    def read_array_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array, with the same error naming as read_rows."""
        arr = self._handles()[name]
        try:
            return np.asarray(arr[start:stop])
        except Exception as exc:
            raise self._read_error(exc, name, arr, (slice(start, stop),)) from exc

    def patch_axes(self, info: ArrayInfo, axes: Sequence[int]) -> tuple[int, ...] | None:
        """``axes`` resolved for one array (negative counts from the end), or None when the array has
        too few dimensions to be cropped (e.g. labels of shape (N,)): it is then read whole."""
        nd = len(info.shape)
        resolved = tuple(a if a >= 0 else nd + a for a in axes)
        if any(a < 1 or a >= nd for a in resolved):
            return None
        return resolved

    def read_patch(self, row: int, axes: Sequence[int], starts: Sequence[int], size: Sequence[int]) -> dict[str, np.ndarray]:
        """Sample ``row`` cropped to the window ``starts``..``starts+size`` along ``axes``. Only the chunks
        the window touches are fetched."""
        arrays = self._handles()
        out: dict[str, np.ndarray] = {}
        for info in self.infos:
            arr = arrays[info.name]
            sel: list[slice] = [slice(row, row + 1)] + [slice(None)] * (len(info.shape) - 1)
            resolved = self.patch_axes(info, axes)
            if resolved is not None:
                for a, s0, n in zip(resolved, starts, size, strict=True):
                    sel[a] = slice(s0, s0 + n)
            try:
                out[info.name] = np.asarray(arr[tuple(sel)])[0]
            except Exception as exc:
                full = tuple(slice(s.start or 0, dim if s.stop is None else s.stop) for s, dim in zip(sel, info.shape, strict=True))
                raise self._read_error(exc, info.name, arr, full) from exc
        return out

    def object_key(self, name: str, coords: Sequence[int]) -> str:
        """Full URL of the stored object (chunk or shard) at grid ``coords`` of array ``name``."""
        arr = self._handles()[name]
        key = arr.metadata.encode_chunk_key(tuple(coords))
        prefix = "/".join(p for p in (self.url.rstrip("/"), arr.path.strip("/") if name else "") if p)
        return f"{prefix}/{key}"

    def object_keys(self, name: str) -> list[str]:
        """Keys (relative to the store root) of every nominal chunk/shard object of ``name``."""
        arr = self._handles()[name]
        info = next(i for i in self.infos if i.name == name)
        grid = [range(math.ceil(s / c)) for s, c in zip(info.shape, info.object_shape, strict=True)]
        base = arr.path.strip("/")
        enc = arr.metadata.encode_chunk_key
        return [f"{base}/{enc(c)}" if base else enc(c) for c in itertools.product(*grid)]

    def _read_error(self, exc: BaseException, name: str, arr: Any, sel: tuple[slice, ...]) -> ZarrLoaderError:
        where = f"reading {name or 'array'}[{_fmt_sel(sel)}] of"
        if is_connection_error(exc) or any(isinstance(e, (PermissionError, FileNotFoundError)) for e in _chain(exc)):
            return translate_error(exc, self.url, where)
        if any("non-partial response" in str(e) for e in _chain(exc)):  # obstore: the data is fine
            why = (" (sharded arrays read shard indexes and inner chunks with ranged GETs)"
                   if getattr(arr, "shards", None) else "")
            return StorageUnavailableError(
                f"the server answered a range request with the whole object while {where} {self.url}{why}. "
                "Fix: use the default backend (StorageOptions(backend='fsspec')) for this server")
        bad = self._find_bad_chunk(arr, sel)
        if bad is None:
            return ChunkReadError(f"failed {where} {self.url}: {type(exc).__name__}: {exc}")
        key, inner = bad
        detail = f" (inner chunk {inner} of the shard)" if inner is not None else ""
        return ChunkReadError(
            f"corrupt or undecodable chunk {key}{detail} while {where} {self.url}: {type(exc).__name__}: {exc}. "
            "Fix: rewrite that object from the original data (zarrloader sync can copy a good replica), "
            "or check the codecs installed match the array's metadata",
            key=key,
        )

    def _find_bad_chunk(self, arr: Any, sel: tuple[slice, ...]) -> tuple[str, tuple[int, ...] | None] | None:
        """Re-read chunk by chunk inside ``sel`` to name the object that fails to decode."""
        chunks = tuple(int(c) for c in arr.chunks)
        shards = getattr(arr, "shards", None)
        ranges = []
        for axis, size in enumerate(arr.shape):
            s = sel[axis] if axis < len(sel) else slice(0, size)
            start, stop = s.start or 0, size if s.stop is None else min(s.stop, size)
            ranges.append(range(start // chunks[axis], max(start // chunks[axis] + 1, math.ceil(stop / chunks[axis]))))
        name = next((n for n, a in self._handles().items() if a is arr), "")
        for n, coords in enumerate(itertools.product(*ranges)):
            if n >= _MAX_PROBES:
                break
            region = tuple(slice(c * k, min((c + 1) * k, size)) for c, k, size in zip(coords, chunks, arr.shape, strict=True))
            try:
                arr[region]
            except Exception:
                if shards:
                    ratio = [s // c for s, c in zip(shards, chunks, strict=True)]
                    outer = tuple(c // r for c, r in zip(coords, ratio, strict=True))
                    inner = tuple(c % r for c, r in zip(coords, ratio, strict=True))
                    return self.object_key(name, outer), inner
                return self.object_key(name, coords), None
        return None


def _async_array(arr: Any) -> Any:
    return getattr(arr, "async_array", None) or arr._async_array


def _merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return merged


def _split_ranges(ranges: Sequence[tuple[int, int]], merged: list[list[int]],
                  data: dict[str, list[np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Split the merged segments read back into the requested ranges (views, no copies)."""
    out: list[dict[str, np.ndarray]] = []
    seg, offset = 0, 0
    for a, b in ranges:
        if a != merged[seg][0] + offset:
            seg, offset = seg + 1, 0
        out.append({name: parts[seg][offset : offset + b - a] for name, parts in data.items()})
        offset += b - a
    return out


def _fmt_sel(sel: tuple[slice, ...]) -> str:
    return ", ".join(f"{s.start}:{s.stop}" for s in sel)
