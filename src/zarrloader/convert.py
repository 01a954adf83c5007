"""``zarrloader convert SRC DST``: NetCDF4 / HDF5 -> Zarr v3, streamed with bounded memory.

SRC is a local path or a URL (s3://, gs://, http(s)://) read through an fsspec file object; DST is any
destination zarrloader writes (a path, s3://, gs://), written through :mod:`staging`: atomic (the
store appears whole or not at all) and resumable (rerun the same command after an interrupt).

What is kept, so that ``xarray.open_zarr(DST)`` equals ``xarray.open_dataset(SRC)`` (values, dims,
attributes): every group (HDF5 groups become zarr groups), every variable with its stored values
(packed integers stay packed, fill values stay stored: CF decoding is the reader's business),
coordinates (dimension-scale variables), attributes of groups and variables (HDF5/netCDF bookkeeping
attributes dropped, ``_FillValue`` encoded the way xarray encodes it in zarr v3), dimension names as
zarr v3 ``dimension_names`` (from netCDF dimension scales; axes without scales get h5netcdf's
``phony_dim_N`` names, ``phony_dims="sort"``), and consolidated metadata at the root.

Chunks come from a target object size (``chunk_mb``, default 4 MiB: the 1-16 MB sweet spot of
object stores) along the sample dimension of each group (the one most variables share on axis 0,
or ``sample_dim``); arrays without it (coordinates, static fields) are chunked along their first
axis. ``shard_mb`` groups those chunks into shard objects of about that size.

Memory: the source is read one unit at a time -- one row of destination objects along the sample
axis, or one object when a row is too big -- and every unit in flight holds at most
``_UNIT_FACTOR`` x its decoded size (the read buffer, zarr's encode buffers, the encoded objects).
Units are admitted against ``max_memory`` (default 512 MiB), which also covers the HDF5 chunk cache
and the remote read-ahead buffer: peak memory above the interpreter's own stays under
``max_memory``, whatever the file size.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import signal
import struct
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dims import ArrayMeta, dataset_layout
from .errors import DatasetLayoutError, StoreNotFoundError, WriteError, ZarrLoaderError
from .staging import StagedWriter, check_not_inside
from .storage import StorageOptions, filesystem, parse_url

MiB = 1 << 20
DEFAULT_CHUNK_MB = 4.0
DEFAULT_SHARD_MB = 16.0
DEFAULT_MAX_MEMORY = 512 * MiB
CODECS = ("zstd", "blosc", "none")
DEFAULT_LEVEL = {"zstd": 3, "blosc": 5}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# netCDF-4 / HDF5 dimension-scale bookkeeping, hidden by netCDF4 and h5netcdf alike
HIDDEN_ATTRS = frozenset({"REFERENCE_LIST", "CLASS", "DIMENSION_LIST", "NAME", "_Netcdf4Dimid",
                          "_Netcdf4Coordinates", "_nc3_strict", "_NCProperties"})
NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."
NON_COORD = "_nc4_non_coord_"
_UNIT_FACTOR = 4  # bytes held per unit in flight / its decoded size (read, encode buffers, objects)
_STRING_ITEMSIZE = 64  # memory estimate per element of a variable-length string array
_REMOTE_BLOCK = 8 * MiB


class ConvertError(ZarrLoaderError, ValueError):
    """SRC cannot be converted as asked (cause and fix in the message)."""


class UnsupportedVariableError(ConvertError):
    """A variable has an HDF5 type with no Zarr equivalent (compound, references, ...)."""


# -- chunk choice ----------------------------------------------------------------------------------
def _balanced(length: int, chunk: int) -> int:
    """The chunk length that splits ``length`` into as many pieces as ``chunk`` does, evenly (no
    nearly empty last chunk)."""
    if length <= 0:
        return max(1, chunk)
    n = math.ceil(length / max(1, chunk))
    return math.ceil(length / n)


def choose_chunks(shape: Sequence[int], itemsize: int, axis: int | None, target_bytes: int) -> tuple[int, ...]:
    """Chunks of about ``target_bytes`` for an array of ``shape``: as many whole samples along
    ``axis`` (the sample axis; axis 0 for static arrays) as fit; when one sample is bigger than the
    target, one sample per chunk and the other axes split, outermost first."""
    shape = tuple(int(s) for s in shape)
    if not shape:
        return ()
    ax = 0 if axis is None else axis
    itemsize = max(1, itemsize)
    target = max(itemsize, int(target_bytes))
    chunks = [max(1, s) for s in shape]
    sample = math.prod(c for i, c in enumerate(chunks) if i != ax) * itemsize
    if sample <= target:
        chunks[ax] = _balanced(shape[ax], max(1, min(chunks[ax], target // sample)))
        return tuple(chunks)
    chunks[ax] = 1
    for i in range(len(shape)):
        if i == ax:
            continue
        inner = math.prod(chunks[j] for j in range(i + 1, len(shape)) if j != ax) * itemsize
        if chunks[i] * inner <= target:
            break
        chunks[i] = _balanced(shape[i], max(1, target // inner))
    return tuple(chunks)


def choose_shards(shape: Sequence[int], chunks: Sequence[int], itemsize: int, axis: int | None,
                  shard_bytes: int) -> tuple[int, ...] | None:
    """Shards of about ``shard_bytes`` made of whole chunks along ``axis`` (axis 0 for static
    arrays); None for 0-d arrays."""
    if not shape:
        return None
    ax = 0 if axis is None else axis
    chunk_bytes = math.prod(chunks) * max(1, itemsize)
    per = max(1, int(shard_bytes) // max(1, chunk_bytes))
    n_chunks = max(1, math.ceil(shape[ax] / chunks[ax]))
    shards = list(chunks)
    shards[ax] = chunks[ax] * min(per, n_chunks)
    return tuple(shards)


# -- plan --------------------------------------------------------------------------------------------
@dataclass
class ArrayPlan:
    """One source variable and how it is written."""

    path: str  # zarr path of the array ("group/name")
    h5path: str  # HDF5 path of the dataset
    shape: tuple[int, ...]
    dtype: np.dtype  # values as written (native byte order); object for variable-length strings
    string: bool  # variable-length string
    dims: tuple[str, ...]
    attrs: dict[str, Any]
    fill_value: Any
    axis: int | None  # the sample axis; None for a static array
    chunks: tuple[int, ...] = ()
    shards: tuple[int, ...] | None = None
    h5_chunks: tuple[int, ...] | None = None
    h5_filters: tuple[str, ...] = ()

    @property
    def chunk_axis(self) -> int:
        return 0 if self.axis is None else self.axis

    @property
    def itemsize(self) -> int:
        return _STRING_ITEMSIZE if self.string else self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    @property
    def object_shape(self) -> tuple[int, ...]:
        return self.shards or self.chunks


@dataclass
class GroupPlan:
    path: str  # "" for the root
    attrs: dict[str, Any]
    sample_dim: str | None = None


@dataclass
class ConvertPlan:
    groups: list[GroupPlan]
    arrays: list[ArrayPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


@dataclass(frozen=True)
class Unit:
    """One piece of work: a region of one array covering whole destination objects."""

    array: ArrayPlan
    region: tuple[slice, ...]
    id: str

    @property
    def nbytes(self) -> int:
        elements = math.prod(s.stop - s.start for s in self.region) if self.region else 1
        return elements * self.array.itemsize


def _text(v: Any) -> str:
    return bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | np.bytes_) else str(v)


def _json_value(v: Any) -> Any:
    """An HDF5 attribute value as JSON, the way xarray writes it to zarr (1-element arrays -> scalars,
    numpy scalars -> Python numbers, byte strings -> text)."""
    import h5py

    if isinstance(v, h5py.Empty):
        return None
    if isinstance(v, bytes | np.bytes_ | str):
        return _text(v)
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "O":
            items = [_json_value(x) for x in v.ravel()]
            return items[0] if len(items) == 1 else items
        if v.dtype.kind in "SU":
            items = [_text(x) for x in v.ravel()]
            return items[0] if len(items) == 1 else items
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{v.dtype} values")
        return v.reshape(()).item() if v.size == 1 else v.tolist()
    if isinstance(v, np.generic):
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{v.dtype} values")
        return v.item()
    if isinstance(v, bool | int | float):
        return v
    raise TypeError(type(v).__name__)


def encode_fill_attr(value: Any, dtype: np.dtype) -> Any:
    """``_FillValue`` as xarray stores it in zarr v3 attributes (base64 doubles for floats)."""
    v = np.asarray(value).reshape(-1)[0] if np.ndim(value) else value
    if dtype.kind == "f":
        return base64.standard_b64encode(struct.pack("<d", float(v))).decode()
    if dtype.kind in "iu":
        return int(v)
    if dtype.kind == "b":
        return bool(v)
    return _json_value(v)


def _attrs(obj: Any, where: str, notes: list[str], dtype: np.dtype | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in obj.attrs:
        if key in HIDDEN_ATTRS:
            continue
        try:
            raw = obj.attrs[key]
            out[key] = encode_fill_attr(raw, dtype) if key == "_FillValue" and dtype is not None else _json_value(raw)
        except (TypeError, OSError, ValueError) as exc:
            notes.append(f"attribute {key!r} of {where or '/'} skipped: {exc} cannot be stored as JSON")
    return out


def _walk(group: Any, notes: list[str]) -> Iterator[Any]:
    """Groups in h5netcdf's order: a group, then its subgroups depth first (h5py's link order)."""
    import h5py

    yield group
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            notes.append(f"{group.name.rstrip('/')}/{name}: {type(link).__name__} not followed")
            continue
        obj = group.get(name)
        if isinstance(obj, h5py.Group):
            yield from _walk(obj, notes)


def _is_scale(ds: Any) -> bool:
    return _text(ds.attrs.get("CLASS", b"")) == "DIMENSION_SCALE"


def _not_a_variable(ds: Any) -> bool:
    name = ds.attrs.get("NAME", b"")
    return NOT_A_VARIABLE in (name if isinstance(name, bytes | np.bytes_) else str(name).encode())


def _label_status(ds: Any) -> str:
    """h5netcdf's _unlabeled_dimension_mix: 'nodim', 'unlabeled' or 'labeled'."""
    if ds.ndim == 0:
        return "nodim"
    counts = {len(d) for d in ds.dims}
    if counts == {0}:
        return "unlabeled"
    if 0 in counts:
        raise ConvertError(
            f"variable {ds.name} has dimension scales on some axes but not on others: its dimension names "
            "are undefined. Fix: attach scales to every axis (or none), or leave it out with --exclude"
        )
    return "labeled"


def netcdf_dims(f: Any, notes: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Dimension names of every dataset in an open h5py file, as h5netcdf (``phony_dims="sort"``)
    and netCDF4 name them: netCDF dimension scales by name, unlabeled axes ``phony_dim_N``."""
    import h5py

    notes = [] if notes is None else notes
    dim_ids: list[int] = []

    def collect(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and _is_scale(obj):
            dim_ids.append(int(obj.attrs.get("_Netcdf4Dimid", -1)))

    f.visititems(collect)
    max_dim_id = max(dim_ids) if dim_ids else -1
    phony_count = 0
    out: dict[str, tuple[str, ...]] = {}
    for group in _walk(f, notes):
        group_dims: dict[str, int] = {}  # this group's dimensions, in h5netcdf's order
        datasets = []
        phony: Counter[int] = Counter()
        for name in group:
            if isinstance(group.get(name, getlink=True), h5py.SoftLink | h5py.ExternalLink):
                continue
            obj = group.get(name)
            if not isinstance(obj, h5py.Dataset):
                continue
            if _is_scale(obj):
                group_dims[name] = int(obj.shape[0]) if obj.shape else 0
            elif _label_status(obj) == "unlabeled":
                phony |= Counter(int(s) for s in obj.shape)
            datasets.append((name, obj))
        labeled = Counter(group_dims.values())
        for size, cnt in phony.items():
            for _ in range(labeled[size], cnt):
                group_dims[f"phony_dim_{phony_count + max_dim_id + 1}"] = size
                phony_count += 1
        for name, ds in datasets:
            out[ds.name] = _dataset_dims(f, group, name, ds, group_dims)
    return out


def _dataset_dims(f: Any, group: Any, name: str, ds: Any, group_dims: dict[str, int]) -> tuple[str, ...]:
    status = _label_status(ds)
    if "DIMENSION_LIST" in ds.attrs and status == "labeled":
        return tuple(f[refs[-1]].name.split("/")[-1] for refs in ds.attrs["DIMENSION_LIST"])
    if _is_scale(ds) and ds.ndim == 1:
        return (name,)
    dims: list[str] = []
    used: Counter[int] = Counter()
    for axis, d in enumerate(ds.dims):
        if len(d):
            dims.append(d[0].name.split("/")[-1])
            continue
        size = int(ds.shape[axis])
        same = [n for n, s in group_dims.items() if s == size]
        dims.append(same[used[size]] if used[size] < len(same) else f"phony_dim_{size}_{used[size]}")
        used[size] += 1
    return tuple(dims)


def _value_type(ds: Any, where: str) -> tuple[np.dtype, bool]:
    """(dtype written, variable-length string?) of a dataset; UnsupportedVariableError otherwise."""
    import h5py

    dt = ds.dtype
    info = h5py.check_string_dtype(dt)
    if info is not None:
        if info.length is None:
            return np.dtype(object), True
        return np.dtype(f"S{info.length}"), False
    if dt.kind in "biufc" and dt.fields is None:
        return dt.newbyteorder("="), False
    kind = ("compound" if dt.fields else "object reference" if h5py.check_ref_dtype(dt)
            else "variable-length" if h5py.check_vlen_dtype(dt) else str(dt))
    raise UnsupportedVariableError(
        f"variable {where} has HDF5 type {kind}, which Zarr (and xarray) cannot hold. Fix: leave it out with "
        f"--exclude {where.lstrip('/')} (exclude=[...] in Python)"
    )


def _filters(ds: Any) -> tuple[str, ...]:
    out = []
    if ds.compression:
        out.append(str(ds.compression))
    if ds.shuffle:
        out.append("shuffle")
    if ds.fletcher32:
        out.append("fletcher32")
    if ds.scaleoffset is not None:
        out.append("scaleoffset")
    return tuple(out)


def plan_conversion(f: Any, *, sample_dim: str | None = None, chunk_bytes: int = int(DEFAULT_CHUNK_MB * MiB),
                    shard_bytes: int | None = None, exclude: Sequence[str] = ()) -> ConvertPlan:
    """What to write for an open h5py file: groups, arrays, dims, attributes, chunks and shards."""
    import h5py

    notes: list[str] = []
    dims = netcdf_dims(f, notes)
    excluded = {e.strip("/") for e in exclude}
    groups: list[GroupPlan] = []
    arrays: list[ArrayPlan] = []
    seen_sample_dim = False
    for group in _walk(f, []):
        gpath = group.name.strip("/")
        gplan = GroupPlan(gpath, _attrs(group, gpath, notes))
        groups.append(gplan)
        members: list[ArrayPlan] = []
        for name in group:
            if isinstance(group.get(name, getlink=True), h5py.SoftLink | h5py.ExternalLink):
                continue
            ds = group.get(name)
            if not isinstance(ds, h5py.Dataset):
                continue
            if _is_scale(ds) and _not_a_variable(ds):
                continue  # a netCDF dimension without a coordinate variable: a name, not data
            clean = name.removeprefix(NON_COORD)
            path = f"{gpath}/{clean}" if gpath else clean
            if path in excluded or ds.name.strip("/") in excluded:
                continue
            if ds.shape is None:
                notes.append(f"{ds.name}: empty dataspace (no shape) skipped")
                continue
            dtype, string = _value_type(ds, ds.name)
            fill = ds.fillvalue
            if string:
                fill = ""
            elif dtype.kind == "S":
                fill = bytes(np.asarray(fill).astype(dtype).reshape(()).item()) if fill is not None else b""
            else:
                fill = np.asarray(fill).astype(dtype).reshape(()).item() if fill is not None else None
            members.append(ArrayPlan(
                path=path, h5path=ds.name, shape=tuple(int(s) for s in ds.shape), dtype=dtype, string=string,
                dims=dims[ds.name], attrs=_attrs(ds, ds.name, notes, dtype), fill_value=fill, axis=None,
                h5_chunks=tuple(ds.chunks) if ds.chunks else None, h5_filters=_filters(ds)))
        if members:
            layout_dim = _group_sample_dim(members, sample_dim, gpath or "/")
            gplan.sample_dim = layout_dim
            seen_sample_dim = seen_sample_dim or layout_dim is not None
            for a in members:
                if layout_dim is not None and layout_dim in a.dims:
                    a.axis = a.dims.index(layout_dim)
                a.chunks = choose_chunks(a.shape, a.itemsize, a.axis, chunk_bytes)
                if shard_bytes:
                    a.shards = choose_shards(a.shape, a.chunks, a.itemsize, a.axis, shard_bytes)
        arrays += members
    if sample_dim is not None and not seen_sample_dim:
        present = sorted({d for a in arrays for d in a.dims})
        raise DatasetLayoutError(
            f"no variable has a dimension {sample_dim!r}; dimensions present: {present}. Fix: pass one of them "
            "with --sample-dim / sample_dim=, or omit it for the default"
        )
    missing = excluded - {a.path for a in arrays} - _all_paths(f)
    if missing:
        raise ConvertError(f"--exclude names no variable: {sorted(missing)}. Fix: use the variable paths "
                           "as they appear in the file (group/name)")
    return ConvertPlan(groups=groups, arrays=arrays, notes=notes)


def _all_paths(f: Any) -> set[str]:
    out: set[str] = set()
    f.visit(lambda name: out.update({name, name.replace(NON_COORD, "")}))
    return out


def _group_sample_dim(members: list[ArrayPlan], sample_dim: str | None, where: str) -> str | None:
    metas = [ArrayMeta(a.path, a.shape, a.dims) for a in members]
    if sample_dim is not None:
        if not any(sample_dim in a.dims for a in members):
            return None  # this group has no such dimension: everything in it is static
        return dataset_layout(metas, sample_dim, where=f"group {where}").sample_dim
    if not any(a.shape for a in members):
        return None
    return dataset_layout(metas, None, where=f"group {where}").sample_dim


# -- metadata -----------------------------------------------------------------------------------------
def _compressors(codec: str, level: int | None) -> Any:
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "zstd":
        return (ZstdCodec(level=DEFAULT_LEVEL["zstd"] if level is None else level),)
    if codec == "blosc":
        return (BloscCodec(cname="lz4", clevel=DEFAULT_LEVEL["blosc"] if level is None else level, shuffle="shuffle"),)
    return None


def metadata_documents(plan: ConvertPlan, codec: str = "zstd", level: int | None = None) -> dict[str, Any]:
    """Every metadata document of the destination (zarr.json per node, consolidated metadata in the
    root's), built by zarr itself in memory: key -> zarr Buffer."""
    import zarr
    from zarr.storage import MemoryStore

    docs: dict[str, Any] = {}
    store = MemoryStore(store_dict=docs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: unstable dtypes, consolidated metadata "not in the spec"
        root_plan = next(g for g in plan.groups if g.path == "")
        root = zarr.open_group(store=store, mode="w", zarr_format=3, attributes=root_plan.attrs)
        for g in plan.groups:
            if g.path:
                root.create_group(g.path, attributes=g.attrs)
        comp = _compressors(codec, level)
        for a in plan.arrays:
            kw: dict[str, Any] = {}
            if a.shards:
                kw["shards"] = a.shards
            root.create_array(
                a.path, shape=a.shape, dtype=str if a.string else a.dtype, chunks=a.chunks if a.shape else "auto",
                compressors=comp, fill_value=a.fill_value, dimension_names=list(a.dims) if a.shape else None,
                attributes=a.attrs, **kw)
        zarr.consolidate_metadata(store)
    return docs


# -- execution ----------------------------------------------------------------------------------------
def units_of(a: ArrayPlan, budget: int) -> list[Unit]:
    """The array's work units: rows of destination objects along the chunk axis, or single objects
    when a row needs more than ``budget`` bytes in flight."""
    if not a.shape:
        return [Unit(a, (), f"{a.path}@")]
    if 0 in a.shape:
        return []
    obj = a.object_shape
    ax = a.chunk_axis
    row_bytes = obj[ax] * math.prod(s for i, s in enumerate(a.shape) if i != ax) * a.itemsize
    obj_bytes = math.prod(obj) * a.itemsize
    if _UNIT_FACTOR * obj_bytes > budget:
        raise ConvertError(
            f"one object of {a.path} ({obj_bytes / MiB:.1f} MiB decoded, shape {list(obj)}) needs about "
            f"{_UNIT_FACTOR * obj_bytes / MiB:.0f} MiB in flight, more than --max-memory allows "
            f"({budget / MiB:.0f} MiB after caches). Fix: raise --max-memory, or lower --chunk-mb / --shard"
        )
    units: list[Unit] = []
    grids = [range(0, s, o) for s, o in zip(a.shape, obj, strict=True)]
    if _UNIT_FACTOR * row_bytes <= budget:
        for r0 in grids[ax]:
            region = tuple(slice(r0, min(r0 + obj[ax], a.shape[ax])) if i == ax else slice(0, s)
                           for i, s in enumerate(a.shape))
            units.append(Unit(a, region, f"{a.path}@{r0}"))
        return units
    import itertools

    order = [ax] + [i for i in range(len(a.shape)) if i != ax]
    for starts in itertools.product(*(grids[i] for i in order)):
        pos = dict(zip(order, starts, strict=True))
        region = tuple(slice(pos[i], min(pos[i] + obj[i], a.shape[i])) for i in range(len(a.shape)))
        units.append(Unit(a, region, f"{a.path}@{','.join(str(pos[i]) for i in range(len(a.shape)))}"))
    return units


class _Interrupt:
    """Ctrl-C as a flag checked between units. Python raises KeyboardInterrupt wherever the main
    thread happens to be -- inside a finalizer or weakref callback it is printed and swallowed, and
    the conversion would run on. Installed only over Python's own default handler, in the main thread;
    a second Ctrl-C raises at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.prev: Any = None

    def __enter__(self) -> _Interrupt:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self.prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.prev is not None:
            signal.signal(signal.SIGINT, self.prev)


class _Budget:
    """Bytes in flight, bounded: acquire blocks until enough is released (or ``check`` raises)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        self.cond = threading.Condition()

    def acquire(self, n: int, check: Callable[[], None]) -> None:
        n = min(n, self.total)
        with self.cond:
            while self.used + n > self.total:
                self.cond.wait(timeout=0.5)
                check()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= min(n, self.total)
            self.cond.notify_all()


@dataclass
class ConvertResult:
    src: str
    dst: str
    groups: int
    arrays: int
    bytes_total: int  # decoded bytes of every array
    bytes_read: int  # decoded bytes read by this run (less when resuming)
    bytes_written: int  # stored bytes this run wrote
    objects_written: int
    objects_skipped: int  # already written by an earlier run
    units_total: int
    units_resumed: int
    seconds: float
    sample_dims: dict[str, str | None]
    axes: dict[str, int | None]  # axis of the sample dimension per array (None: static)
    chunks: dict[str, tuple[int, ...]]
    shards: dict[str, tuple[int, ...] | None]
    memory_bound: int
    peak_in_flight: int
    notes: list[str]

    @property
    def mib_per_s(self) -> float:
        return self.bytes_read / MiB / self.seconds if self.seconds > 0 else 0.0


def _open_source(src: str, options: StorageOptions, block: int = _REMOTE_BLOCK) -> tuple[Any, Any, dict[str, Any]]:
    """(h5py.File, file object to close or None, identity of the source for resume checks)."""
    import h5py

    loc = parse_url(src)
    if loc.protocol == "file":
        path = loc.path
        if not os.path.exists(path):
            raise StoreNotFoundError(f"no file at {src}. Fix: check the path")
        if os.path.isdir(path):
            raise ConvertError(f"{src} is a folder: convert takes one NetCDF4/HDF5 file")
        st = os.stat(path)
        with open(path, "rb") as fh:
            _check_signature(fh.read(1 << 12), src)
        ident = {"src": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return h5py.File(path, "r"), None, ident
    fs = filesystem(loc, options)
    target = loc.path if loc.protocol != "http" else loc.url
    try:
        info = fs.info(target)
        fobj = fs.open(target, "rb", block_size=block, cache_type="readahead")
    except FileNotFoundError as exc:
        raise StoreNotFoundError(f"no file at {src}: {exc}. Fix: check the bucket and path") from exc
    _check_signature(fobj.read(1 << 12), src)
    fobj.seek(0)
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    ident = {"src": loc.url, "size": info.get("size"), "version": str(version)}
    return h5py.File(fobj, "r"), fobj, ident


def _check_signature(head: bytes, src: str) -> None:
    if any(head[o : o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
        return
    if head[:3] == b"CDF":
        raise ConvertError(
            f"{src} is a classic NetCDF-3 file, not NetCDF-4/HDF5. Fix: convert it to NetCDF-4 first "
            "(nccopy -k nc4 SRC OUT.nc) or with xarray (xarray.open_dataset(SRC).to_zarr(DST))"
        )
    raise ConvertError(f"{src} is not an HDF5 or NetCDF-4 file (no HDF5 signature). Fix: check the path")


def _open_dataset(f: Any, h5path: str, cache_bytes: int) -> Any:
    """The dataset with a chunk cache of ``cache_bytes`` (HDF5's default is 1 MiB per dataset)."""
    import h5py

    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(max(521, cache_bytes // (64 << 10) * 10 + 1), max(1 << 20, cache_bytes), 0.75)
    return h5py.Dataset(h5py.h5d.open(f.id, h5path.encode(), dapl=dapl))


def _cache_for(a: ArrayPlan, units: list[Unit]) -> int:
    """Chunk cache for reading ``a`` unit by unit: HDF5's default 1 MiB when every unit boundary falls
    on an HDF5 chunk boundary (each HDF5 chunk is then read once), else room for every HDF5 chunk one
    unit touches, so that the next unit finds the chunks it shares with this one decompressed."""
    if not a.h5_chunks or not units or a.string or not units[0].region:
        return 1 << 20
    region = units[0].region
    obj = a.object_shape
    aligned = all(sl.stop - sl.start == s or o % hc == 0
                  for sl, o, hc, s in zip(region, obj, a.h5_chunks, a.shape, strict=True))
    if aligned:
        return 1 << 20
    touched = math.prod((min(sl.stop, s) - 1) // hc - sl.start // hc + 2
                        for sl, hc, s in zip(region, a.h5_chunks, a.shape, strict=True))
    return max(1 << 20, touched * math.prod(a.h5_chunks) * a.dtype.itemsize)


def _read(ds: Any, a: ArrayPlan, region: tuple[slice, ...]) -> np.ndarray:
    if a.string:
        return np.asarray(ds.asstr()[region] if region else ds.asstr()[()], dtype=object)
    if ds.dtype != a.dtype and a.dtype.kind != "S":
        return np.asarray(ds.astype(a.dtype)[region] if region else ds.astype(a.dtype)[()])
    return np.asarray(ds[region] if region else ds[()])


def _codec_overhead(codec: str, level: int | None, object_bytes: int) -> int:
    """Memory one encoding thread holds besides the data: the compressor's working tables (zstd's
    grow with the level, but never past what the input size needs) plus per-thread allocator slack."""
    if codec == "zstd":
        lv = DEFAULT_LEVEL["zstd"] if level is None else level
        tables = (2 if lv <= 3 else 8 if lv <= 9 else 32 if lv <= 19 else 96) * MiB
        return min(tables, 2 * MiB + 10 * object_bytes)
    return 2 * MiB


def _encode(a: ArrayPlan, doc: Any, region: tuple[slice, ...], data: np.ndarray) -> list[tuple[str, bytes]]:
    """The destination objects of one unit, encoded by zarr itself (codecs, sharding, and no object
    for chunks that hold only the fill value)."""
    import zarr
    from zarr.storage import MemoryStore

    meta_key = f"{a.path}/zarr.json"
    objects: dict[str, Any] = {meta_key: doc}  # MemoryStore keeps its objects in this very dict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.open_array(store=MemoryStore(store_dict=objects), path=a.path, mode="r+")
        arr[region if region else ()] = data
    return [(k, v.to_bytes()) for k, v in objects.items() if k != meta_key]


def convert(src: str, dst: str, *, sample_dim: str | None = None, chunk_mb: float = DEFAULT_CHUNK_MB,
            shard_mb: float | None = None, codec: str = "zstd", level: int | None = None,
            max_memory: int = DEFAULT_MAX_MEMORY, concurrency: int = 4, exclude: Sequence[str] = (),
            overwrite: bool = False, restart: bool = False, progress: bool = True,
            src_options: StorageOptions | Mapping[str, Any] | None = None,
            dst_options: StorageOptions | Mapping[str, Any] | None = None,
            on_unit: Callable[[int, int], None] | None = None) -> ConvertResult:
    """Convert NetCDF4/HDF5 ``src`` to a Zarr v3 store at ``dst`` (see the module docstring).

    ``on_unit(done, total)`` is called after every finished unit (it may raise to stop: the partial
    store stays resumable). Raises ZarrLoaderError subclasses with cause and fix.
    """
    _validate(chunk_mb, shard_mb, codec, level, max_memory, concurrency)
    t0 = time.perf_counter()
    check_not_inside(src, dst)
    sopts = StorageOptions.coerce(src_options)
    block = max(1 * MiB, min(_REMOTE_BLOCK, max_memory // 8))  # remote read-ahead, inside the bound
    f, fobj, ident = _open_source(src, sopts, block)
    try:
        plan = plan_conversion(f, sample_dim=sample_dim, chunk_bytes=int(chunk_mb * MiB),
                               shard_bytes=int(shard_mb * MiB) if shard_mb else None, exclude=exclude)
        docs = metadata_documents(plan, codec, level)
        # fixed costs come off the top: the remote read-ahead buffer and, per worker thread, the
        # codec's working memory and the allocator's per-thread slack (measured: ~1-2 MiB at zstd 3)
        largest = max((_UNIT_FACTOR * math.prod(a.object_shape) * a.itemsize for a in plan.arrays if a.shape),
                      default=0)
        workers = max(1, concurrency)
        per_worker = _codec_overhead(codec, level, largest // _UNIT_FACTOR)
        remote = block * 2 if fobj is not None else 0
        while workers > 1 and max_memory - remote - workers * per_worker < largest + 4 * MiB:
            workers -= 1  # fewer threads rather than more memory than allowed
        reserved = remote + workers * per_worker
        budget_total = max_memory - reserved
        if budget_total < max(largest, 4 * MiB):
            raise ConvertError(
                f"--max-memory {max_memory / MiB:.0f} MiB is too small here: {reserved / MiB:.0f} MiB go to the codec "
                f"({codec}{'' if level is None else f' level {level}'}) and read buffers, and the largest object needs "
                f"{largest / MiB:.0f} MiB in flight. Fix: raise --max-memory to at least "
                f"{(reserved + max(largest, 4 * MiB)) / MiB:.0f} MiB, or lower --level / --chunk-mb / --shard")
        job = {**ident, "format": 3, "chunk_mb": chunk_mb, "shard_mb": shard_mb, "codec": codec,
               "level": level, "sample_dim": sample_dim, "exclude": sorted(exclude), "version": 1}
        all_units = [(a, units_of(a, budget_total)) for a in plan.arrays]
        n_units = sum(len(u) for _, u in all_units)
        state = {"read": 0, "done_units": 0, "stored": 0, "completed": 0, "completed_run": 0}

        def remaining() -> int:
            """Stored bytes still to write: decoded bytes of unfinished units at this run's ratio."""
            left = plan.total_bytes - state["completed"]
            ratio = state["stored"] / state["completed_run"] if state["completed_run"] else 1.0
            return int(left * ratio)

        writer = StagedWriter(dst, dst_options, job=job, overwrite=overwrite, restart=restart, tool="convert",
                              remaining_bytes=remaining)
        with writer:
            result = _run(f, plan, docs, all_units, n_units, writer, budget_total, workers, progress,
                          on_unit, state)
            for key, buf in docs.items():
                writer.set_metadata(key, buf.to_bytes())
            writer.commit()
    finally:
        f.close()
        if fobj is not None:
            with contextlib.suppress(Exception):
                fobj.close()
    return ConvertResult(
        src=src, dst=dst, groups=len(plan.groups), arrays=len(plan.arrays), bytes_total=plan.total_bytes,
        bytes_read=state["read"], bytes_written=writer.stats.bytes_written,
        objects_written=writer.stats.objects_written, objects_skipped=writer.stats.objects_skipped,
        units_total=n_units, units_resumed=result, seconds=time.perf_counter() - t0,
        sample_dims={g.path: g.sample_dim for g in plan.groups},
        axes={a.path: a.axis for a in plan.arrays}, chunks={a.path: a.chunks for a in plan.arrays},
        shards={a.path: a.shards for a in plan.arrays},
        memory_bound=max_memory, peak_in_flight=state.get("peak", 0) + reserved, notes=plan.notes)


def _run(f: Any, plan: ConvertPlan, docs: dict[str, Any], all_units: list[tuple[ArrayPlan, list[Unit]]],
         n_units: int, writer: StagedWriter, budget_total: int, concurrency: int, progress: bool,
         on_unit: Callable[[int, int], None] | None, state: dict[str, int]) -> int:
    """Read units in order (HDF5 is read by one thread), encode and write them on a pool; returns
    the number of units an earlier run had finished."""
    budget = _Budget(budget_total)
    intr = _Interrupt()
    bar = _progress(plan.total_bytes, progress)
    pending: set[Future[int]] = set()
    lock = threading.Lock()
    resumed = 0

    def reap() -> None:
        intr.check()
        for p in [p for p in pending if p.done()]:
            p.result()  # raises the worker's error here, in the reading thread
            pending.discard(p)

    def work(unit: Unit, data: np.ndarray, doc: Any) -> int:
        stored = 0
        for key, blob in _encode(unit.array, doc, unit.region, data):
            writer.put(key, blob)
            stored += len(blob)
        writer.mark(unit.id)
        with lock:
            state["stored"] += stored
            state["completed"] += unit.nbytes
            state["completed_run"] += unit.nbytes
            state["done_units"] += 1
            done = state["done_units"]
        bar.update(unit.nbytes)
        if on_unit is not None:
            on_unit(done, n_units)
        return stored

    pool = ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="zarrloader-convert")
    try:
        intr.__enter__()
        for a, units in all_units:
            todo = [u for u in units if not writer.unit_done(u.id)]
            for u in units:
                if writer.unit_done(u.id):
                    resumed += 1
                    state["done_units"] += 1
                    state["completed"] += u.nbytes
                    bar.update(u.nbytes)
            if not todo:
                continue
            cache = _cache_for(a, todo)
            if cache > budget_total // 4:
                plan.notes.append(
                    f"{a.path}: its HDF5 chunks {list(a.h5_chunks or ())} do not line up with the Zarr chunks "
                    f"{list(a.object_shape)}; some HDF5 chunks are read more than once. A --max-memory of "
                    f"{4 * cache / MiB:.0f} MiB or more avoids that")
                cache = 1 << 20
            # HDF5 itself holds a compressed chunk and its decompressed copy while it reads
            cache += 2 * math.prod(a.h5_chunks) * a.dtype.itemsize if a.h5_chunks and not a.string else 0
            if cache > budget_total:
                plan.notes.append(f"{a.path}: HDF5 needs {cache / MiB:.0f} MiB of buffers for its chunks "
                                  f"{list(a.h5_chunks or ())}, more than --max-memory leaves")
            budget.acquire(cache, lambda: reap())
            try:
                ds = _open_dataset(f, a.h5path, cache)
                doc = docs[f"{a.path}/zarr.json"]
                for u in todo:
                    need = _UNIT_FACTOR * u.nbytes
                    budget.acquire(need, lambda: reap())
                    try:
                        data = _read(ds, a, u.region)
                    except Exception as exc:
                        budget.release(need)
                        raise _read_error(exc, a, u) from exc
                    state["read"] += u.nbytes
                    fut = pool.submit(work, u, data, doc)
                    del data
                    fut.add_done_callback(lambda _f, n=need: budget.release(n))
                    pending.add(fut)
                    reap()
                # the dataset (and its chunk cache) is released once every unit of it is read
                ds.id.close()
                del ds
            finally:
                budget.release(cache)
        while pending:
            wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            reap()
        state["peak"] = budget.peak
    except BaseException:
        for p in pending:
            p.cancel()
        pool.shutdown(wait=True, cancel_futures=True)  # running units finish their current object
        bar.close()
        raise
    finally:
        intr.__exit__()
    pool.shutdown(wait=True)
    bar.close()
    return resumed


def _read_error(exc: BaseException, a: ArrayPlan, u: Unit) -> ZarrLoaderError:
    text = str(exc)
    sel = ", ".join(f"{s.start}:{s.stop}" for s in u.region)
    if "filter" in text.lower() and ("not available" in text.lower() or "can't" in text.lower()):
        return ConvertError(
            f"cannot decompress {a.h5path}[{sel}] (HDF5 filters {list(a.h5_filters)}): {text}. Fix: install the "
            "HDF5 filter plugin it needs (e.g. pip install hdf5plugin, then run with HDF5_PLUGIN_PATH set, or "
            "import hdf5plugin), or leave the variable out with --exclude")
    if isinstance(exc, ZarrLoaderError):
        return exc
    return ConvertError(f"reading {a.h5path}[{sel}] from the source failed: {type(exc).__name__}: {text}. "
                        "The partial store is kept: rerun the same command to resume")


def _validate(chunk_mb: float, shard_mb: float | None, codec: str, level: int | None, max_memory: int,
              concurrency: int) -> None:
    if not chunk_mb > 0:
        raise ValueError(f"--chunk-mb must be > 0 (got {chunk_mb}); 1-16 MB objects suit object storage")
    if shard_mb is not None and not shard_mb >= chunk_mb:
        raise ValueError(f"--shard {shard_mb} MB is smaller than a chunk ({chunk_mb} MB): a shard holds whole "
                         "chunks. Fix: a larger --shard or a smaller --chunk-mb")
    if codec not in CODECS:
        raise ValueError(f"--codec {codec!r}: choose one of {list(CODECS)}")
    if level is not None:
        lo, hi = {"zstd": (-7, 22), "blosc": (0, 9)}.get(codec, (0, 0))
        if codec == "none" or not lo <= level <= hi:
            raise ValueError(f"--level {level} is not valid for --codec {codec}"
                             + (f" (range {lo}..{hi})" if codec != "none" else " (no compression, no level)"))
    if max_memory < 16 * MiB:
        raise ValueError(f"--max-memory {max_memory} bytes is too small: give at least 16m")
    if concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1 (got {concurrency})")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert", file=sys.stderr,
                leave=False, dynamic_ncols=True)


__all__ = ["ArrayPlan", "ConvertError", "ConvertPlan", "ConvertResult", "GroupPlan", "UnsupportedVariableError",
           "WriteError", "choose_chunks", "choose_shards", "convert", "metadata_documents", "netcdf_dims",
           "plan_conversion", "units_of"]
