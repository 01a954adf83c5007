"""Peers for ``zarrloader bench --peers``: the readers a user would pick instead of our loader, run over
the same chunk objects in the same run (names are part of the JSON contract).

  tensorstore_sequential  tensorstore (zarr3 driver, its s3/file kvstore, a 100 MB cache pool as in
                          its docs' examples): batches of rows in storage order, ``concurrency`` reads
                          in flight
  tensorstore_shuffled    the same, each batch a random set of rows (``oindex`` read), one batch in
                          flight; capped by time and extrapolated (re-reads chunks a lot)
  torch_chunked           torch DataLoader, 4 workers (fork), one chunk per item, chunks shuffled;
                          zarr over s3fs opened inside each worker (fsspec is not fork-safe)
  torch_per_sample        torch DataLoader, 4 workers, one ``z[i]`` per sample, shuffled: the common
                          hand-written loader; capped by time and extrapolated

Each ``run_*`` returns ``PeerRun``; the CPU of the DataLoader's worker processes is counted by the
caller (they end, and are waited for, inside the timed region: ``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.tensorstore_reads import scoped_environ
from .storage import Location, StorageOptions

PEERS = ("tensorstore_sequential", "tensorstore_shuffled", "torch_chunked", "torch_per_sample")
#: peers that read everything (repeated like the loaders); the others are capped by time
FULL_PEERS = ("tensorstore_sequential", "torch_chunked")
TORCH_WORKERS = 4
TENSORSTORE_CACHE_BYTES = 100_000_000
#: DataLoader's own deadline for one batch from a worker (it raises instead of waiting forever)
WORKER_TIMEOUT_S = 120.0


@dataclass
class PeerRun:
    nbytes: int
    nsamples: int
    secs: float
    in_flight: int
    ttfb: float | None = None
    extrapolated: bool = False
    note: str = ""


def unavailable(name: str) -> str | None:
    """Why peer ``name`` cannot run here (None: it can)."""
    if name.startswith("tensorstore"):
        try:
            import tensorstore  # noqa: F401
        except ImportError:
            return "tensorstore not installed (pip install tensorstore, or the [bench] group)"
    return None


# -- tensorstore -----------------------------------------------------------------------------------
def tensorstore_spec(loc: Location, opts: StorageOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensorstore spec, environment variables its credential provider reads) for the zarr array at ``loc``."""
    kv, env = tensorstore_kvstore_spec(loc, opts)
    spec = {"driver": "zarr3", "kvstore": kv,
            "context": {"cache_pool": {"total_bytes_limit": TENSORSTORE_CACHE_BYTES}}}
    return spec, env


def tensorstore_kvstore_spec(loc: Location, opts: StorageOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensorstore kvstore spec, environment variables it reads at open and first request) for the
    objects under ``loc``: its ``s3`` driver (endpoint, region and credentials from ``opts``), its ``gcs``
    driver (the endpoint, which it takes from the environment only; credentials as Google's default
    chain finds them) or ``file``."""
    extra = dict(opts.extra)
    env: dict[str, str] = {}
    if loc.protocol == "file":
        kv: dict[str, Any] = {"driver": "file", "path": loc.path.rstrip("/") + "/"}
    elif loc.protocol == "s3":
        bucket, _, path = loc.path.partition("/")
        ck = dict(extra.get("client_kwargs") or {})
        kv = {"driver": "s3", "bucket": bucket, "path": path.strip("/") + "/" if path.strip("/") else ""}
        endpoint = ck.get("endpoint_url") or extra.get("endpoint_url") or opts.endpoint_url
        if endpoint:
            kv["endpoint"] = str(endpoint)
        region = ck.get("region_name") or opts.region
        if region:
            kv["aws_region"] = str(region)
        if opts.anon or extra.get("anon"):
            kv["aws_credentials"] = {"type": "anonymous"}
        elif extra.get("key"):
            kv["aws_credentials"] = {"type": "environment"}
            env = {"AWS_ACCESS_KEY_ID": str(extra["key"]), "AWS_SECRET_ACCESS_KEY": str(extra.get("secret") or "")}
        elif opts.profile:
            kv["aws_credentials"] = {"type": "profile", "profile": opts.profile}
    elif loc.protocol == "gcs":
        bucket, _, path = loc.path.partition("/")
        kv = {"driver": "gcs", "bucket": bucket, "path": path.strip("/") + "/" if path.strip("/") else ""}
        from .backends.fsspec import gcs_endpoint

        endpoint = gcs_endpoint(opts)
        if endpoint:  # an emulator or a private endpoint: tensorstore's gcs driver reads it from here
            env["TENSORSTORE_GCS_HTTP_URL"] = endpoint
    else:
        raise ValueError(f"tensorstore: no kvstore for {loc.url}")
    return kv, env


class PeerStalled(RuntimeError):
    """A peer gave no answer within its deadline (the bench reports the row as stalled)."""


def ts_result(fut: Any, timeout: float, what: str) -> Any:
    """A tensorstore future's result within ``timeout`` s, else cancel it and raise ``PeerStalled``:
    tensorstore's own requests have no overall deadline, and its shuffled reads were seen to stall."""
    try:
        return fut.result(timeout=max(0.1, timeout))
    except TimeoutError:
        fut.cancel()
        raise PeerStalled(f"{what}: no answer within {timeout:.0f} s") from None


def open_tensorstore(loc: Location, opts: StorageOptions, deadline_s: float = 30.0) -> Any:
    import tensorstore as ts

    spec, env = tensorstore_spec(loc, opts)
    with scoped_environ(env):
        return ts_result(ts.open(spec, read=True), deadline_s, f"tensorstore open of {loc.url}")


def run_tensorstore_sequential(arr: Any, batch: int, concurrency: int, deadline_s: float = 30.0) -> PeerRun:
    n = int(arr.shape[0])
    t0 = time.perf_counter()
    ttfb = None
    nbytes = 0
    pending: list[Any] = []
    starts = list(range(0, n, batch))
    nxt = 0
    while nxt < len(starts) or pending:
        while nxt < len(starts) and len(pending) < concurrency:
            a = starts[nxt]
            pending.append(arr[a : min(n, a + batch)].read())
            nxt += 1
        got = np.asarray(ts_result(pending.pop(0), deadline_s, f"tensorstore read of {batch} rows"))
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        nbytes += got.nbytes
    return PeerRun(nbytes, n, time.perf_counter() - t0, concurrency, ttfb,
                   note=f"batches of {batch} rows, {concurrency} reads in flight, {TENSORSTORE_CACHE_BYTES // 10**6} MB cache")


def run_tensorstore_shuffled(arr: Any, batch: int, max_seconds: float, grace_s: float = 10.0) -> PeerRun:
    """Random batches until ``max_seconds``; a batch that takes longer than the time left plus
    ``grace_s`` ends the run as stalled (with what was read so far)."""
    n = int(arr.shape[0])
    order = np.random.default_rng(0).permutation(n)
    t0 = time.perf_counter()
    ttfb = None
    nbytes = nsamples = 0
    for start in range(0, n, batch):
        idx = np.sort(order[start : start + batch])
        left = max_seconds - (time.perf_counter() - t0) + grace_s
        try:
            got = np.asarray(ts_result(arr.oindex[idx].read(), left, f"tensorstore shuffled batch {start // batch}"))
        except PeerStalled as exc:
            secs = time.perf_counter() - t0
            return PeerRun(nbytes, nsamples, secs, 1, ttfb, extrapolated=True,
                           note=f"STALLED ({exc}); {nsamples} of {n} samples read in {secs:.0f} s")
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        nbytes += got.nbytes
        nsamples += len(idx)
        if time.perf_counter() - t0 > max_seconds:
            break
    return PeerRun(nbytes, nsamples, time.perf_counter() - t0, 1, ttfb, extrapolated=nsamples < n,
                   note=f"{nsamples} of {n} samples read" + (", rate extrapolated" if nsamples < n else ""))


# -- torch DataLoader ------------------------------------------------------------------------------
class _ZarrItems:
    """A map-style dataset over one zarr array, opened lazily in the process that reads (zarr on s3fs,
    the usual choice; fsspec filesystems must not cross a fork)."""

    def __init__(self, loc: Location, opts: StorageOptions, rows_per_item: int, nrows: int) -> None:
        self.loc, self.opts = loc, dataclasses.replace(opts, backend="fsspec")
        self.rows, self.nrows = rows_per_item, nrows
        self._arr: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return -(-self.nrows // self.rows)

    def _array(self) -> Any:
        if self._arr is None or self._pid != os.getpid():
            import multiprocessing.util

            import zarr

            from .backends import open_backend

            backend = open_backend(self.loc, self.opts)
            # DataLoader workers end through multiprocessing (no atexit): close the client there, or
            # aiohttp prints "Unclosed client session" from every worker
            multiprocessing.util.Finalize(None, backend.close, exitpriority=10)
            self._arr, self._pid = zarr.open_array(store=backend.zarr_store(), mode="r"), os.getpid()
        return self._arr

    def __getitem__(self, i: int) -> Any:
        import torch

        a = i * self.rows
        data = self._array()[a : min(self.nrows, a + self.rows)]
        return torch.from_numpy(np.ascontiguousarray(data if self.rows > 1 else data[0]))


def _quiet_inherited_clients(_worker_id: int) -> None:
    """DataLoader worker init: a forked worker inherits the parent's s3fs clients, which fsspec drops in
    the child; their aiohttp sessions belong to the parent, so the "Unclosed client session" that
    asyncio logs for each of them in the worker is noise (the parent closes its own)."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def run_torch(loc: Location, opts: StorageOptions, nrows: int, chunk_rows: int, batch: int, per_sample: bool,
              max_seconds: float) -> PeerRun:
    import torch.utils.data as tud

    ds = _ZarrItems(loc, opts, 1 if per_sample else chunk_rows, nrows)
    # 4 workers on fewer cores is the point (what users run): torch's advice about it is noise here
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    dl = tud.DataLoader(ds, batch_size=batch if per_sample else None, shuffle=True, num_workers=TORCH_WORKERS,
                        generator=__import__("torch").Generator().manual_seed(0),
                        multiprocessing_context="fork", timeout=WORKER_TIMEOUT_S,
                        worker_init_fn=_quiet_inherited_clients)
    t0 = time.perf_counter()
    ttfb = None
    nbytes = nsamples = 0
    it = iter(dl)
    try:
        for b in it:
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            nbytes += b.numel() * b.element_size()
            nsamples += len(b)
            if per_sample and time.perf_counter() - t0 > max_seconds:
                break
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:  # join the workers now, inside the timed region: their CPU is counted
            shutdown()
        del it
    secs = time.perf_counter() - t0
    what = (f"{TORCH_WORKERS} workers, batch {batch}, one z[i] per sample" if per_sample
            else f"{TORCH_WORKERS} workers, one chunk ({chunk_rows} rows) per item")
    extrapolated = nsamples < nrows
    note = what + (f"; {nsamples} of {nrows} samples read, rate extrapolated" if extrapolated else "")
    return PeerRun(nbytes, nsamples, secs, TORCH_WORKERS, ttfb, extrapolated=extrapolated, note=note)


__all__ = ["FULL_PEERS", "PEERS", "PeerRun", "PeerStalled", "open_tensorstore", "run_tensorstore_sequential",
           "run_tensorstore_shuffled", "run_torch", "tensorstore_spec", "unavailable"]
