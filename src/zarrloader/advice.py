"""``zarrloader inspect``: what a store looks like to a loader, and what reading it will cost.

Numbers per array: shape, dtype, chunks (and shards), chunk bytes uncompressed and compressed (from a
sample of stored objects), codecs, object count. Advice: chunk size against the 1-16 MB sweet spot,
GET requests per epoch and their price, and -- by Little's law, requests in flight = request rate x
time per request -- the concurrency needed to reach a target bandwidth.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .source import ArrayInfo, ZarrSource
from .storage import StorageOptions, filesystem

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
class InspectReport:
    url: str
    arrays: list[ArrayReport]
    latency_s: float
    latency_measured: bool
    model: CostModel

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for a, rep in zip(out["arrays"], self.arrays, strict=True):
            a["uncompressed_chunk_bytes"] = rep.uncompressed_chunk_bytes
        return out


def _sample_coords(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _measure_latency(fs: Any, paths: list[str], tries: int = 5) -> float | None:
    times = []
    for p in paths[:tries]:
        t0 = time.perf_counter()
        try:
            fs.cat_file(p, start=0, end=1)
        except Exception:
            continue
        times.append(time.perf_counter() - t0)
    return statistics.median(times) if times else None


def inspect_store(url: str, storage_options: StorageOptions | Mapping[str, Any] | None = None, *,
                  arrays: list[str] | None = None, model: CostModel | None = None, sample_objects: int = 8,
                  list_objects: bool | None = None) -> InspectReport:
    """Inspect ``url``. ``list_objects`` None: list the store when it has at most 20,000 nominal objects."""
    model = model or CostModel()
    src = ZarrSource(url, arrays=arrays, storage_options=storage_options).open()
    loc = src.location
    fs = filesystem(loc, src.options)
    base = loc.path.rstrip("/") if loc.protocol != "http" else loc.url.rstrip("/")
    sampled_paths: list[str] = []
    per_array: list[tuple[ArrayInfo, list[int | None], int | None]] = []
    for info in src.infos:
        keys = src.object_keys(info.name)
        chosen = [keys[i] for i in _sample_coords(len(keys), sample_objects)]
        sizes: list[int | None] = []
        for k in chosen:
            try:
                sizes.append(int(fs.size(f"{base}/{k}")))
                sampled_paths.append(f"{base}/{k}")
            except FileNotFoundError:
                sizes.append(None)
        listed = None
        do_list = list_objects if list_objects is not None else info.n_objects <= 20_000
        if do_list and loc.protocol != "http":
            prefix = f"{base}/{src._handles()[info.name].path}".rstrip("/") if info.name else base
            listed = sum(1 for p in fs.find(prefix) if not p.rsplit("/", 1)[-1].startswith((".z", "zarr.json")))
        per_array.append((info, sizes, listed))

    measured = None
    if model.latency_s is None and loc.protocol != "file":
        measured = _measure_latency(fs, sampled_paths)
    latency = model.latency_s if model.latency_s is not None else (measured if measured is not None else 0.020)

    reports = []
    total_sample = sum(math.prod(i.shape[1:]) * i.itemsize for i in src.infos) or 1
    for info, sizes, listed in per_array:
        present = [s for s in sizes if s is not None]
        inner_per_object = math.prod(o // c for o, c in zip(info.object_shape, info.chunks, strict=True))
        comp = statistics.fmean(present) / inner_per_object if present else None
        # arrays are read together: each gets the share of the bandwidth its bytes per sample take
        share = math.prod(info.shape[1:]) * info.itemsize / total_sample
        reports.append(_advise(info, comp, len(sizes), len(sizes) - len(present), listed, model, latency, share))
    return InspectReport(url=src.url, arrays=reports, latency_s=latency, latency_measured=measured is not None
                         and model.latency_s is None, model=model)


def _advise(info: ArrayInfo, comp: float | None, sampled: int, missing: int, listed: int | None,
            model: CostModel, latency: float, share: float = 1.0) -> ArrayReport:
    raw = info.chunk_nbytes
    wire = comp if comp else float(raw)
    gets = info.n_read_chunks
    if info.shards:
        # zarr reads a shard's index once per read call touching it: one call per chunk row on axis 0
        gets += info.n_objects * max(1, info.shards[0] // info.chunks[0])
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
    row_bytes = raw / info.chunks[0]
    whole = math.prod(info.shape) * info.itemsize
    if info.n_read_chunks == 1 or whole < lo:
        advice.append(f"the whole array is {whole / MB:.2f} MB in {info.n_read_chunks} chunk(s): small enough not to matter")
    elif wire < lo:
        rows = min(info.shape[0], max(info.chunks[0], math.ceil(4 * MB / max(row_bytes * (wire / raw), 1))))
        advice.append(
            f"chunks are small ({size_txt}): below ~1 MB per request, latency dominates and throughput falls off "
            f"a cliff. Rewrite with ~4 MB chunks (e.g. {rows} rows per chunk on axis 0), or shard the array so "
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
    for a in rep.arrays:
        i = a.info
        lines.append(f"  array {i.name or '(root)'}  zarr v{i.zarr_format}")
        lines.append(f"    shape {i.shape}  dtype {i.dtype}  chunks {i.chunks}" + (f"  shards {i.shards}" if i.shards else ""))
        comp = f"{a.compressed_chunk_bytes / MiB:.3f} MiB" if a.compressed_chunk_bytes else "n/a (no stored objects sampled)"
        ratio = (f" (ratio {i.chunk_nbytes / a.compressed_chunk_bytes:.2f}x)" if a.compressed_chunk_bytes else "")
        lines.append(f"    chunk bytes: {i.chunk_nbytes / MiB:.3f} MiB uncompressed, {comp} compressed{ratio}")
        lines.append(f"    codecs: {', '.join(i.codecs) or 'none'}")
        objs = f"{i.n_objects:,} nominal" + (f", {a.stored_objects:,} stored" if a.stored_objects is not None else "")
        lines.append(f"    objects: {objs}" + (f" ({i.n_read_chunks:,} inner chunks)" if i.shards else ""))
        lines.extend(f"    - {t}" for t in a.advice)
    total_gets = sum(a.gets_per_epoch for a in rep.arrays)
    total_cost = sum(a.cost_per_epoch for a in rep.arrays)
    in_flight = sum(a.in_flight_needed for a in rep.arrays)
    lines.append(f"  dataset: {total_gets:,} GETs per epoch (${total_cost:,.4f}); {rep.model.target_mib_s:g} MiB/s needs "
                 f"~{in_flight:,.0f} requests in flight: make_loader(concurrency={max(1, math.ceil(in_flight))}) sizes "
                 "zarr's concurrency and the HTTP pool to match (both default to 10)")
    src = "measured" if rep.latency_measured else "assumed"
    lines.append(f"  latency per request: {rep.latency_s * 1000:.1f} ms ({src}); per-stream bandwidth "
                 f"{rep.model.per_stream_mib_s:g} MiB/s (assumed)")
    return "\n".join(lines)
