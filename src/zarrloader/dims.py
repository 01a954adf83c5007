"""Dimension names of Zarr arrays and the dataset layout they imply.

xarray-shaped stores keep time series next to coordinates and static fields: ``tas(time, lat, lon)``,
``pr(time, lat, lon)``, ``lat(lat)``, ``orog(lat, lon)``. A loader samples along one *sample
dimension*: every array that has it is sampled (at whatever axis it sits), the others are carried
whole (static). Dimension names come from zarr v3 ``dimension_names`` metadata or, in zarr v2 (and
v3 stores written by older tools), from the ``_ARRAY_DIMENSIONS`` attribute xarray writes.

:func:`dataset_layout` is a pure function over plain metadata (:class:`ArrayMeta`), testable without
I/O; :func:`read_layout` builds the metadata from an opened zarr group and calls it.

Stores without any dimension names keep the historical layout: every array is sampled along axis 0
and all must have the same length there (``DatasetLayout.sample_dim`` is None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import DatasetLayoutError, StoreNotFoundError

DIMENSION_KEY = "_ARRAY_DIMENSIONS"  # xarray's attribute for zarr v2 (and pre-v3-spec stores)

Dims = tuple[str | None, ...]
_FIX_DIM = "choose it with --sample-dim NAME on the command line or sample_dim='NAME' in Python"


@dataclass(frozen=True)
class ArrayMeta:
    """Plain metadata of one array: all :func:`dataset_layout` looks at.

    ``dims`` is None when the array stores no dimension names; entries may be None where zarr v3
    leaves one axis unnamed. ``name`` is the path inside the group (``"sub/x"`` for nested arrays).
    """

    name: str
    shape: tuple[int, ...]
    dims: Dims | None = None
    chunks: tuple[int, ...] | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))
        if self.dims is not None:
            dims = tuple(None if d is None else str(d) for d in self.dims)
            object.__setattr__(self, "dims", dims)
            if len(dims) != len(self.shape):
                raise DatasetLayoutError(
                    f"array {self.name!r} has {len(dims)} dimension names {list(dims)} for a "
                    f"{len(self.shape)}-d shape {list(self.shape)}. Fix: rewrite its dimension names "
                    f"(zarr v3 dimension_names, v2 attribute {DIMENSION_KEY}) with one name per axis"
                )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def named(self) -> bool:
        """True when at least one axis has a name (0-d arrays count as named: nothing to name)."""
        return self.ndim == 0 or (self.dims is not None and any(d is not None for d in self.dims))

    @property
    def leaf(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def is_dimension_coordinate(self) -> bool:
        """A 1-d array named like its only dimension (``time(time)``): a coordinate, not data."""
        return self.ndim == 1 and self.dims is not None and self.dims[0] == self.leaf

    @property
    def nbytes(self) -> int:
        itemsize = np.dtype(self.dtype).itemsize if self.dtype and _is_numpy_dtype(self.dtype) else 1
        return math.prod(self.shape) * itemsize


def _is_numpy_dtype(text: str) -> bool:
    try:
        np.dtype(text)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class SampledArray:
    """An array along the sample dimension, which sits at ``axis`` of its shape."""

    name: str
    axis: int
    shape: tuple[int, ...]
    dims: Dims | None
    chunks: tuple[int, ...] | None = None
    dtype: str | None = None

    @property
    def length(self) -> int:
        return self.shape[self.axis]

    @property
    def chunk_length(self) -> int | None:
        """Chunk length along the sample dimension (None when chunks are unknown)."""
        return self.chunks[self.axis] if self.chunks else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: the array's shape without the sample axis."""
        return self.shape[: self.axis] + self.shape[self.axis + 1 :]

    @property
    def sample_dims(self) -> Dims | None:
        return None if self.dims is None else self.dims[: self.axis] + self.dims[self.axis + 1 :]

    def selection(self, start: int, stop: int) -> tuple[slice, ...]:
        """Index selecting samples [start, stop) of this array (whole extent on every other axis)."""
        sel = [slice(None)] * len(self.shape)
        sel[self.axis] = slice(start, stop)
        return tuple(sel)

    def sample_major(self, block: np.ndarray) -> np.ndarray:
        """``block`` (read with :meth:`selection`) with the sample axis moved first: a view, no copy."""
        return block if self.axis == 0 else np.moveaxis(block, self.axis, 0)


@dataclass(frozen=True)
class StaticArray:
    """An array without the sample dimension (coordinates, static fields, scalars): read once, whole."""

    name: str
    shape: tuple[int, ...]
    dims: Dims | None
    chunks: tuple[int, ...] | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class DimensionVote:
    """How strongly one dimension qualifies as the default sample dimension."""

    dim: str
    leading: int  # data arrays with this dimension on axis 0
    arrays: int  # arrays with this dimension anywhere
    length: int
    leading_bytes: int  # bytes of the arrays it leads (the tie-break)


@dataclass(frozen=True)
class DatasetLayout:
    """Which arrays are sampled along which axis, and which are static.

    ``sample_dim`` is None for stores without dimension names (every array sampled on axis 0).
    ``chosen`` says how the sample dimension was picked: ``"argument"`` (sample_dim=), ``"default"``
    (the one most data arrays share on axis 0) or ``"axis0"`` (no names stored).
    ``candidates`` lists every dimension that leads a data array, strongest first.
    """

    sample_dim: str | None
    length: int
    sampled: tuple[SampledArray, ...]
    static: tuple[StaticArray, ...]
    chosen: Literal["argument", "default", "axis0"]
    candidates: tuple[DimensionVote, ...] = field(default=())
    where: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return self.sampled_names + self.static_names

    @property
    def sampled_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.sampled)

    @property
    def static_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.static)

    def sampled_array(self, name: str) -> SampledArray:
        for a in self.sampled:
            if a.name == name:
                return a
        raise KeyError(name)

    def axis_of(self, name: str) -> int | None:
        """Axis of the sample dimension in array ``name``; None for a static array."""
        for a in self.sampled:
            if a.name == name:
                return a.axis
        if name in self.static_names:
            return None
        raise KeyError(name)

    @property
    def chunk_lengths(self) -> tuple[int, ...]:
        """Chunk length along the sample dimension of every sampled array whose chunks are known."""
        return tuple(a.chunk_length for a in self.sampled if a.chunk_length)

    @property
    def dimensions(self) -> dict[str, int]:
        """Every named dimension of the layout's arrays and its length."""
        out: dict[str, int] = {}
        for a in (*self.sampled, *self.static):
            for d, n in zip(a.dims or (), a.shape, strict=False):
                if d is not None:
                    out.setdefault(d, n)
        return out

    def describe(self) -> str:
        """One line for ``inspect``: the sample dimension and why it was chosen."""
        if self.sample_dim is None:
            return f"sample axis: 0 (no dimension names stored), {self.length} samples"
        how = {
            "argument": "chosen with --sample-dim / sample_dim=",
            "default": "default: the dimension most data arrays share on axis 0",
        }.get(self.chosen, self.chosen)
        others = [f"{v.dim!r} ({v.leading})" for v in self.candidates if v.dim != self.sample_dim]
        lead = next((v.leading for v in self.candidates if v.dim == self.sample_dim), None)
        text = f"sample dimension: {self.sample_dim!r}, {self.length} samples ({how}"
        if lead is not None and self.chosen == "default":
            text += f"; leads {lead} data array{'s' if lead != 1 else ''}"
        text += ")"
        if others:
            text += f"; other candidates: {', '.join(others)}"
        return text


def dims_from_metadata(metadata: Mapping[str, Any], attributes: Mapping[str, Any] | None = None) -> Dims | None:
    """Dimension names from an array's metadata document: a v3 ``zarr.json`` (``dimension_names``,
    falling back to ``attributes["_ARRAY_DIMENSIONS"]``) or a v2 ``.zarray`` with its ``.zattrs``
    passed as ``attributes``. None when none are stored."""
    names = metadata.get("dimension_names")
    if names is None:
        attrs = attributes if attributes is not None else metadata.get("attributes") or {}
        names = attrs.get(DIMENSION_KEY)
    return _normalise_dims(names)


def _normalise_dims(names: Any) -> Dims | None:
    if names is None:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DatasetLayoutError(
            f"dimension names {names!r} are not a list of names. Fix: rewrite them as a list with one "
            f"name per axis (zarr v3 dimension_names, v2 attribute {DIMENSION_KEY})"
        )
    return tuple(None if n is None else str(n) for n in names)


def array_dims(arr: Any) -> Dims | None:
    """Dimension names of an opened ``zarr.Array`` (v3 metadata, else the v2 attribute)."""
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None:
        names = arr.attrs.get(DIMENSION_KEY)
    return _normalise_dims(names)


def array_meta(name: str, arr: Any) -> ArrayMeta:
    """:class:`ArrayMeta` of an opened ``zarr.Array`` (metadata only, no chunk reads)."""
    dtype = str(arr.dtype)
    return ArrayMeta(name=name, shape=tuple(arr.shape), dims=array_dims(arr), chunks=tuple(arr.chunks),
                     dtype=dtype if _is_numpy_dtype(dtype) else None)


def dimension_votes(arrays: Sequence[ArrayMeta]) -> tuple[DimensionVote, ...]:
    """Every dimension that leads (is axis 0 of) a data array, strongest first. Dimension
    coordinates (``time(time)``) do not vote unless nothing else does: each would add one vote to
    its own dimension and drown the data arrays' choice."""
    named = [a for a in arrays if a.ndim > 0 and a.dims is not None]
    voters = [a for a in named if not a.is_dimension_coordinate] or named
    lengths: dict[str, int] = {}
    counts: dict[str, int] = {}
    for a in named:
        for d, n in zip(a.dims or (), a.shape, strict=True):
            if d is not None:
                lengths.setdefault(d, n)
                counts[d] = counts.get(d, 0) + 1
    leading: dict[str, int] = {}
    leading_bytes: dict[str, int] = {}
    for a in voters:
        d = (a.dims or (None,))[0]
        if d is not None:
            leading[d] = leading.get(d, 0) + 1
            leading_bytes[d] = leading_bytes.get(d, 0) + a.nbytes
    votes = [DimensionVote(d, leading[d], counts[d], lengths[d], leading_bytes[d]) for d in leading]
    return tuple(sorted(votes, key=lambda v: (-v.leading, -v.leading_bytes, v.dim)))


def default_sample_dim(arrays: Sequence[ArrayMeta], where: str = "") -> str | None:
    """The dimension most data arrays share on axis 0; ties go to the one leading the most bytes
    (the time series, not a static field of the same rank). None when no array has names.
    Raises DatasetLayoutError when the tie cannot be broken."""
    votes = dimension_votes(arrays)
    if not votes:
        return None
    best = votes[0]
    tied = [v for v in votes if v.leading == best.leading and v.leading_bytes == best.leading_bytes]
    if len(tied) > 1:
        listed = ", ".join(f"{v.dim!r} (length {v.length})" for v in tied)
        raise DatasetLayoutError(
            f"ambiguous sample dimension{_in(where)}: {listed} each lead {best.leading} data array(s) of "
            f"the same size. Fix: {_FIX_DIM}"
        )
    return best.dim


def _in(where: str) -> str:
    return f" in {where}" if where else ""


def dataset_layout(arrays: Sequence[ArrayMeta], sample_dim: str | None = None, *, where: str = "") -> DatasetLayout:
    """Split ``arrays`` into sampled (with the sample dimension's axis) and static arrays.

    ``sample_dim`` None picks the default (:func:`default_sample_dim`); a store without any
    dimension names is sampled along axis 0. ``where`` (a URL) only makes error messages precise.
    Raises DatasetLayoutError naming the cause and the fix.
    """
    if not arrays:
        raise DatasetLayoutError(f"no arrays{_in(where)}: point the URL at an array or a group holding some")
    where_s = _in(where)
    shaped = [a for a in arrays if a.ndim > 0]
    scalars = [a for a in arrays if a.ndim == 0]
    unnamed = [a for a in shaped if not a.named]
    votes = dimension_votes(arrays)

    if sample_dim is None and len(unnamed) == len(shaped):
        return _axis0_layout(shaped, scalars, where)
    if unnamed:
        listed = [a.name for a in unnamed]
        if len(unnamed) == len(shaped):
            raise DatasetLayoutError(
                f"no array{where_s} stores dimension names (zarr v3 dimension_names, v2 attribute "
                f"{DIMENSION_KEY}), so sample_dim={sample_dim!r} (--sample-dim {sample_dim}) matches nothing. "
                "Fix: drop --sample-dim / sample_dim= to sample every array along axis 0, or write the store "
                "with its dimension names (xarray does)"
            )
        raise DatasetLayoutError(
            f"arrays {listed}{where_s} store no dimension names while the others do, so it cannot be told "
            f"whether they lie along the sample dimension. Fix: leave them out (--arrays / arrays=[...] "
            f"naming the others), or store their dimension names (zarr v3 dimension_names, v2 attribute "
            f"{DIMENSION_KEY})"
        )
    chosen: Literal["argument", "default"] = "argument"
    if sample_dim is None:
        sample_dim = default_sample_dim(arrays, where)
        chosen = "default"
        if sample_dim is None:  # only arrays whose axes are all unnamed-None entries
            raise DatasetLayoutError(
                f"no array{where_s} names its first axis, so there is no default sample dimension. "
                f"Fix: {_FIX_DIM}"
            )
    dims_present = {d: n for a in shaped for d, n in zip(a.dims or (), a.shape, strict=True) if d is not None}
    if sample_dim not in dims_present:
        listed = ", ".join(f"{d!r} ({n})" for d, n in dims_present.items())
        hint = f", or omit it for the default ({votes[0].dim!r})" if votes else ""
        raise DatasetLayoutError(
            f"no array{where_s} has a dimension {sample_dim!r}; dimensions present: {listed}. "
            f"Fix: pass one of those with --sample-dim / sample_dim={hint}"
        )

    sampled: list[SampledArray] = []
    static: list[StaticArray] = []
    lengths: dict[str, int] = {}
    for a in arrays:
        axes = [i for i, d in enumerate(a.dims or ()) if d == sample_dim]
        if len(axes) > 1:
            raise DatasetLayoutError(
                f"array {a.name!r}{where_s} has dimension {sample_dim!r} on axes {axes} (dims {list(a.dims or ())}): "
                f"it cannot be sampled along one axis. Fix: leave it out (--arrays / arrays=[...] naming the "
                f"others), or choose another sample dimension ({_FIX_DIM})"
            )
        if axes:
            sampled.append(SampledArray(a.name, axes[0], a.shape, a.dims, a.chunks, a.dtype))
            lengths[a.name] = a.shape[axes[0]]
        else:
            static.append(StaticArray(a.name, a.shape, a.dims, a.chunks, a.dtype))
    if len(set(lengths.values())) > 1:
        raise DatasetLayoutError(
            f"arrays{where_s} disagree on the length of dimension {sample_dim!r}: {lengths}. The store is "
            "inconsistent (xarray never writes this). Fix: leave out the odd ones with --arrays / arrays=[...], "
            "or rewrite them"
        )
    return DatasetLayout(sample_dim, next(iter(lengths.values())), tuple(sampled), tuple(static), chosen,
                         votes, where)


def _axis0_layout(shaped: list[ArrayMeta], scalars: list[ArrayMeta], where: str) -> DatasetLayout:
    lengths = {a.name or "<array>": a.shape[0] for a in shaped}
    if not shaped:
        raise DatasetLayoutError(
            f"only 0-d arrays{_in(where)} ({[a.name for a in scalars]}): nothing to sample. Fix: point the URL "
            "at arrays with a sample axis"
        )
    if len(set(lengths.values())) > 1:
        raise DatasetLayoutError(
            f"arrays{_in(where)} store no dimension names and differ in length on axis 0 (the sample axis "
            f"without names): {lengths}. Fix: name arrays of equal length with --arrays / arrays=[...], or "
            "store dimension names (zarr v3 dimension_names, v2 attribute "
            f"{DIMENSION_KEY}; xarray writes them) so that shorter coordinates are carried as static arrays"
        )
    sampled = tuple(SampledArray(a.name, 0, a.shape, a.dims, a.chunks, a.dtype) for a in shaped)
    static = tuple(StaticArray(a.name, a.shape, a.dims, a.chunks, a.dtype) for a in scalars)
    return DatasetLayout(None, shaped[0].shape[0], sampled, static, "axis0", (), where)


def layouts_by_dimension(arrays: Sequence[ArrayMeta], *, where: str = "") -> dict[str, DatasetLayout]:
    """One layout per candidate sample dimension (each dimension that leads a data array), strongest
    first: what ``inspect`` shows as one table per sample dimension. Candidates whose layout is
    invalid (e.g. a dimension repeated within one array) are left out."""
    out: dict[str, DatasetLayout] = {}
    for vote in dimension_votes(arrays):
        try:
            out[vote.dim] = dataset_layout(arrays, vote.dim, where=where)
        except DatasetLayoutError:
            continue
    return out


def read_layout(group: Any, sample_dim: str | None = None, arrays: Sequence[str] | None = None, *,
                where: str = "") -> DatasetLayout:
    """The layout of an opened ``zarr.Group``: its direct arrays (or ``arrays``, which may name nested
    ones as ``"sub/x"``). Metadata only: with consolidated metadata no extra request is made."""
    metas: list[ArrayMeta] = []
    if arrays is None:
        for name, arr in sorted(group.arrays(), key=lambda kv: kv[0]):
            metas.append(array_meta(name, arr))
    else:
        for name in arrays:
            try:
                node = group[name]
            except KeyError as exc:
                available = sorted(k for k, _ in group.arrays())
                raise StoreNotFoundError(f"no array {name!r}{_in(where)}; available: {available}") from exc
            if not hasattr(node, "dtype"):
                raise DatasetLayoutError(f"{name!r}{_in(where)} is a group, not an array: name its arrays instead")
            metas.append(array_meta(name, node))
    return dataset_layout(metas, sample_dim, where=where)
