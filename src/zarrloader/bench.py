"""The read benchmark: our loader against the limit (the fastest of several raw GET clients over the
same chunk objects) and against the readers users would pick instead, in one run, on the same server.

Readers (names are part of the JSON contract):
  raw                the limit: the fastest raw client at this chunk size (``raw_clients`` in the JSON
                     has every client's row: s3fs, obstore, s5cmd, tensorstore; see ``bench_raw``)
  naive              the original article: ``zarr.open(fs.get_mapper(url))`` then ``z[i]`` one sample at
                     a time in shuffled order; capped by samples/time and extrapolated (it is very slow)
  zarr_default       zarr-python's own full read ``z[:]`` with default settings
  loader_sequential  make_loader(shuffle=False), default backend unless --backend
  loader_shuffled    make_loader(shuffle=True)
  --peers            tensorstore and torch DataLoader readers (see ``bench_peers``)

Every row: MiB/s (median of the repeats, with min and max), client CPU-seconds per GiB (this process's
user + system CPU over the run, every thread included, plus the CPU of child processes that ended in
it: s5cmd, DataLoader workers; never the embedded server's), requests in flight, and both as ratios to
the fastest raw client measured in the same run, so they hold on any machine; absolute MiB/s depend
on it. Throughput counts decoded payload bytes over wall time of the read (metadata opened
beforehand; its time is reported separately as ``open_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bench_peers, bench_raw
from .epochpeak import EpochPeakError, epoch_peak
from .errors import ZarrLoaderError
from .source import ZarrSource
from .storage import Location, StorageOptions, close_store, filesystem, parse_url, zarr_store

MiB = 1 << 20
KiB = 1 << 10
GiB = 1 << 30
READERS = ("raw", "naive", "zarr_default", "loader_sequential", "loader_shuffled")
PEERS = bench_peers.PEERS
DEFAULT_CHUNKS = (256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB)
QUICK_CHUNKS = (256 * KiB, 1 * MiB, 4 * MiB)
#: what the issue asks of the loader, against the fastest raw client of the same run
TARGETS = {"loader_sequential/fastest_raw": 0.95, "loader_shuffled/fastest_raw": 0.90,
           "loader_cpu_per_gib/fastest_raw": 1.15, "ttfb_s": 0.3, "peak_traced_mib/memory_bound_mib": 1.0}


class BenchConfigError(ValueError):
    """A bench setting that cannot be measured (message: which one, and the fix)."""


@dataclass
class BenchConfig:
    """What to measure. ``url=None``: write the datasets to an embedded ``rclone serve s3``."""

    url: str | None = None
    storage_options: StorageOptions | Mapping[str, Any] | None = None
    chunk_sizes: Sequence[int] = DEFAULT_CHUNKS
    concurrency: Sequence[int] = (16,)
    total_bytes: int = 256 * MiB
    sample_bytes: int = 64 * KiB
    readers: Sequence[str] = READERS
    batch_bytes: int = 4 * MiB
    shuffle_buffer_chunks: int = 8
    naive_max_samples: int = 200
    naive_max_seconds: float = 3.0
    repeats: int = 5
    codec: str | None = None  # None: uncompressed, so the benchmark measures I/O, not a codec
    backend: str | None = None  # storage backend of zarr_default and the loaders (naive is the article's
    # fsspec); None: the options' choice, else the default for the scheme (obstore for s3:// and gs://)
    raw_clients: Sequence[str] | None = None  # None: every raw client installed (bench_raw.clients_for the URL)
    peers: bool = False  # add bench_peers.PEERS to the readers
    peer_max_seconds: float = 3.0  # time cap of the peers that read per sample (extrapolated)

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        base: dict[str, Any] = {"chunk_sizes": QUICK_CHUNKS, "total_bytes": 64 * MiB, "naive_max_samples": 60,
                                "naive_max_seconds": 1.0, "repeats": 5, "peer_max_seconds": 1.0}
        base.update(kw)
        return cls(**base)

    def all_readers(self) -> tuple[str, ...]:
        extra = tuple(p for p in PEERS if self.peers and p not in self.readers)
        return (*self.readers, *extra)

    def validate(self) -> None:
        """Refuse settings that cannot be measured, naming the setting and the fix."""
        def bad(what: str, fix: str) -> BenchConfigError:
            return BenchConfigError(f"{what}. Fix: {fix}")

        known = (*READERS, *PEERS)
        unknown = sorted(set(self.readers) - set(known))
        if unknown:
            raise bad(f"unknown readers {unknown}", f"choose among {list(known)}")
        if not self.readers and not self.peers:
            raise bad("no readers to measure", "name at least one reader, or drop --readers")
        if not self.chunk_sizes:
            raise bad("no chunk sizes", "give at least one, e.g. --chunk-sizes 1m")
        if any(int(c) < 4 for c in self.chunk_sizes):
            raise bad(f"chunk sizes {list(self.chunk_sizes)} include one under 4 bytes (one float32)",
                      "use sizes like 256k 1m 4m 16m")
        if not self.concurrency or any(int(c) < 1 for c in self.concurrency):
            raise bad(f"concurrency {list(self.concurrency)}: every level must be >= 1", "e.g. --concurrency 16")
        if int(self.total_bytes) < 1:
            raise bad(f"total bytes per dataset is {self.total_bytes}", "give a size >= 1 chunk, e.g. --total 64m")
        if int(self.total_bytes) < max(int(c) for c in self.chunk_sizes):
            raise bad(f"total bytes per dataset ({self.total_bytes}) is smaller than the largest chunk "
                      f"({max(self.chunk_sizes)})", "raise --total or drop the larger chunk sizes")
        if int(self.sample_bytes) < 4:
            raise bad(f"sample bytes {self.sample_bytes} < 4 (one float32)", "e.g. --sample-bytes 64k")
        if int(self.repeats) < 1:
            raise bad(f"repeats {self.repeats} < 1", "e.g. --repeats 3")
        if self.naive_max_seconds <= 0 or self.naive_max_samples < 1 or self.peer_max_seconds <= 0:
            raise bad("the per-sample readers' caps must be > 0", "e.g. --naive-seconds 3 --naive-samples 200")
        if self.raw_clients is not None:
            loc = parse_url(self.url) if self.url is not None else parse_url("s3://bench")
            fits = set(bench_raw.accepted_clients(loc))
            wrong = sorted(set(self.raw_clients) - fits)
            if wrong:
                raise bad(f"unknown raw clients {wrong} for {loc.url}", f"choose among {sorted(fits)}")


@dataclass
class BenchResult:
    reader: str
    chunk_bytes: int
    concurrency: int
    mib_per_s: float  # the median run's
    samples_per_s: float
    bytes: int
    samples: int
    seconds: float
    ratio_to_raw: float | None = None  # MiB/s over the fastest raw client's (same chunk size, concurrency)
    ttfb_s: float | None = None
    open_s: float | None = None
    peak_rss_mib: float = 0.0  # process RSS peak during the timed run (includes everything else alive)
    peak_traced_mib: float | None = None  # loaders: allocation peak of one extra, untimed epoch (tracemalloc)
    memory_bound_mib: float | None = None
    extrapolated: bool = False
    note: str = ""
    runs_mib_per_s: list[float] = field(default_factory=list)  # every repeat, in run order
    min_mib_per_s: float | None = None
    max_mib_per_s: float | None = None
    cpu_s: float | None = None  # client CPU-seconds of the median run (see module docstring)
    cpu_s_per_gib: float | None = None
    cpu_ratio_to_raw: float | None = None  # CPU per GiB over the fastest raw client's
    requests_in_flight: int | None = None  # request concurrency (workers for DataLoader peers)
    client: str = ""  # raw rows: which client
    targets: dict[str, bool] = field(default_factory=dict)  # target name -> met (loader rows)


@dataclass
class BenchReport:
    config: dict[str, Any]
    results: list[BenchResult] = field(default_factory=list)
    raw_clients: list[BenchResult] = field(default_factory=list)  # every raw client's row
    server: str = ""
    unavailable: dict[str, str] = field(default_factory=dict)  # client/peer -> why it was left out

    def to_dict(self) -> dict[str, Any]:
        return {"results": [asdict(r) for r in self.results], "raw_clients": [asdict(r) for r in self.raw_clients],
                "config": self.config, "server": self.server, "targets": TARGETS, "unavailable": self.unavailable}

    def ratio(self, reader: str, chunk_bytes: int, concurrency: int, other: str = "raw") -> float | None:
        a = self.find(reader, chunk_bytes, concurrency)
        b = self.find(other, chunk_bytes, concurrency)
        return a.mib_per_s / b.mib_per_s if a and b and b.mib_per_s > 0 else None

    def find(self, reader: str, chunk_bytes: int, concurrency: int) -> BenchResult | None:
        rows = self.raw_clients if reader.startswith("raw_") else self.results
        return next((r for r in rows if (r.reader, r.chunk_bytes, r.concurrency) == (reader, chunk_bytes, concurrency)), None)

    def fastest_raw(self, chunk_bytes: int, concurrency: int) -> BenchResult | None:
        rows = [r for r in self.raw_clients if (r.chunk_bytes, r.concurrency) == (chunk_bytes, concurrency)]
        return max(rows, key=lambda r: r.mib_per_s, default=None)


class CPUClock:
    """Client CPU-seconds: this process (all threads) plus children that ended and were waited for."""

    @staticmethod
    def now() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# -- measuring -------------------------------------------------------------------------------------
class PeakRSS:
    """Samples this process's RSS every few ms; ``peak`` is the maximum RSS seen (absolute)."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _naive(loc: Location, opts: StorageOptions, name: str, order: np.ndarray, max_samples: int,
           max_seconds: float) -> tuple[int, float]:
    """The article's pattern, verbatim in spirit: a mapper over the store, one ``z[i]`` per sample."""
    import zarr

    fs = filesystem(loc, opts)  # a plain synchronous filesystem, as the article had
    target = loc.path if loc.protocol != "http" else loc.url
    z = zarr.open(fs.get_mapper(f"{target}/{name}" if name else target), mode="r")
    t0 = time.perf_counter()
    n = 0
    for i in order[:max_samples]:
        z[int(i)]
        n += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    return n, time.perf_counter() - t0


def _zarr_default(loc: Location, opts: StorageOptions, name: str) -> int:
    import zarr

    with zarr.config.set({"async.concurrency": 10}):  # zarr's default, whatever the loader set
        default_pool = StorageOptions(**{**asdict(opts), "max_connections": None, "extra": dict(opts.extra)})
        store = zarr_store(loc, default_pool)
        try:
            arr = zarr.open_array(store=store, path=name or None, mode="r")
            return int(np.asarray(arr[:]).nbytes)
        finally:
            close_store(store)


@dataclass
class LoaderRun:
    nbytes: int
    nsamples: int
    secs: float  # from iter() to the end of the epoch
    ttfb: float  # from iter() to the first batch
    open_s: float  # metadata open, before iter()
    first_bytes: int
    first_samples: int



def _loader_kwargs(batch: int, concurrency: int, shuffle: bool, k: int) -> dict[str, Any]:
    """The ``make_loader`` settings of every loader epoch the bench runs, timed or measured for memory."""
    return {"batch_size": batch, "shuffle": shuffle, "concurrency": concurrency, "shuffle_buffer_chunks": k,
            "pin_memory": False, "seed": 0}


def _loader_run(src: ZarrSource, batch: int, concurrency: int, shuffle: bool, k: int,
                close: bool = True) -> LoaderRun:
    """One epoch of a fresh loader over ``src``. ``close=False`` keeps the source (its HTTP client and
    connection pool) open for the next run, as a training job keeps it from epoch to epoch."""
    from .loader import make_loader

    ld = make_loader(src, **_loader_kwargs(batch, concurrency, shuffle, k))
    t_open = time.perf_counter()
    ld.num_samples()  # opens metadata (not timed as throughput; reported as open_s)
    open_s = time.perf_counter() - t_open
    t0 = time.perf_counter()
    ttfb = 0.0
    nbytes = nsamples = first_bytes = first_samples = 0
    for i, b in enumerate(ld):
        if i == 0:
            ttfb = time.perf_counter() - t0
        for v in b.values():
            nbytes += v.numel() * v.element_size()
        nsamples += len(next(iter(b.values())))
        if i == 0:
            first_bytes, first_samples = nbytes, nsamples
    secs = time.perf_counter() - t0
    if close:
        ld.source.close()
    return LoaderRun(nbytes, nsamples, secs, ttfb, open_s, first_bytes, first_samples)


# -- datasets --------------------------------------------------------------------------------------
def dataset_shape(chunk_bytes: int, total_bytes: int, sample_bytes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape, chunks) of a float32 array of ~total_bytes with samples of ~sample_bytes."""
    sample_bytes = max(4, min(sample_bytes, chunk_bytes))
    elems = sample_bytes // 4
    side = math.isqrt(elems)
    inner = (side, elems // side)
    rows_per_chunk = max(1, chunk_bytes // (4 * inner[0] * inner[1]))
    n = max(rows_per_chunk, total_bytes // (4 * inner[0] * inner[1]))
    return (n, *inner), (rows_per_chunk, *inner)


def write_dataset(store: Any, chunk_bytes: int, total_bytes: int, sample_bytes: int, codec: str | None) -> None:
    """Random float32 (incompressible) written by zarr-python, chunk row by chunk row."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    shape, chunks = dataset_shape(chunk_bytes, total_bytes, sample_bytes)
    compressors: Any = {None: None, "zstd": ZstdCodec(level=1), "blosc": BloscCodec(cname="lz4", clevel=1)}[codec]
    z = zarr.create_array(store, shape=shape, chunks=chunks, dtype="float32", compressors=compressors, overwrite=True)
    rng = np.random.default_rng(0)
    step = chunks[0] * max(1, (32 * MiB) // chunk_bytes)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        z[start:stop] = rng.random((stop - start, *shape[1:]), dtype=np.float32)


@contextlib.contextmanager
def _target(cfg: BenchConfig) -> Iterator[tuple[str, StorageOptions, str]]:
    """Yield (base URL, options, server description); writes the datasets first."""
    names = {c: f"bench-{c // KiB}k.zarr" for c in cfg.chunk_sizes}
    if cfg.url is not None:
        loc = parse_url(cfg.url)
        opts = StorageOptions.coerce(cfg.storage_options)
        if cfg.backend is not None:
            opts = dataclasses.replace(opts, backend=cfg.backend)
        backend = _reachable(loc, opts)
        from .backends import WRITE_DEFAULTS, open_backend

        # where a scheme writes through another backend by default (gs://: gcsfs, see backends), the
        # datasets are written by that one, whichever --backend names for the readers
        writer_opts = dataclasses.replace(opts, backend=None) if loc.protocol in WRITE_DEFAULTS else opts
        for c, name in names.items():
            writer = open_backend(loc.child(name), writer_opts, writing=True)
            try:
                store = writer.zarr_store(read_only=False)
                if not _matches(store, c, cfg):
                    write_dataset(store, c, cfg.total_bytes, cfg.sample_bytes, cfg.codec)
            except ZarrLoaderError:
                raise
            except Exception as exc:
                raise writer.translate(exc, f"writing the bench dataset {loc.child(name).url}") from exc
            finally:
                writer.close()
        yield loc.url, opts, f"{cfg.url} ({backend.name} backend)"
        return
    from zarr.storage import LocalStore

    from .s3server import embedded_s3

    with tempfile.TemporaryDirectory(prefix="zarrloader-bench-") as root:
        for c, name in names.items():  # written before the server starts: rclone caches listings
            write_dataset(LocalStore(str(Path(root) / "bench" / name)), c, cfg.total_bytes, cfg.sample_bytes, cfg.codec)
        with embedded_s3(root) as server:
            opts = StorageOptions(extra=server.storage_options(), backend=cfg.backend)
            from .backends import choose_backend

            used = choose_backend(parse_url("s3://bench"), opts)
            yield "s3://bench", opts, f"embedded rclone serve s3 at {server.endpoint_url} ({used} backend)"


def _reachable(loc: Location, opts: StorageOptions) -> Any:
    """The backend for ``loc``, after one bounded request: an unreachable endpoint, a missing bucket or
    refused credentials fail here with cause and fix, before any dataset is written."""
    from .backends import open_backend
    from .errors import StoreNotFoundError

    backend = open_backend(loc, opts)
    try:
        if backend.bucket_exists() is False:
            raise StoreNotFoundError(f"bucket {loc.bucket!r} of {loc.url} does not exist at {backend.endpoint}. "
                                     "Fix: create it, or name an existing bucket in the URL")
        backend.list_objects("")
    except BaseException:
        backend.close()
        raise
    return backend


def _matches(store: Any, chunk_bytes: int, cfg: BenchConfig) -> bool:
    import zarr

    shape, chunks = dataset_shape(chunk_bytes, cfg.total_bytes, cfg.sample_bytes)
    try:
        z = zarr.open_array(store=store, mode="r")
    except Exception:
        return False
    return tuple(z.shape) == shape and tuple(z.chunks) == chunks


# -- the run ---------------------------------------------------------------------------------------
def run_benchmark(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    cfg.validate()
    say = progress or (lambda _m: None)
    report = BenchReport(config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                                 if k != "storage_options"})
    with _target(cfg) as (base, opts, where):
        report.server = where
        for chunk in cfg.chunk_sizes:
            loc = parse_url(base).child(f"bench-{chunk // KiB}k.zarr")
            for conc in cfg.concurrency:
                say(f"chunk {_fmt_bytes(chunk)}, concurrency {conc}")
                _measure(report, loc, opts, chunk, conc, cfg, say)
    score(report)
    return report


def score(report: BenchReport) -> None:
    """Ratios to the fastest raw client of the same chunk size and concurrency, and the targets, for
    every row (recomputable from the rows alone: the tests do)."""
    for r in [*report.raw_clients, *report.results]:
        limit = report.fastest_raw(r.chunk_bytes, r.concurrency)
        if limit is None or limit.mib_per_s <= 0:
            continue
        r.ratio_to_raw = r.mib_per_s / limit.mib_per_s
        if r.cpu_s_per_gib is not None and limit.cpu_s_per_gib:
            r.cpu_ratio_to_raw = r.cpu_s_per_gib / limit.cpu_s_per_gib
        if r.reader in ("loader_sequential", "loader_shuffled"):
            r.targets = {f"x raw >= {TARGETS[f'{r.reader}/fastest_raw']:g}":
                         r.ratio_to_raw >= TARGETS[f"{r.reader}/fastest_raw"]}
            if r.cpu_ratio_to_raw is not None:
                r.targets[f"cpu x raw <= {TARGETS['loader_cpu_per_gib/fastest_raw']:g}"] = (
                    r.cpu_ratio_to_raw <= TARGETS["loader_cpu_per_gib/fastest_raw"])
            if r.ttfb_s is not None:
                r.targets[f"ttfb <= {TARGETS['ttfb_s']:g} s"] = r.ttfb_s <= TARGETS["ttfb_s"]
            if r.peak_traced_mib is not None and r.memory_bound_mib:
                r.targets["memory <= bound"] = r.peak_traced_mib <= r.memory_bound_mib


Runner = Callable[[], tuple[int, int, dict[str, Any]]]


def _measure(report: BenchReport, loc: Location, opts: StorageOptions, chunk: int, conc: int, cfg: BenchConfig,
             say: Callable[[str], None]) -> None:
    from .loader import LoaderConfig, make_loader, read_grouping, request_budget

    readers = cfg.all_readers()
    src = ZarrSource(loc.url, storage_options=opts)
    src.reserve_connections(request_budget(conc))
    src.open()
    info = src.infos[0]
    sample = src.sample_nbytes
    keys = list(src.object_keys(info.name))
    listed = {o.key: o.size for o in src.backend.list_objects(info.name or "")}
    sizes = [listed.get(k, src.block_length * sample) for k in keys]
    total = src.nbytes

    def add(reader: str, nbytes: int, nsamples: int, secs: float, rss: PeakRSS, cpu: float | None = None,
            raw: bool = False, **kw: Any) -> None:
        secs = max(secs, 1e-9)
        kw.pop("run", None)
        row = BenchResult(reader=reader, chunk_bytes=chunk, concurrency=conc, mib_per_s=nbytes / MiB / secs,
                          samples_per_s=nsamples / secs, bytes=nbytes, samples=nsamples, seconds=secs,
                          peak_rss_mib=rss.peak / MiB, cpu_s=cpu,
                          cpu_s_per_gib=cpu / (nbytes / GiB) if cpu is not None and nbytes else None, **kw)
        (report.raw_clients if raw else report.results).append(row)
        say(f"  {reader:24s} {row.mib_per_s:8.1f} MiB/s" + (f"  {row.cpu_s_per_gib:5.2f} CPU-s/GiB" if row.cpu_s_per_gib else ""))

    batch = max(1, cfg.batch_bytes // max(sample, 1))
    bounds = {shuffle: make_loader(src, **_loader_kwargs(batch, conc, shuffle, cfg.shuffle_buffer_chunks)).memory_bound_bytes()
              for shuffle in (False, True)}
    # The limit gets as many requests in flight as the loader can have: `conc` fetches of G coalesced
    # chunk reads each, capped by its connection pool. Same request budget for every raw client, so a
    # ratio measures the loader's overhead, not a difference in parallelism.
    group, _ = read_grouping(LoaderConfig(batch_size=batch, concurrency=conc, shuffle_buffer_chunks=cfg.shuffle_buffer_chunks),
                             src.block_length * sample)
    raw_in_flight = min(request_budget(conc), conc * group)
    loader_in_flight = min(request_budget(conc), max(1, min(conc, request_budget(conc) // group)) * group)

    runners: dict[str, Runner] = {}
    closers: list[Callable[[], None]] = []
    if "raw" in readers:
        for name in cfg.raw_clients or bench_raw.clients_for(loc):
            why = bench_raw.unavailable(name)
            if why is not None:
                report.unavailable[f"raw_{name}"] = why
                say(f"  raw_{name}: left out ({why})")
                continue
            client = bench_raw.make_client(name, loc, opts, keys, sizes, raw_in_flight)
            closers.append(client.close)

            def run_raw(c: bench_raw.RawClient = client) -> tuple[int, int, dict[str, Any]]:
                got = c.get_all()
                return got, got // max(sample, 1), {"note": c.note, "client": c.name, "requests_in_flight": c.in_flight}

            runners[f"raw_{name}"] = run_raw

    def run_default() -> tuple[int, int, dict[str, Any]]:
        got = _zarr_default(loc, opts, info.name)
        return got, got // max(sample, 1), {"note": "z[:] with async.concurrency=10, pool 10", "requests_in_flight": 10}

    runners["zarr_default"] = run_default
    # The loaders read through one source of their own that stays open across repeats, as the raw
    # clients do: both start cold in the first repeat and reuse their connection pool after,
    # like every epoch but the first of a training job. (A fresh source per run would time opening
    # ~2 x concurrency TCP connections against raw's warm pool: ~0.2 s, a third of a 64 MiB epoch.)
    loader_src = src.with_options(opts)
    first_open: list[float] = []  # metadata opens once, in the first loader run: report that time

    def run_loader(shuffle: bool) -> Runner:
        def run() -> tuple[int, int, dict[str, Any]]:
            run = _loader_run(loader_src, batch, conc, shuffle, cfg.shuffle_buffer_chunks, close=False)
            first_open.append(run.open_s)
            run.open_s = first_open[0]
            note = (f"{loader_src.backend_name} backend, batch {batch}, K={cfg.shuffle_buffer_chunks}"
                    + ("" if run.nbytes == total else f", read {run.nbytes} of {total} B"))
            return run.nbytes, run.nsamples, {"ttfb_s": run.ttfb, "open_s": run.open_s, "run": run,
                                              "memory_bound_mib": bounds[shuffle] / MiB, "note": note,
                                              "requests_in_flight": loader_in_flight}
        return run

    runners["loader_sequential"] = run_loader(False)
    runners["loader_shuffled"] = run_loader(True)
    ts_ok = _peer_setup(report, readers, loc, opts, say)
    if ts_ok and "tensorstore_sequential" in readers:
        def run_ts() -> tuple[int, int, dict[str, Any]]:
            # a fresh open per run: a new cache, as a new process has (opening is not timed)
            r = bench_peers.run_tensorstore_sequential(bench_peers.open_tensorstore(loc, opts), batch, conc)
            return r.nbytes, r.nsamples, {"ttfb_s": r.ttfb, "note": r.note, "requests_in_flight": r.in_flight, "run": r}
        runners["tensorstore_sequential"] = run_ts
    if "torch_chunked" in readers:
        def run_tc() -> tuple[int, int, dict[str, Any]]:
            r = bench_peers.run_torch(loc, opts, len(src), src.block_length, batch, False, cfg.peer_max_seconds)
            return r.nbytes, r.nsamples, {"ttfb_s": r.ttfb, "note": r.note, "requests_in_flight": r.in_flight, "run": r}
        runners["torch_chunked"] = run_tc

    # Every reader runs `repeats` times, interleaved, so slow phases of a shared machine hit all
    # readers alike; each reports its median run (ratios of medians: one lucky or unlucky run of
    # either side does not move them), with the min and max. All runs are kept in the report.
    runs: dict[str, list[tuple[float, int, int, PeakRSS, dict[str, Any], float]]] = {}
    for _ in range(max(1, cfg.repeats)):
        for reader, fn in list(runners.items()):
            if reader not in readers and not (reader.startswith("raw_") and "raw" in readers):
                continue
            with PeakRSS() as rss:
                c0 = CPUClock.now()
                t0 = time.perf_counter()
                try:
                    nbytes, nsamples, extra = fn()
                except Exception as exc:
                    if reader not in PEERS:
                        raise
                    _peer_failed(report, reader, chunk, exc, say)  # a peer's failure is its row, not the bench's
                    del runners[reader]
                    runs.pop(reader, None)
                    continue
                secs = time.perf_counter() - t0
                cpu = CPUClock.now() - c0
            if "run" in extra:  # loaders: iter() to the end of the epoch, start-up included; peers: their read
                secs = extra["run"].secs
            runs.setdefault(reader, []).append((secs, nbytes, nsamples, rss, extra, cpu))
    # the median run; for an even count the slower of the two middle ones (the same rule for every reader)
    best = {reader: sorted(rs, key=lambda r: r[0])[len(rs) // 2] for reader, rs in runs.items()}
    for reader, shuffle in (("loader_sequential", False), ("loader_shuffled", True)):
        if reader in best:  # memory: one more epoch, untimed, under tracemalloc in a child (see epochpeak)
            limit = 120.0 + 20.0 * best[reader][0]  # tracing slows allocation; start-up included
            extra = best[reader][4]
            try:
                extra["peak_traced_mib"] = epoch_peak(
                    src.with_options(opts), _loader_kwargs(batch, conc, shuffle, cfg.shuffle_buffer_chunks),
                    timeout=limit).peak_bytes / MiB
            except EpochPeakError as exc:  # the timed runs stand; the memory target is then unknown
                first = str(exc).splitlines()[0]
                extra["note"] = f"{extra['note']}; memory not measured ({first})"
                say(f"  {reader}: memory not measured: {exc}")
    for reader in (*[r for r in runners if r.startswith("raw_")], *READERS, *PEERS):
        if reader == "naive" and "naive" in readers:
            order = np.random.default_rng(0).permutation(len(src))
            with PeakRSS() as rss:
                c0 = CPUClock.now()
                n, secs = _naive(loc, opts, info.name, order, cfg.naive_max_samples, cfg.naive_max_seconds)
                cpu = CPUClock.now() - c0
            add("naive", n * sample, n, secs, rss, cpu, extrapolated=n < len(src), requests_in_flight=1,
                note=f"{n} of {len(src)} samples read, rate extrapolated" if n < len(src) else "")
        elif reader in bench_peers.PEERS and reader not in bench_peers.FULL_PEERS and reader in readers:
            if reader == "tensorstore_shuffled" and not ts_ok:
                continue
            with PeakRSS() as rss:
                try:
                    arr = bench_peers.open_tensorstore(loc, opts) if reader == "tensorstore_shuffled" else None
                    c0 = CPUClock.now()
                    if arr is not None:
                        r = bench_peers.run_tensorstore_shuffled(arr, batch, cfg.peer_max_seconds)
                    else:
                        r = bench_peers.run_torch(loc, opts, len(src), src.block_length, batch, True, cfg.peer_max_seconds)
                    cpu = CPUClock.now() - c0
                except Exception as exc:
                    _peer_failed(report, reader, chunk, exc, say)
                    continue
            add(reader, r.nbytes, r.nsamples, r.secs, rss, cpu, ttfb_s=r.ttfb, extrapolated=r.extrapolated,
                note=r.note, requests_in_flight=r.in_flight)
        elif reader in best:
            secs, nbytes, nsamples, rss, extra, cpu = best[reader]
            all_runs = [r[1] / MiB / max(r[0], 1e-9) for r in runs[reader]]
            extra = {**extra, "note": extra["note"] + f"; median of {len(all_runs)}", "runs_mib_per_s": all_runs,
                     "min_mib_per_s": min(all_runs), "max_mib_per_s": max(all_runs)}
            add(reader, nbytes, nsamples, secs, rss, cpu, raw=reader.startswith("raw_"), **extra)
    # "raw" (the contract name of the limit) is the fastest raw client's row
    if "raw" in readers:
        limit = report.fastest_raw(chunk, conc)
        if limit is not None:
            names = ", ".join(r.client for r in report.raw_clients if (r.chunk_bytes, r.concurrency) == (chunk, conc))
            report.results.append(dataclasses.replace(limit, reader="raw", note=f"fastest of {names}: {limit.client}; "
                                                      + limit.note, runs_mib_per_s=list(limit.runs_mib_per_s)))
    for close in closers:
        with contextlib.suppress(Exception):
            close()
    loader_src.close()
    src.close()


def _peer_failed(report: BenchReport, reader: str, chunk: int, exc: BaseException, say: Callable[[str], None]) -> None:
    why = f"failed with {_fmt_bytes(chunk)} chunks: {type(exc).__name__}: {str(exc)[:300]}"
    report.unavailable[reader] = why
    say(f"  {reader}: {why}")


def _peer_setup(report: BenchReport, readers: Sequence[str], loc: Location, opts: StorageOptions,
                say: Callable[[str], None]) -> bool:
    """Whether the tensorstore peers asked for can run here (if not, why is noted in the report)."""
    if not any(r.startswith("tensorstore") for r in readers):
        return False
    why = bench_peers.unavailable("tensorstore_sequential")
    if why is None:
        try:
            bench_peers.open_tensorstore(loc, opts)
            return True
        except Exception as exc:  # a peer that cannot open this store is left out, with the reason
            why = f"tensorstore could not open {loc.url}: {str(exc)[:200]}"
    for r in readers:
        if r.startswith("tensorstore"):  # one entry per reader, every dataset it was left out of
            report.unavailable[r] = f"{report.unavailable[r]}; {why}" if r in report.unavailable else why
    say(f"  tensorstore: left out ({why})")
    return False


# -- presenting ------------------------------------------------------------------------------------
def _fmt_bytes(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n // KiB} KiB"


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(report: BenchReport) -> str:
    """The bench's table: every raw client (the fastest starred), then the readers, per chunk size."""
    rows = [f"{'chunk':>7} {'req':>4} {'reader':24} {'MiB/s':>7} {'min-max':>11} {'x raw':>5} {'CPU-s/GiB':>9} "
            f"{'x raw':>5} {'ttfb s':>6} {'RSS MiB':>7} {'peak/bound MiB':>14}  targets; note"]
    seen = sorted({(r.chunk_bytes, r.concurrency) for r in [*report.raw_clients, *report.results]})
    for chunk, conc in seen:
        limit = report.fastest_raw(chunk, conc)
        group = [r for r in report.raw_clients if (r.chunk_bytes, r.concurrency) == (chunk, conc)]
        group += [r for r in report.results if (r.chunk_bytes, r.concurrency) == (chunk, conc) and r.reader != "raw"]
        for r in group:
            name = r.reader + (" *" if r is limit else "") + (" ~" if r.extrapolated else "")
            spread = (f"{r.min_mib_per_s:.0f}-{r.max_mib_per_s:.0f}" if r.min_mib_per_s is not None
                      and r.max_mib_per_s is not None else "-")
            mem = (f"{r.peak_traced_mib:.0f}/{r.memory_bound_mib:.0f}" if r.peak_traced_mib is not None
                   and r.memory_bound_mib else "-")
            met = ", ".join(f"{k} {'met' if ok else 'UNMET'}" for k, ok in r.targets.items())
            rows.append(
                f"{_fmt_bytes(chunk):>7} {_opt(r.requests_in_flight, 'd') if r.requests_in_flight else '-':>4} "
                f"{name:24} {r.mib_per_s:7.1f} {spread:>11} {_opt(r.ratio_to_raw, '.2f'):>5} "
                f"{_opt(r.cpu_s_per_gib, '.2f'):>9} {_opt(r.cpu_ratio_to_raw, '.2f'):>5} {_opt(r.ttfb_s, '.3f'):>6} "
                f"{r.peak_rss_mib:7.0f} {mem:>14}  {met + '; ' if met else ''}{r.note}")
    rows.append("")
    rows.append("x raw: MiB/s (then CPU-s per GiB) over the fastest raw client's (*) at the same chunk size, "
                "same run. req: requests in flight (DataLoader peers: worker processes).")
    rows.append(f"targets (loaders): storage order >= {TARGETS['loader_sequential/fastest_raw']:g} x raw, shuffled >= "
                f"{TARGETS['loader_shuffled/fastest_raw']:g} x raw, CPU per GiB <= {TARGETS['loader_cpu_per_gib/fastest_raw']:g}"
                f" x raw, ttfb <= {TARGETS['ttfb_s']:g} s, peak (allocations of an untimed epoch) <= bound.")
    rows.append("MiB/s: median of the repeats (min-max of all). CPU: this process, all threads, plus ended child "
                "processes (s5cmd, DataLoader workers); not the server. RSS: the whole process.")
    rows.append("loader MiB/s: from iter() to the end of the epoch, start-up included (metadata open excluded)")
    if any(r.extrapolated for r in report.results):
        rows.append("~: capped by samples/time; MiB/s is the rate over the samples it read (extrapolated)")
    for name, why in report.unavailable.items():
        rows.append(f"left out: {name}: {why}")
    return "\n".join(rows)


def write_json(report: BenchReport, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2))


def plot(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Throughput against chunk size, one line per raw client and reader (and concurrency level)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    fig, ax = plt.subplots(figsize=(8, 5))
    concs = sorted({r.concurrency for r in report.results})
    rows = [*report.raw_clients, *(r for r in report.results if r.reader != "raw")]
    names = list(dict.fromkeys(r.reader for r in rows))
    for reader in names:
        for conc in concs:
            pts = sorted((r.chunk_bytes, r.mib_per_s) for r in rows if r.reader == reader and r.concurrency == conc)
            if pts:
                label = reader if len(concs) == 1 else f"{reader} (c={conc})"
                style = "--" if reader.startswith("raw_") else "-"
                ax.plot([p[0] / MiB for p in pts], [p[1] for p in pts], style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("chunk size (MiB)")
    ax.set_ylabel("throughput (MiB/s)")
    ax.set_title(f"Zarr read throughput — {report.server}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_quick_benchmark(url: str | None = None, storage_options: StorageOptions | Mapping[str, Any] | None = None,
                        total_mib: int = 128, chunk_mib: float = 4, concurrency: int = 16,
                        reader: str = "loader_shuffled", repeats: int = 3) -> dict[str, Any]:
    """One chunk size, raw GET vs our loader, same objects, same run. For the image smoke suite.

    Writes a dataset (to an embedded S3 server when ``url`` is None, else under ``url``) and returns
    ``{"raw_mib_per_s", "loader_mib_per_s", "ratio", "reader", "chunk_bytes", "total_bytes", ...}``.
    Each side runs ``repeats`` times, interleaved; the median run counts. Below ~100 MiB the loader's fixed start-up (threads,
    first read) weighs on the ratio; the default of 128 MiB keeps it under a few percent."""
    if reader not in ("loader_shuffled", "loader_sequential"):
        raise ValueError("reader must be loader_shuffled or loader_sequential")
    chunk = int(chunk_mib * MiB)
    cfg = BenchConfig(url=url, storage_options=storage_options, chunk_sizes=(chunk,), concurrency=(concurrency,),
                      total_bytes=int(total_mib * MiB), readers=("raw", reader), repeats=repeats)
    report = run_benchmark(cfg)
    raw = report.find("raw", chunk, concurrency)
    ours = report.find(reader, chunk, concurrency)
    assert raw is not None and ours is not None
    return {
        "raw_mib_per_s": raw.mib_per_s,
        "loader_mib_per_s": ours.mib_per_s,
        "ratio": ours.mib_per_s / raw.mib_per_s if raw.mib_per_s else 0.0,
        "reader": reader,
        "chunk_bytes": chunk,
        "total_bytes": ours.bytes,
        "concurrency": concurrency,
        "ttfb_s": ours.ttfb_s,
        "peak_rss_mib": ours.peak_rss_mib,
        "peak_traced_mib": ours.peak_traced_mib,
        "memory_bound_mib": ours.memory_bound_mib,
        "server": report.server,
    }


__all__ = ["PEERS", "READERS", "TARGETS", "BenchConfig", "BenchConfigError", "BenchReport", "BenchResult", "format_table", "plot", "run_benchmark",
           "run_quick_benchmark", "score", "write_json"]
