"""ZarrSource: a lazily opened, fork-safe handle on one Zarr array or several arrays of a group that
share a sample dimension, e.g. ``images`` (N, C, H, W) and ``labels`` (N,), or an xarray dataset's
``tas(time, lat, lon)`` and ``pr(time, lat, lon)`` sampled along ``time`` while ``lat``, ``lon`` and
``orog(lat, lon)`` are carried whole as ``source.static`` (see ``dims``). Arrays whose sample dimension
is not axis 0 are read with the selection along their own axis and handed on sample-major (axis 0).
``decode="cf"`` decodes CF attributes (fill values, packing, times) the way xarray does (see ``cf``).

Nothing touches the network or creates a client until the first read (or an explicit ``open()``),
and opened handles are dropped when the object is pickled or used in a forked child: clients and
zarr's event loop must never cross a fork. Storage goes through one backend (``zarrloader.backends``),
and every wait on it is bounded by the backend's deadline.
"""

from __future__ import annotations

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

from .backends import Backend, ErrorKind, open_backend
from .backends.base import FIX_DENIED, FIX_UNAVAILABLE, Pending, exception_chain
from .backends.tensorstore_reads import MAX_CHUNK_BYTES as NATIVE_MAX_CHUNK_BYTES
from .backends.tensorstore_reads import NativeFetch, NativeReadError, TensorstoreReads
from .backends.tensorstore_reads import body as native_body
from .cf import CFDecoder, Times, TimeUnits, time_units
from .chunkread import DirectChunkReader
from .dims import DatasetLayout, Dims, StaticArray, array_meta, dataset_layout
from .errors import (
    AccessDeniedError,
    ChunkReadError,
    DatasetLayoutError,
    StorageUnavailableError,
    StoreNotFoundError,
    ZarrLoaderError,
)
from .plan import request_budget
from .storage import Location, StorageOptions, parse_url

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
    sample_axis: int = 0  # axis of the sample dimension in ``shape`` (stored order)
    dims: Dims | None = None  # dimension names, when stored

    @property
    def length(self) -> int:
        """Samples along the sample axis."""
        return self.shape[self.sample_axis]

    @property
    def sample_chunk(self) -> int:
        """Chunk length along the sample axis."""
        return self.chunks[self.sample_axis]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``shape`` without the sample axis."""
        return self.shape[: self.sample_axis] + self.shape[self.sample_axis + 1 :]

    @property
    def major_shape(self) -> tuple[int, ...]:
        """Shape as the loader hands it on: the sample axis first."""
        return (self.length, *self.sample_shape)

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
    return exception_chain(exc)


def classify_any(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` by the classifiers of every backend (for code that has no backend at hand)."""
    from .backends.fsspec import classify_fsspec_error

    classifiers = [classify_fsspec_error]
    try:
        from .backends.obstore import classify_obstore_error

        classifiers.append(classify_obstore_error)
    except ImportError:  # pragma: no cover
        pass
    for e in _chain(exc):
        for classify in classifiers:
            kind = classify(e)
            if kind is not ErrorKind.OTHER:
                return kind
    return ErrorKind.OTHER


def translate_error(exc: BaseException, url: str, what: str) -> ZarrLoaderError:
    """Map a storage/zarr exception to a ZarrLoaderError with cause and fix (no backend at hand; a
    backend's own ``translate`` also names its endpoint and settings)."""
    if isinstance(exc, ZarrLoaderError):
        return exc
    kind = classify_any(exc)
    if kind is ErrorKind.DENIED:
        return AccessDeniedError(f"access denied while {what} {url}: {exc}. {FIX_DENIED}")
    if kind.retryable:
        return StorageUnavailableError(
            f"cannot reach storage while {what} {url} (gave up after bounded retries): {exc}. {FIX_UNAVAILABLE}")
    if kind is ErrorKind.NOT_FOUND:
        return StoreNotFoundError(f"not found while {what} {url}: {exc}. Fix: check the bucket and path spelling")
    return ZarrLoaderError(f"error while {what} {url}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class StaticField:
    """An array without the sample dimension (coordinate, static field, scalar), read once, whole:
    ``values`` (CF-decoded when the source decodes), its ``dims``, the attributes left after decoding,
    and its CF time ``units`` when it is a time coordinate."""

    name: str
    values: np.ndarray
    dims: Dims | None
    attrs: Mapping[str, Any]
    units: TimeUnits | None = None


DECODINGS = (None, "cf")
_TENSOR_KINDS = "biufcmM"  # dtype kinds a loader batch can carry (datetimes as int64)

_LIVE: weakref.WeakSet[ZarrSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by a parent thread at fork time stays held forever in the child: replace them.
    for src in list(_LIVE):
        src._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _native_candidates(direct: dict[str, DirectChunkReader | None]) -> bool:
    """Every sampled array is read as whole plain native-order chunks no larger than tensorstore's
    share (``tensorstore_reads.MAX_CHUNK_BYTES``): its fetches may go through the native client."""
    return bool(direct) and all(r is not None and r.plain_native and r.chunk_nbytes <= NATIVE_MAX_CHUNK_BYTES
                                for r in direct.values())


class ZarrSource:
    """One Zarr array, or the arrays of a group along one sample dimension, at ``url``.

    ``url``: ``s3://bucket/path.zarr``, ``gs://...``, ``https://...`` (read-only), ``file://...`` or a
    path; zarr v2 or v3, consolidated metadata used when present, sharded arrays and any codec zarr
    supports. ``arrays``: names inside the group to consider (default: every array directly in it).
    ``storage_options``: a :class:`StorageOptions` or a raw fsspec options dict.

    ``sample_dim``: the dimension to sample along (stores with dimension names: zarr v3
    ``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``). Every array having it is sampled, at
    whatever axis it sits; the others are ``static``. Default: the dimension most data arrays share on
    axis 0 (``dims.default_sample_dim``); stores without names are sampled along axis 0.
    ``decode="cf"``: loader batches and ``static`` values are CF-decoded as ``xarray.open_zarr`` does
    (``decode_batch``); ``times="datetime64"`` also turns CF time coordinates into ``datetime64[ns]``
    (int64 nanoseconds since 1970 in tensors: torch has no datetime type). Default: stored values.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        arrays: Sequence[str] | None = None,
        storage_options: StorageOptions | Mapping[str, Any] | None = None,
        *,
        sample_dim: str | None = None,
        decode: str | None = None,
        times: Times = "numeric",
    ) -> None:
        if decode not in DECODINGS:
            raise ValueError(f"decode={decode!r}: choose None (stored values) or 'cf' (as xarray decodes them)")
        if times not in ("numeric", "datetime64"):
            raise ValueError(f"times={times!r}: choose 'numeric' (numbers with their units) or 'datetime64'")
        if times == "datetime64" and decode != "cf":
            raise ValueError("times='datetime64' decodes CF time units: pass decode='cf' with it")
        self.sample_dim = sample_dim
        self.decode = decode
        self.times: Times = times
        self.location: Location = parse_url(url)
        self.url = self.location.url
        self.array_names_requested: tuple[str, ...] | None = tuple(arrays) if arrays is not None else None
        self.options: StorageOptions = StorageOptions.coerce(storage_options)
        self._user_pool = self.options.max_connections is not None
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._arrays: dict[str, Any] | None = None
        self._direct: dict[str, DirectChunkReader | None] = {}
        self._native_ok = False  # every sampled array is small plain chunks: tensorstore may read them
        self._infos: tuple[ArrayInfo, ...] | None = None
        self._layout: DatasetLayout | None = None
        self._axes: dict[str, int] = {}
        self._static: dict[str, Any] = {}  # handles of the static arrays
        self._static_values: dict[str, StaticField] | None = None
        self._decoders: dict[str, CFDecoder] | None = None
        self._backend: Backend | None = None
        _LIVE.add(self)

    # -- pickling / fork safety ------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # handles never travel; infos, layout and decoders are plain data, static values are re-read
        state.update(_lock=None, _pid=None, _arrays=None, _direct={}, _native_ok=False, _backend=None, _static={},
                     _static_values=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        _LIVE.add(self)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("sample_dim", self.sample_dim), ("decode", self.decode)) if v)
        return f"ZarrSource({self.url!r}, arrays={self.array_names_requested!r}{extra})"

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
        return ZarrSource(self.url, self.array_names_requested, options, sample_dim=self.sample_dim,
                          decode=self.decode, times=self.times)

    def open(self) -> ZarrSource:
        """Open metadata now (normally done lazily on first use, in the process that reads)."""
        self._handles()
        return self

    def close(self) -> None:
        """Drop the handles and close the HTTP client (reopened on next use)."""
        backend, pid = self._backend, self._pid
        self._arrays = None
        self._direct = {}
        self._native_ok = False
        self._static = {}
        self._pid = None
        self._backend = None
        if backend is not None and pid == os.getpid():
            backend.close()

    @property
    def backend(self) -> Backend:
        """The storage backend this source reads through in this process (opens metadata if needed)."""
        self._handles()
        assert self._backend is not None
        return self._backend

    @property
    def backend_name(self) -> str:
        """Which backend reads this source here: "obstore", "fsspec" or "local" (no I/O)."""
        from .backends import choose_backend

        if self._backend is not None and self._pid == os.getpid():
            return self._backend.name
        return choose_backend(self.location, self.options)

    def __enter__(self) -> ZarrSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handles(self) -> dict[str, Any]:
        if self._arrays is not None and self._pid == os.getpid():
            return self._arrays
        with self._lock:
            if self._arrays is None or self._pid != os.getpid():
                backend = open_backend(self.location, self.options)
                try:
                    found = self._open_arrays(backend)
                    layout = self._layout if self._layout is not None else self._make_layout(found)
                except BaseException:
                    backend.close()
                    raise
                axes = {a.name: a.axis for a in layout.sampled}
                arrays = {n: found[n] for n in axes}
                receiver = backend.receiver()
                # whole-chunk reads assume rows on axis 0; other axes go through zarr's selection
                self._direct = {n: DirectChunkReader.for_array(a, receiver) if axes[n] == 0 else None
                                for n, a in arrays.items()}
                self._native_ok = _native_candidates(self._direct)
                self._static = {a.name: found[a.name] for a in layout.static}
                self._layout, self._axes = layout, axes
                self._backend, self._arrays, self._pid = backend, arrays, os.getpid()
                if self._infos is None:
                    dims = {a.name: a.dims for a in layout.sampled}
                    self._infos = tuple(self._info(n, a, axes[n], dims[n]) for n, a in arrays.items())
        return self._arrays

    def _make_layout(self, found: dict[str, Any]) -> DatasetLayout:
        """Which arrays are sampled along which axis (``dims.dataset_layout``), with the historical
        message for stores without dimension names whose arrays differ in length."""
        metas = [array_meta(n, a) for n, a in found.items()]
        shaped = [m for m in metas if m.ndim]
        if self.sample_dim is None and shaped and not any(m.named for m in shaped):
            lengths = {m.name or "<array>": m.shape[0] for m in shaped}
            if len(set(lengths.values())) > 1:
                raise DatasetLayoutError(
                    f"arrays in {self.url} are not aligned on axis 0 (sample axis) and store no dimension "
                    f"names: lengths {lengths}. Fix: name arrays of equal length (--arrays on the command "
                    "line, arrays=[...] in Python), or store dimension names (xarray writes them) so that "
                    "shorter arrays are carried whole as static arrays"
                )
        layout = dataset_layout(metas, self.sample_dim, where=self.url)
        return self._carry_untensorable(layout, found)

    def _carry_untensorable(self, layout: DatasetLayout, found: dict[str, Any]) -> DatasetLayout:
        """In a store with dimension names opened without ``arrays=``, arrays along the sample dimension
        that no tensor can hold (strings, objects: xarray's labels such as ``station(time)``) are
        carried whole in ``static``, next to numeric data arrays. Arrays named in ``arrays=`` are
        always sampled (``read_rows`` returns any dtype; a batch of strings then fails in torch)."""
        if self.array_names_requested is not None or layout.sample_dim is None:
            return layout
        odd = [a for a in layout.sampled if getattr(found[a.name].dtype, "kind", "O") not in _TENSOR_KINDS]
        if not odd or len(odd) == len(layout.sampled):
            return layout
        keep = tuple(a for a in layout.sampled if a not in odd)
        carried = tuple(StaticArray(a.name, a.shape, a.dims, a.chunks, a.dtype) for a in odd)
        return dataclasses.replace(layout, sampled=keep, static=layout.static + carried)

    def _open_arrays(self, backend: Backend) -> dict[str, Any]:
        import zarr

        what = f"opening {self.url}"
        requested = self.array_names_requested

        async def open_all() -> tuple[str, dict[str, Any] | list[str]]:
            import zarr.api.asynchronous as za
            from zarr.core.array import AsyncArray

            node = await za.open(store=backend.zarr_store(read_only=True), mode="r")
            if isinstance(node, AsyncArray):
                return "array", {"": node}
            names = requested
            available = sorted([k async for k in node.array_keys()])
            if names is None:
                names = tuple(available)
            out: dict[str, Any] = {}
            for name in names:
                try:
                    member = await node.getitem(name)
                except KeyError:
                    return "missing", [name, *available]
                if not isinstance(member, AsyncArray):
                    return "group-member", [name]
                out[name] = member
            return "group", out

        try:
            kind, found = backend.run(open_all(), what)
        except StoreNotFoundError as exc:
            raise StoreNotFoundError(self._not_found_message(backend, exc)) from exc
        except ZarrLoaderError:
            raise
        except Exception as exc:  # a zarr error raised outside the backend's translation
            err = backend.translate(exc, what)
            if isinstance(err, StoreNotFoundError):
                err = StoreNotFoundError(self._not_found_message(backend, exc))
            raise err from exc
        if kind == "missing":
            assert isinstance(found, list)
            raise StoreNotFoundError(f"no array {found[0]!r} in {self.url}; available: {found[1:]}")
        if kind == "group-member":
            assert isinstance(found, list)
            raise DatasetLayoutError(f"{self.url}/{found[0]} is a group, not an array: name its arrays instead")
        assert isinstance(found, dict)
        if kind == "array" and requested:
            raise DatasetLayoutError(f"{self.url} is an array, not a group: drop arrays={list(requested)}")
        if kind == "group" and not found:
            raise DatasetLayoutError(f"group {self.url} has no arrays: point the URL at an array or a group holding some")
        return {name: zarr.Array(aa) for name, aa in found.items()}

    def _not_found_message(self, backend: Backend, exc: BaseException) -> str:
        if self.location.bucket:
            try:
                if backend.bucket_exists() is False:
                    return (f"bucket {self.location.bucket!r} does not exist (or is not visible to these credentials) "
                            f"for {self.url}. Fix: check the bucket name, region and endpoint_url")
            except ZarrLoaderError:  # the probe is best effort; the main message below still applies
                pass
        return (f"no Zarr array or group at {self.url} (no zarr.json/.zarray/.zgroup found): {exc}. "
                "Fix: check the path; for a group's member append /NAME or pass arrays=[...]")

    @staticmethod
    def _info(name: str, arr: Any, sample_axis: int = 0, dims: Dims | None = None) -> ArrayInfo:
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
            sample_axis=sample_axis,
            dims=dims,
        )

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def infos(self) -> tuple[ArrayInfo, ...]:
        if self._infos is None:
            self._handles()
        assert self._infos is not None
        return self._infos

    @property
    def layout(self) -> DatasetLayout:
        """Sampled and static arrays and the sample dimension (``dims.DatasetLayout``); opens metadata."""
        if self._layout is None:
            self._handles()
        assert self._layout is not None
        return self._layout

    @property
    def static_infos(self) -> tuple[ArrayInfo, ...]:
        """ArrayInfo of every static array (metadata only)."""
        self._handles()
        dims = {a.name: a.dims for a in self.layout.static}
        return tuple(self._info(n, a, 0, dims[n]) for n, a in self._static.items())

    @property
    def static(self) -> dict[str, StaticField]:
        """Arrays without the sample dimension, read once, whole (CF-decoded when ``decode="cf"``)."""
        if self._static_values is None or self._pid != os.getpid():
            self._handles()
            out: dict[str, StaticField] = {}
            decoders = self.decoders
            for a in self.layout.static:
                arr = self._static[a.name]
                sel = tuple(slice(None) for _ in a.shape)
                try:
                    values = np.asarray(self._run(_async_array(arr).getitem(sel),
                                                  f"reading static array {a.name!r} of {self.url}"))
                except Exception as exc:
                    full = tuple(slice(0, n) for n in a.shape)
                    raise self._read_error(exc, a.name, arr, full) from exc
                dec = decoders.get(a.name)
                if dec is not None:
                    values = dec.decode(values)
                attrs = dict(dec.attrs) if dec is not None else dict(arr.attrs)
                out[a.name] = StaticField(a.name, values, a.dims, attrs, time_units(arr.attrs))
            self._static_values = out
        return self._static_values

    @property
    def decoders(self) -> dict[str, CFDecoder]:
        """The CF decoder of every array that decoding changes (empty unless ``decode="cf"``)."""
        if self.decode != "cf":
            return {}
        if self._decoders is None:
            self._handles()
            out: dict[str, CFDecoder] = {}
            for name, arr in (*self._arrays_all(),):
                dec = CFDecoder.from_attrs(dict(arr.attrs), arr.dtype, arr.fill_value,
                                           zarr_format=int(arr.metadata.zarr_format), times=self.times)
                if not dec.is_identity:
                    out[name] = dec
            self._decoders = out
        return self._decoders

    def _arrays_all(self) -> list[tuple[str, Any]]:
        return [*self._handles().items(), *self._static.items()]

    def _arrays_all_dict(self) -> dict[str, Any]:
        """Every opened zarr array, sampled and static, by name (for inspect)."""
        return dict(self._arrays_all())

    @property
    def time_units(self) -> dict[str, TimeUnits]:
        """CF time units (``"hours since 1970-01-01"``, calendar) of every array that has them."""
        self._handles()
        return {n: tu for n, a in self._arrays_all() if (tu := time_units(a.attrs)) is not None}

    def attrs(self, name: str) -> dict[str, Any]:
        """Attributes of array ``name`` as the loader's values carry them: after CF decoding, the
        encoding attributes (``_FillValue``, ``scale_factor``...) are gone, as in xarray."""
        arr = dict(self._arrays_all()).get(name)
        if arr is None:
            raise KeyError(f"no array {name!r} in {self.url}; arrays: {[n for n, _ in self._arrays_all()]}")
        dec = self.decoders.get(name)
        return dict(dec.attrs) if dec is not None else dict(arr.attrs)

    def decode_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CF-decode a batch of stored rows (``{name: sample-major array}``), one vectorised call per
        array, in place where the dtype does not change; keys without a decoder (``index``) pass.
        Identity when ``decode`` is None."""
        decoders = self.decoders
        if not decoders:
            return batch
        return {k: (decoders[k].decode(v) if k in decoders else v) for k, v in batch.items()}

    @property
    def direct_arrays(self) -> tuple[str, ...]:
        """Arrays the loader reads as whole decoded chunks, bypassing zarr's indexing (see chunkread);
        the others go through zarr's ``getitem``. Opens metadata if needed."""
        self._handles()
        return tuple(n for n, r in self._direct.items() if r is not None)

    @property
    def received_arrays(self) -> tuple[str, ...]:
        """Of ``direct_arrays``, those whose chunks are received straight into the loader's own
        writable memory (plain chunks, on a backend with a receiver: s3fs, obstore, local files; see
        receive): their storage-order batches can be views. Opens metadata if needed."""
        self._handles()
        return tuple(n for n, r in self._direct.items() if r is not None and r.receiver is not None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.infos)

    def __len__(self) -> int:
        return self.infos[0].length

    @property
    def num_samples(self) -> int:
        return len(self)

    @property
    def block_length(self) -> int:
        """Rows read together: a common multiple of the arrays' chunk lengths on axis 0 when small,
        so every read covers whole chunks of every array."""
        lens = [i.sample_chunk for i in self.infos]
        lcm = math.lcm(*lens)
        return lcm if lcm <= _MAX_LCM_FACTOR * max(lens) else max(lens)

    @property
    def sample_nbytes(self) -> int:
        """Uncompressed bytes of one sample across all arrays."""
        return sum(math.prod(i.sample_shape) * i.itemsize for i in self.infos)

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

    def submit_ranges(self, ranges: Sequence[tuple[int, int]], *,
                      contiguous: bool = True) -> Pending[list[dict[str, np.ndarray]]] | None:
        """Start reading ``ranges`` on zarr's event loop and return its future at once (no thread waits
        on it until the result is needed), or None when this zarr has no loop to submit to. Small plain
        chunks on a backend with a native client are read by it instead, off the loop (``NativeFetch``,
        see ``backends.tensorstore_reads``).

        Arrays with a simple layout are read as whole decoded chunks (``chunkread``; results may be
        read-only views of the received bytes, or writable views of memory we own where the chunks
        are received into it or adopted from the client, see ``receive``); the others through zarr's
        ``getitem``, adjacent ranges merged. ``contiguous``: the caller wants the received ranges of
        this call back to back in one block (storage-order batches spanning reads are then views);
        False lets a client's buffers be adopted instead (see ``chunkread``).
        Wait on the future with ``wait_fetch``: bounded by the deadline, storage errors translated;
        other failures come back as None: redo with ``read_ranges``, which goes through zarr and
        names the chunk."""
        handles = self._handles()
        backend = self._backend
        assert backend is not None
        direct = self._direct
        if self._native_ok:
            native = self._native_reads(backend)
            if native is not None:
                return self._submit_native(native, ranges, contiguous)
        merged = _merge_ranges(ranges)

        async def run() -> list[dict[str, np.ndarray]]:
            import asyncio

            jobs: list[tuple[str, DirectChunkReader | None, list[Any]]] = []
            for name, arr in handles.items():
                reader = direct.get(name)
                if reader is not None:
                    jobs.append((name, reader, [reader.read_many(ranges, contiguous=contiguous)]))
                else:
                    jobs.append((name, None, [_async_array(arr).getitem(self._sel(name, a, b)) for a, b in merged]))
            every = [c for _, _, coros in jobs for c in coros]
            # one read (one array on the fast path): awaited here, not wrapped in a task by gather;
            # a fetch then costs the loop one task (see chunkread)
            flat = [await every[0]] if len(every) == 1 else await asyncio.gather(*every)
            out: list[dict[str, np.ndarray]] = [{} for _ in ranges]
            i = 0
            for name, reader, coros in jobs:
                got, i = flat[i : i + len(coros)], i + len(coros)
                if reader is not None:
                    per_range = got[0]
                else:
                    major = [self._major(name, x) for x in got]
                    per_range = [d[name] for d in _split_ranges(ranges, merged, {name: major})]
                for o, x in zip(out, per_range, strict=True):
                    o[name] = x
            return out

        return backend.submit(run())

    def _native_reads(self, backend: Backend) -> TensorstoreReads | None:
        """The backend's native client for this source's small chunks (see ``tensorstore_reads``),
        probed with the first array's metadata object; None: zarr's loop reads them."""
        first = next(r for r in self._direct.values() if r is not None)
        return backend.native_reads(first.metadata_key, self.options.max_connections or request_budget(16))

    def _submit_native(self, native: TensorstoreReads, ranges: Sequence[tuple[int, int]],
                       contiguous: bool) -> NativeFetch[list[dict[str, np.ndarray]]]:
        """``submit_ranges`` through tensorstore: every chunk's read started here, the rows assembled
        by the thread that waits (``NativeFetch.result``), no event loop involved."""
        jobs = [(name, reader, reader.chunk_keys(ranges)) for name, reader in self._direct.items()
                if reader is not None]
        futures: list[Any] = []
        try:
            for _, _, keys in jobs:
                futures.extend(native.start(k) for k in keys)
        except BaseException:  # e.g. closed meanwhile: nothing left running; the caller redoes it
            for f in futures:
                f.cancel()
            raise

        def finish(results: list[Any]) -> list[dict[str, np.ndarray]]:
            out: list[dict[str, np.ndarray]] = [{} for _ in ranges]
            i = 0
            for name, reader, keys in jobs:
                bodies = [native_body(r) for r in results[i : i + len(keys)]]
                i += len(keys)
                for o, x in zip(out, reader.from_bodies(ranges, bodies, contiguous=contiguous), strict=True):
                    o[name] = x
            return out

        return NativeFetch(futures, finish, native)

    def wait_fetch(self, fut: Pending[Any], ranges: Sequence[tuple[int, int]],
                   timeout: float | None = None) -> Any:
        """The result of a ``submit_ranges`` future, waiting at most ``timeout`` (default: the
        deadline). A timeout or a storage failure (unreachable, denied) raises its ZarrLoaderError at
        once; any other failure returns None: the caller redoes the read through zarr to name the chunk.
        A fetch whose tensorstore reads fail returns None too (the source's later fetches then go
        through zarr's loop, obstore), except where tensorstore gave up on the storage as unavailable
        after its own attempts (obstore's): that is a StorageUnavailableError, as on obstore."""
        backend = self._backend
        assert backend is not None
        what = f"fetching rows {_fmt_ranges(ranges)} of {self.url}"
        try:
            return backend.wait(fut, what, timeout)
        except NativeReadError as exc:
            backend.drop_native_reads(f"{exc} (while {what})", exc.reads)
            if exc.unavailable:  # after tensorstore's own attempts, which are obstore's (tensorstore_reads)
                raise StorageUnavailableError(
                    f"cannot reach storage while {what} at {backend.endpoint} (gave up after bounded retries; "
                    f"{backend.settings()}): {exc}. {FIX_UNAVAILABLE}") from exc
            return None
        except (StorageUnavailableError, AccessDeniedError):
            raise
        except ZarrLoaderError:
            return None

    def _run(self, coro: Any, what: str) -> Any:
        backend = self._backend
        assert backend is not None
        return backend.run(coro, what)

    def _gather_slices(self, handles: dict[str, Any], segments: list[list[int]]) -> dict[str, list[np.ndarray]]:
        import asyncio

        async def all_reads() -> list[Any]:
            coros = [
                _async_array(arr).getitem(self._sel(name, a, b))
                for name, arr in handles.items()
                for a, b in segments
            ]
            return await asyncio.gather(*coros)

        try:
            flat = self._run(all_reads(), f"reading rows {_fmt_ranges(segments)} of {self.url}")
        except (StorageUnavailableError, AccessDeniedError):
            raise
        except ZarrLoaderError:
            # redo one by one: the failing read raises with the chunk named
            return {name: [self.read_array_rows(name, a, b) for a, b in segments] for name in handles}
        n = len(segments)
        return {name: [self._major(name, x) for x in flat[i * n : (i + 1) * n]] for i, name in enumerate(handles)}

    def read_array_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array, with the same error naming as read_rows."""
        arr = self._handles()[name]
        sel = self._sel(name, start, stop)
        try:
            return self._major(name, self._run(_async_array(arr).getitem(sel),
                                               f"reading {name or 'array'}[{start}:{stop}] of {self.url}"))
        except Exception as exc:
            axis = self._axes.get(name, 0)
            full = (slice(start, stop),) if axis == 0 else tuple(
                slice(start, stop) if i == axis else slice(0, n) for i, n in enumerate(arr.shape))
            raise self._read_error(exc, name, arr, full) from exc

    def _sel(self, name: str, start: int, stop: int) -> Any:
        """The selection of samples [start, stop) of array ``name``, along its own sample axis."""
        axis = self._axes.get(name, 0)
        if axis == 0:
            return slice(start, stop)
        return (slice(None),) * axis + (slice(start, stop),)

    def _major(self, name: str, block: Any) -> np.ndarray:
        """A block read with ``_sel`` as the loader hands it on: sample axis first, C-contiguous (one
        copy for arrays sampled on another axis; none otherwise)."""
        x = np.asarray(block)
        axis = self._axes.get(name, 0)
        return x if axis == 0 else np.ascontiguousarray(np.moveaxis(x, axis, 0))

    def patch_axes(self, info: ArrayInfo, axes: Sequence[int]) -> tuple[int, ...] | None:
        """``axes`` resolved for one array (negative counts from the end; axes of the sample-major
        array, whose axis 0 is the sample axis), or None when the array has too few dimensions to be
        cropped (e.g. labels of shape (N,)): it is then read whole."""
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
            nd, sa = len(info.shape), info.sample_axis
            stored = [sa] + [i for i in range(nd) if i != sa]  # sample-major axis -> stored axis
            sel: list[slice] = [slice(None)] * nd
            sel[sa] = slice(row, row + 1)
            resolved = self.patch_axes(info, axes)
            if resolved is not None:
                for a, s0, n in zip(resolved, starts, size, strict=True):
                    sel[stored[a]] = slice(s0, s0 + n)
            try:
                got = self._run(_async_array(arr).getitem(tuple(sel)),
                                f"reading a patch of {info.name or 'array'}[{row}] of {self.url}")
                out[info.name] = self._major(info.name, got)[0]
            except Exception as exc:
                full = tuple(slice(s.start or 0, dim if s.stop is None else s.stop) for s, dim in zip(sel, info.shape, strict=True))
                raise self._read_error(exc, info.name, arr, full) from exc
        return out

    def object_key(self, name: str, coords: Sequence[int]) -> str:
        """Full URL of the stored object (chunk or shard) at grid ``coords`` of array ``name``."""
        arr = self._arrays_all_dict()[name]
        key = arr.metadata.encode_chunk_key(tuple(coords))
        prefix = "/".join(p for p in (self.url.rstrip("/"), arr.path.strip("/") if name else "") if p)
        return f"{prefix}/{key}"

    def object_keys(self, name: str) -> list[str]:
        """Keys (relative to the store root) of every nominal chunk/shard object of ``name`` (sampled
        or static)."""
        arr = self._arrays_all_dict()[name]
        info = next(i for i in (*self.infos, *self.static_infos) if i.name == name)
        grid = [range(math.ceil(s / c)) for s, c in zip(info.shape, info.object_shape, strict=True)]
        base = arr.path.strip("/")
        enc = arr.metadata.encode_chunk_key
        return [f"{base}/{enc(c)}" if base else enc(c) for c in itertools.product(*grid)]

    def _read_error(self, exc: BaseException, name: str, arr: Any, sel: tuple[slice, ...]) -> ZarrLoaderError:
        where = f"reading {name or 'array'}[{_fmt_sel(sel)}] of"
        if isinstance(exc, (StorageUnavailableError, AccessDeniedError, StoreNotFoundError)):
            return exc
        backend = self._backend
        if backend is not None:
            kind = backend.classify_chain(exc)
            if kind.retryable or kind in (ErrorKind.DENIED, ErrorKind.NOT_FOUND):
                return backend.translate(exc, f"{where} {self.url}")
        cause = exc.__cause__ if isinstance(exc, ZarrLoaderError) and exc.__cause__ is not None else exc
        bad = self._find_bad_chunk(arr, sel)
        if bad is None:
            return ChunkReadError(f"failed {where} {self.url}: {type(cause).__name__}: {cause}")
        key, inner = bad
        detail = f" (inner chunk {inner} of the shard)" if inner is not None else ""
        return ChunkReadError(
            f"corrupt or undecodable chunk {key}{detail} while {where} {self.url}: {type(cause).__name__}: {cause}. "
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
        name = next((n for n, a in self._arrays_all() if a is arr), "")
        for n, coords in enumerate(itertools.product(*ranges)):
            if n >= _MAX_PROBES:
                break
            region = tuple(slice(c * k, min((c + 1) * k, size)) for c, k, size in zip(coords, chunks, arr.shape, strict=True))
            try:
                self._run(_async_array(arr).getitem(region), f"re-reading chunk {coords} of {self.url}")
            except (StorageUnavailableError, AccessDeniedError):
                raise
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


def _fmt_ranges(ranges: Sequence[Any]) -> str:
    text = ", ".join(f"{a}:{b}" for a, b in ranges[:4])
    return text + (f", ... ({len(ranges)} ranges)" if len(ranges) > 4 else "")


def _fmt_sel(sel: tuple[slice, ...]) -> str:
    return ", ".join(f"{s.start}:{s.stop}" for s in sel)
