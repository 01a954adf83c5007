"""S3 Zarr read benchmark of the smoke suite: the image's loader against raw parallel GETs of the
same chunk objects, in the same run, on the same server.

- Data: an uncompressed uint32 array written by zarr-python, one chunk object per row, so the bytes
  the loader delivers equal the bytes raw GETs move.
- Yardstick: the fastest raw client measured, not a convenient one: obstore (Rust, off the GIL) and
  s3fs (aiobotocore), each with the same requests in flight; the ratio is against the faster.
- Reader: ``zarrloader.make_loader`` (its public API) in storage order by default (``SMOKE_S3_READER=
  loader_shuffled`` for shuffled reads); the first run's bytes are checked against what was written.

Target: ``SMOKE_S3_URL`` (standard AWS credential chain; ``SMOKE_S3_ANON=1`` for anonymous access;
``SMOKE_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL`` for a custom endpoint), else an embedded
``rclone serve s3`` on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 * 1024
MIN_RATIO_ENV = "SMOKE_S3_MIN_RATIO"
DEFAULT_MIN_RATIO = 0.7
ATTEMPTS = 3  # measurements at most, while below the floor: a noisy neighbour must not fail an image
READER_ENV = "SMOKE_S3_READER"
READERS = ("loader_sequential", "loader_shuffled")
DEFAULT_READER = "loader_sequential"
CONCURRENCY = 16


@dataclass
class S3BenchResult:
    reader: str
    url: str
    embedded: bool
    objects: int
    nbytes: int
    raw_mib_per_s: float  # the fastest raw client's median
    reader_mib_per_s: float
    ratio: float
    raw_client: str = ""
    raw_clients_mib_per_s: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    def figures(self) -> dict[str, Any]:
        d = asdict(self)
        head = {k: round(d.pop(k), 3) for k in ("ratio", "raw_mib_per_s", "reader_mib_per_s")}
        d["raw_clients_mib_per_s"] = {k: round(v, 1) for k, v in d["raw_clients_mib_per_s"].items()}
        return {**head, **d}


def min_ratio(env: dict[str, str] | None = None) -> float:
    value = (env if env is not None else os.environ).get(MIN_RATIO_ENV, "")
    try:
        return float(value) if value else DEFAULT_MIN_RATIO
    except ValueError as exc:
        raise ValueError(f"{MIN_RATIO_ENV}={value!r} is not a number (e.g. 0.7)") from exc


def reader_name(env: dict[str, str] | None = None) -> str:
    value = (env if env is not None else os.environ).get(READER_ENV) or DEFAULT_READER
    if value not in READERS:
        raise ValueError(f"{READER_ENV}={value!r}: choose one of {', '.join(READERS)}")
    return value


def storage_options_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """fsspec-style options for SMOKE_S3_URL: credentials come from the standard AWS chain."""
    env = env if env is not None else dict(os.environ)
    opts: dict[str, Any] = {}
    if env.get("SMOKE_S3_ANON", "").lower() in ("1", "true", "yes"):
        opts["anon"] = True
    endpoint = env.get("SMOKE_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
        # S3-compatible servers may return whole-object checksums on ranged GETs
        opts["config_kwargs"] = {"response_checksum_validation": "when_required",
                                 "request_checksum_calculation": "when_required"}
    return opts


def check_url(url: str) -> str:
    """SMOKE_S3_URL must be an s3:// URL with a bucket; say so instead of reading it as a path."""
    if not url.startswith("s3://") or not url[5:].strip("/"):
        raise ValueError(f"SMOKE_S3_URL={url!r} is not an S3 URL: use s3://BUCKET[/PREFIX] (credentials from the "
                         "standard AWS chain, SMOKE_S3_ENDPOINT_URL for an S3-compatible server), or unset it to use "
                         "the embedded server")
    return url


# -- data -------------------------------------------------------------------------------------------
def write_dataset(url: str, storage_options: dict[str, Any], *, chunks: int, chunk_mib: int) -> None:
    import zarr
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, storage_options=storage_options, read_only=False)
    row = chunk_mib * MIB // 4
    arr = zarr.create_array(store=store, shape=(chunks, row), chunks=(1, row), dtype="uint32",
                            compressors=None, overwrite=True)
    arr[:] = expected_data(chunks, row)


def expected_data(chunks: int, row: int) -> Any:
    import numpy as np

    return np.arange(chunks * row, dtype=np.uint32).reshape(chunks, row)


def chunk_keys(url: str, storage_options: dict[str, Any]) -> list[str]:
    """Every chunk object's key (relative to the bucket), metadata excluded."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage_options)
    prefix = url.removeprefix("s3://")
    keys = [p.split("/", 1)[1] for p in fs.find(prefix) if not p.endswith(("zarr.json", ".zarray", ".zattrs"))]
    if not keys:
        raise RuntimeError(f"no chunk objects found under {url}")
    return keys


# -- raw clients (the yardstick) ----------------------------------------------------------------------
def _obstore_get(bucket: str, keys: list[str], opts: dict[str, Any]) -> Callable[[], int]:
    from datetime import timedelta

    import obstore
    from obstore.store import S3Store

    endpoint = (opts.get("client_kwargs") or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")
    config: dict[str, Any] = {}
    if endpoint:
        config["endpoint"] = endpoint
    for ours, theirs in (("key", "access_key_id"), ("secret", "secret_access_key"), ("token", "token")):
        if opts.get(ours):
            config[theirs] = opts[ours]
    if opts.get("anon"):
        config["skip_signature"] = True
    client = {"timeout": timedelta(seconds=60), "connect_timeout": timedelta(seconds=10)}
    if endpoint and endpoint.startswith("http://"):
        client["allow_http"] = True
    store = S3Store(bucket, config=config, client_options=client)
    loop = asyncio.new_event_loop()

    async def run(some: list[str]) -> int:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(k: str) -> int:
            async with sem:
                return len(await (await obstore.get_async(store, k)).bytes_async())

        return sum(await asyncio.gather(*(one(k) for k in some)))

    loop.run_until_complete(run(keys[:1]))  # connection set up outside the timed region
    return lambda: loop.run_until_complete(run(keys))


def _s3fs_get(bucket: str, keys: list[str], opts: dict[str, Any]) -> Callable[[], int]:
    import fsspec.asyn
    import s3fs

    config = {**(opts.get("config_kwargs") or {}), "max_pool_connections": CONCURRENCY + 4}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **{**opts, "config_kwargs": config})
    fs.cat_file(f"{bucket}/{keys[0]}", start=0, end=1)

    async def run() -> int:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(k: str) -> int:
            async with sem:
                return len(await fs._cat_file(f"{bucket}/{k}"))

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    return lambda: int(fsspec.asyn.sync(fs.loop, run))


RAW_CLIENTS: dict[str, Callable[[str, list[str], dict[str, Any]], Callable[[], int]]] = {
    "obstore": _obstore_get, "s3fs": _s3fs_get,
}


# -- the loader ---------------------------------------------------------------------------------------
def loader_read(url: str, storage_options: dict[str, Any], reader: str, check: Any = None) -> tuple[int, float]:
    """One epoch of the image's loader; bytes delivered and seconds (metadata opened beforehand)."""
    import numpy as np

    from zarrloader import ZarrSource, make_loader

    source = ZarrSource(url, storage_options=storage_options)
    try:
        loader = make_loader(source, batch_size=4, shuffle=reader == "loader_shuffled", seed=0,
                             concurrency=CONCURRENCY, pin_memory=False, return_index=check is not None)
        loader.num_samples()  # opens metadata: not part of the timed read
        nbytes, parts = 0, []
        t = time.perf_counter()
        for batch in loader:
            data = batch[""]
            nbytes += data.numel() * data.element_size()
            if check is not None:
                parts.append((batch["index"].numpy(), data.numpy().copy()))
        seconds = time.perf_counter() - t
    finally:
        source.close()
    if check is not None:
        index = np.concatenate([i for i, _ in parts])
        got = np.concatenate([d for _, d in parts])[np.argsort(index)]
        if not np.array_equal(got, check):
            raise AssertionError(f"the loader read back different data from what was written to {url}")
    return nbytes, seconds


def measure(url: str, storage_options: dict[str, Any], *, chunks: int, chunk_mib: int, repeats: int,
            reader: str, embedded: bool) -> S3BenchResult:
    """Raw clients and the loader ``repeats`` times each, interleaved; medians count."""
    bucket = url.removeprefix("s3://").split("/", 1)[0]
    keys = chunk_keys(url, storage_options)
    raw_runs: dict[str, list[float]] = {}
    raw_fns: dict[str, Callable[[], int]] = {}
    skipped: list[str] = []
    for name, make in RAW_CLIENTS.items():
        try:
            raw_fns[name] = make(bucket, keys, storage_options)
        except ImportError as exc:  # a client missing from this image: say so, measure the others
            skipped.append(f"{name}: {exc}")
    if not raw_fns:
        raise RuntimeError(f"no raw S3 client could be set up ({'; '.join(skipped)})")
    expect = expected_data(chunks, chunk_mib * MIB // 4)
    reader_runs: list[float] = []
    nbytes = 0
    for i in range(repeats):
        for name, fn in raw_fns.items():
            t = time.perf_counter()
            got = fn()
            raw_runs.setdefault(name, []).append(got / MIB / (time.perf_counter() - t))
            nbytes = got
        n, secs = loader_read(url, storage_options, reader, check=expect if i == 0 else None)
        reader_runs.append(n / MIB / secs)
    medians = {k: statistics.median(v) for k, v in raw_runs.items()}
    fastest = max(medians, key=lambda k: medians[k])
    ours = statistics.median(reader_runs)
    note = f"runs: reader {', '.join(f'{x:.0f}' for x in reader_runs)} MiB/s"
    if skipped:
        note += f"; raw clients not measured: {'; '.join(skipped)}"
    return S3BenchResult(reader=f"zarrloader ({reader})", url=url, embedded=embedded, objects=len(keys),
                         nbytes=nbytes, raw_mib_per_s=medians[fastest], reader_mib_per_s=ours,
                         ratio=ours / medians[fastest], raw_client=fastest, raw_clients_mib_per_s=medians, note=note)


def run_benchmark(url: str, storage_options: dict[str, Any], *, embedded: bool, threshold: float | None = None,
                  chunks: int = 32, chunk_mib: int = 4, repeats: int = 3) -> S3BenchResult:
    """Write the dataset, then measure; a measurement below ``threshold`` is repeated (up to ATTEMPTS)
    and the best kept: a noisy neighbour must not fail an image, a slow reader still does."""
    reader = reader_name()
    write_dataset(url, storage_options, chunks=chunks, chunk_mib=chunk_mib)
    runs: list[S3BenchResult] = []
    while len(runs) < ATTEMPTS:
        runs.append(measure(url, storage_options, chunks=chunks, chunk_mib=chunk_mib, repeats=repeats,
                            reader=reader, embedded=embedded))
        if threshold is None or runs[-1].ratio >= threshold:
            break
    best = max(runs, key=lambda r: r.ratio)
    if len(runs) > 1:
        best.note = f"{best.note}; best of {len(runs)} measurements (ratios {', '.join(f'{r.ratio:.2f}' for r in runs)})"
    return best


def unique_prefix(base: str) -> str:
    return f"{check_url(base).rstrip('/')}/smoke-{uuid.uuid4().hex[:8]}"


def cleanup(url: str, storage_options: dict[str, Any]) -> None:
    """Remove what this run wrote (its own unique prefix only); best effort on read-only buckets."""
    import s3fs

    with contextlib.suppress(Exception):
        s3fs.S3FileSystem(skip_instance_cache=True, **storage_options).rm(url.removeprefix("s3://"), recursive=True)
