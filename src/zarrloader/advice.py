"""``zarrloader inspect``: what a store looks like to a loader, and what reading it will cost.

Numbers per array: shape, dtype, chunks (and shards), chunk bytes uncompressed and compressed (from a
sample of stored objects), codecs, object count. Advice: chunk size against the 1-16 MB sweet spot,
GET requests per epoch and their price, and -- by Little's law, requests in flight = request rate x
time per request -- the concurrency needed to reach a target bandwidth.

Any group: arrays are grouped by sample dimension (``dims.layouts_by_dimension``): one table per
candidate dimension, the chosen one (``--sample-dim``, else the default) first, each with its own
advice; arrays without the chosen dimension (coordinates, static fields) are listed apart, since a
loader reads them once. Stores without dimension names have one table, along axis 0.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .dims import DatasetLayout, array_meta, layouts_by_dimension
from .source import ArrayInfo, ZarrSource
from .storage import StorageOptions

MB = 1_000_000
MiB = 1 << 20
SWEET_SPOT = (1 * MB, 16 * MB)


@dataclass(frozen=True)
class CostModel:
    """Assumptions for the advice; every one can be set from the command line."""

    price_per_1000_gets: float = 0.0004  # USD, S3 Standard GET pricing in most regions
    target_mib_s: float = 1000.0  # bandwidth a training job should be fed at
    latency_s: float | None = None  # time to first byte; None = measure (remote) or assume 20 ms
    per_stream_mib_s: float = 80.0  # what one HTTP stream delivers once data flows
    epochs: int = 1


@dataclass
class ArrayReport:
    info: ArrayInfo
    compressed_chunk_bytes: float | None  # mean over the sampled objects, per read chunk
    sampled_objects: int
    missing_objects: int  # sampled objects not stored (read as fill_value)
    stored_objects: int | None  # listed count, when listing was done
    gets_per_epoch: int
    cost_per_epoch: float
    in_flight_needed: float
    advice: list[str] = field(default_factory=list)

    @property
    def uncompressed_chunk_bytes(self) -> int:
        return self.info.chunk_nbytes


@dataclass
class DimensionTable:
    """The arrays along one sample dimension (None: axis 0 of a store without dimension names)."""

    sample_dim: str | None
    length: int
    chosen: bool  # the dimension a loader samples by default (or the one asked for)
    arrays: list[ArrayReport]

    @property
    def gets_per_epoch(self) -> int:
        return sum(a.gets_per_epoch for a in self.arrays)

    @property
    def cost_per_epoch(self) -> float:
        return sum(a.cost_per_epoch for a in self.arrays)

    @property
    def in_flight_needed(self) -> float:
        return sum(a.in_flight_needed for a in self.arrays)


@dataclass
class StaticReport:
    """An array without the chosen sample dimension: read once, whole, by a loader."""

    info: ArrayInfo
    stored_bytes: int | None  # mean size of the sampled objects times the object count, when known

    @property
    def nbytes(self) -> int:
        return math.prod(self.info.shape) * self.info.itemsize


@dataclass
class InspectReport:
    url: str
    arrays: list[ArrayReport]  # the chosen table's arrays
    latency_s: float
    latency_measured: bool
    model: CostModel
    sample_dim: str | None = None
    layout: str = ""  # how the sample dimension was chosen (DatasetLayout.describe)
    tables: list[DimensionTable] = field(default_factory=list)
    static: list[StaticReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for a, rep in zip(out["arrays"], self.arrays, strict=True):
            a["uncompressed_chunk_bytes"] = rep.uncompressed_chunk_bytes
        for t, table in zip(out["tables"], self.tables, strict=True):
            t.update(gets_per_epoch=table.gets_per_epoch, cost_per_epoch=table.cost_per_epoch,
                     in_flight_needed=table.in_flight_needed)
            for a, rep in zip(t["arrays"], table.arrays, strict=True):
                a["uncompressed_chunk_bytes"] = rep.uncompressed_chunk_bytes
        for s, st in zip(out["static"], self.static, strict=True):
            s["nbytes"] = st.nbytes
        return out


def _sample_coords(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _measure_latency(backend: Any, keys: list[str], tries: int = 5) -> float | None:
    """Median time of a metadata request (one round trip) on a few stored objects; each request is
    bounded by the backend's deadline, and a frozen store raises rather than being timed."""
    from .errors import StorageUnavailableError

    times = []
    for k in keys[:tries]:
        t0 = time.perf_counter()
        try:
            backend.size(k)
        except StorageUnavailableError:
            raise
        except Exception:
            continue
        times.append(time.perf_counter() - t0)
    return statistics.median(times) if times else None


def inspect_store(url: str, storage_options: StorageOptions | Mapping[str, Any] | None = None, *,
                  arrays: list[str] | None = None, model: CostModel | None = None, sample_objects: int = 8,
                  list_objects: bool | None = None, sample_dim: str | None = None) -> InspectReport:
    """Inspect ``url``. ``list_objects`` None: list the store when it has at most 20,000 nominal objects.
    ``sample_dim``: the table (and static list) to put first; default as ``ZarrSource`` chooses."""
    model = model or CostModel()
    src = ZarrSource(url, arrays=arrays, storage_options=storage_options, sample_dim=sample_dim).open()
    loc = src.location
    backend = src.backend  # every request below is bounded by its deadline (backends.Deadline)
    sampled_paths: list[str] = []
    per_array: list[tuple[ArrayInfo, list[int | None], int | None]] = []
    all_infos = [*src.infos, *src.static_infos]
    for info in all_infos:
        keys = src.object_keys(info.name)
        chosen = [keys[i] for i in _sample_coords(len(keys), sample_objects)]
        sizes: list[int | None] = []
        for k in chosen:
            size = backend.size(k)
            sizes.append(size)
            if size is not None:
                sampled_paths.append(k)
        listed = None
        do_list = list_objects if list_objects is not None else info.n_objects <= 20_000
        if do_list and loc.protocol != "http":
            prefix = src._arrays_all_dict()[info.name].path.strip("/") if info.name else ""
            listed = sum(1 for o in backend.list_objects(prefix)
                         if not o.key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")))
        per_array.append((info, sizes, listed))

    measured = None
    if model.latency_s is None and loc.protocol != "file":
        measured = _measure_latency(backend, sampled_paths)
    latency = model.latency_s if model.latency_s is not None else (measured if measured is not None else 0.020)

    sampled_by_name = {info.name: (sizes, listed) for info, sizes, listed in per_array}
    chosen = src.layout
    tables = []
    for layout in _layouts(src, chosen):
        infos = [dataclasses.replace(next(i for i in all_infos if i.name == a.name), sample_axis=a.axis, dims=a.dims)
                 for a in layout.sampled]
        tables.append(DimensionTable(layout.sample_dim, layout.length, layout.sample_dim == chosen.sample_dim,
                                     _table(infos, sampled_by_name, model, latency, layout.sample_dim)))
    static = []
    for info in src.static_infos:
        sizes, _ = sampled_by_name[info.name]
        present = [s for s in sizes if s is not None]
        stored = round(statistics.fmean(present) * info.n_objects) if present else None
        static.append(StaticReport(info, stored))
    return InspectReport(url=src.url, arrays=tables[0].arrays, latency_s=latency,
                         latency_measured=measured is not None and model.latency_s is None, model=model,
                         sample_dim=chosen.sample_dim, layout=chosen.describe(), tables=tables, static=static)


def _layouts(src: ZarrSource, chosen: DatasetLayout) -> list[DatasetLayout]:
    """The chosen layout first, then every other candidate sample dimension's."""
    if chosen.sample_dim is None:
        return [chosen]
    metas = [array_meta(n, a) for n, a in src._arrays_all_dict().items()]
    others = [lay for d, lay in layouts_by_dimension(metas, where=src.url).items() if d != chosen.sample_dim]
    return [chosen, *others]


def _table(infos: list[ArrayInfo], sampled: dict[str, tuple[list[int | None], int | None]], model: CostModel,
           latency: float, dim: str | None) -> list[ArrayReport]:
    reports = []
    total_sample = sum(math.prod(i.sample_shape) * i.itemsize for i in infos) or 1
    for info in infos:
        sizes, listed = sampled[info.name]
        present = [s for s in sizes if s is not None]
        inner_per_object = math.prod(o // c for o, c in zip(info.object_shape, info.chunks, strict=True))
        comp = statistics.fmean(present) / inner_per_object if present else None
        # arrays are read together: each gets the share of the bandwidth its bytes per sample take
        share = math.prod(info.sample_shape) * info.itemsize / total_sample
        reports.append(_advise(info, comp, len(sizes), len(sizes) - len(present), listed, model, latency, share, dim))
    return reports


def _advise(info: ArrayInfo, comp: float | None, sampled: int, missing: int, listed: int | None,
            model: CostModel, latency: float, share: float = 1.0, dim: str | None = None) -> ArrayReport:
    raw = info.chunk_nbytes
    wire = comp if comp else float(raw)
    gets = info.n_read_chunks
    if info.shards:
        # zarr reads a shard's index once per read call touching it: one call per chunk row on the sample axis
        ax = info.sample_axis
        gets += info.n_objects * max(1, info.shards[ax] // info.chunks[ax])
    gets *= model.epochs
    cost = gets / 1000 * model.price_per_1000_gets
    # Little's law: L = lambda * W, lambda = bandwidth / bytes per request, W = latency + transfer time
    target = model.target_mib_s * share
    rate = target * MiB / wire
    per_request = latency + wire / (model.per_stream_mib_s * MiB)
    in_flight = rate * per_request
    advice: list[str] = []
    lo, hi = SWEET_SPOT
    size_txt = f"{raw / MB:.2f} MB uncompressed" + (f", {wire / MB:.2f} MB stored" if comp else "")
    row_bytes = raw / info.sample_chunk
    along = f"along {dim!r}" if dim is not None else "on axis 0"
    whole = math.prod(info.shape) * info.itemsize
    if info.n_read_chunks == 1 or whole < lo:
        advice.append(f"the whole array is {whole / MB:.2f} MB in {info.n_read_chunks} chunk(s): small enough not to matter")
    elif wire < lo:
        rows = min(info.length, max(info.sample_chunk, math.ceil(4 * MB / max(row_bytes * (wire / raw), 1))))
        if info.shards:  # already sharded: the objects are large, only the inner chunks are small
            advice.append(
                f"inner chunks are small ({size_txt}) inside shards {info.shards}: each inner chunk is its own "
                f"range request and decode. Rewrite with ~4 MB inner chunks (e.g. {rows} samples per chunk {along}) "
                "if reads are slow; make_loader coalesces small reads"
            )
        else:
            advice.append(
                f"chunks are small ({size_txt}): below ~1 MB per request, latency dominates and throughput falls off "
                f"a cliff. Rewrite with ~4 MB chunks (e.g. {rows} samples per chunk {along}), or shard the array so "
                "small chunks sit in large objects; make_loader coalesces small reads, which only hides part of it"
            )
    elif wire > hi:
        advice.append(
            f"chunks are large ({size_txt}): fine for throughput, but every read holds {raw / MB:.0f} MB, the "
            "shuffle buffer grows with it, and random access reads more than it needs. 1-16 MB is the sweet spot"
        )
    else:
        advice.append(f"chunk size {size_txt}: inside the 1-16 MB sweet spot")
    advice.append(
        f"{gets:,} GET requests per {'epoch' if model.epochs == 1 else f'{model.epochs} epochs'}: "
        f"${cost:,.4f} at ${model.price_per_1000_gets:g} per 1,000"
    )
    share_txt = f" ({share:.0%} of {model.target_mib_s:g} MiB/s: this array's share of each sample)" if share < 0.999 else ""
    if info.n_read_chunks == 1:  # read once and done: no steady request stream to size
        in_flight = 0.0
    else:
        advice.append(
            f"to sustain {target:,.1f} MiB/s{share_txt}: {rate:,.1f} requests/s x {per_request * 1000:.0f} ms each "
            f"= {in_flight:,.1f} requests in flight (Little's law)"
        )
    if missing:
        advice.append(f"{missing} of {sampled} sampled objects are not stored: they read as fill_value ({info.fill_value})")
    return ArrayReport(info=info, compressed_chunk_bytes=comp, sampled_objects=sampled, missing_objects=missing,
                       stored_objects=listed, gets_per_epoch=gets, cost_per_epoch=cost, in_flight_needed=in_flight,
                       advice=advice)


def format_report(rep: InspectReport) -> str:
    lines = [f"{rep.url}"]
    if rep.layout:
        lines.append(f"  {rep.layout}")
    tables = rep.tables or [DimensionTable(rep.sample_dim, 0, True, rep.arrays)]
    for table in tables:
        if table.sample_dim is not None:
            mark = " (the loader's)" if table.chosen else f" (--sample-dim {table.sample_dim})"
            lines.append(f"  == sample dimension {table.sample_dim!r}: {table.length} samples, "
                         f"{len(table.arrays)} arrays{mark}")
        lines.extend(_format_table(rep, table))
    if rep.static:
        what = f"without {rep.sample_dim!r}" if rep.sample_dim is not None else "0-d"
        lines.append(f"  static arrays ({what}: read once, whole; ZarrSource.static):")
        for st in rep.static:
            i = st.info
            dims = f" dims {tuple(i.dims)}" if i.dims is not None else ""
            stored = f", {st.stored_bytes / MiB:.3f} MiB stored" if st.stored_bytes is not None else ""
            lines.append(f"    {i.name}{dims}  shape {i.shape}  dtype {i.dtype}  chunks {i.chunks}  "
                         f"{st.nbytes / MiB:.3f} MiB{stored}  codecs: {', '.join(i.codecs) or 'none'}  "
                         f"objects: {i.n_objects:,}")
    src = "measured" if rep.latency_measured else "assumed"
    lines.append(f"  latency per request: {rep.latency_s * 1000:.1f} ms ({src}); per-stream bandwidth "
                 f"{rep.model.per_stream_mib_s:g} MiB/s (assumed)")
    return "\n".join(lines)


def _format_table(rep: InspectReport, table: DimensionTable) -> list[str]:
    lines: list[str] = []
    for a in table.arrays:
        i = a.info
        axis = f"  sample axis {i.sample_axis}" if i.sample_axis else ""
        dims = f"  dims {tuple(i.dims)}" if i.dims is not None else ""
        lines.append(f"  array {i.name or '(root)'}  zarr v{i.zarr_format}{dims}{axis}")
        lines.append(f"    shape {i.shape}  dtype {i.dtype}  chunks {i.chunks}" + (f"  shards {i.shards}" if i.shards else ""))
        comp = f"{a.compressed_chunk_bytes / MiB:.3f} MiB" if a.compressed_chunk_bytes else "n/a (no stored objects sampled)"
        ratio = (f" (ratio {i.chunk_nbytes / a.compressed_chunk_bytes:.2f}x)" if a.compressed_chunk_bytes else "")
        lines.append(f"    chunk bytes: {i.chunk_nbytes / MiB:.3f} MiB uncompressed, {comp} compressed{ratio}")
        lines.append(f"    codecs: {', '.join(i.codecs) or 'none'}")
        objs = f"{i.n_objects:,} nominal" + (f", {a.stored_objects:,} stored" if a.stored_objects is not None else "")
        lines.append(f"    objects: {objs}" + (f" ({i.n_read_chunks:,} inner chunks)" if i.shards else ""))
        lines.extend(f"    - {t}" for t in a.advice)
    in_flight = table.in_flight_needed
    along = f" along {table.sample_dim!r}" if table.sample_dim is not None else ""
    lines.append(f"  dataset{along}: {table.gets_per_epoch:,} GETs per epoch (${table.cost_per_epoch:,.4f}); "
                 f"{rep.model.target_mib_s:g} MiB/s needs ~{in_flight:,.0f} requests in flight: "
                 f"make_loader(concurrency={max(1, math.ceil(in_flight))}) sizes zarr's concurrency and the HTTP "
                 "pool to match (both default to 10)")
    return lines
