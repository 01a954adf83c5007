"""URLs and storage options: turn ``s3://``, ``gs://``, ``http(s)://``, ``file://`` or a path into a
zarr store and an fsspec filesystem, with connection pools, retries, timeouts and checksum settings
that work against AWS and S3-compatible servers alike.

Credentials are never taken as code arguments by default: the standard chains apply (environment,
``AWS_PROFILE``/``profile``, instance or IRSA role for S3; application-default credentials for GCS).
Raw fsspec keys (``key``/``secret``/``token``) can still be passed through ``extra`` for tests.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from .errors import InvalidURLError

BACKENDS = ("fsspec", "obstore")
REMOTE_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}


@dataclass(frozen=True)
class StorageOptions:
    """How to reach the storage. Every field has a safe default; unknown backends ignore S3-only ones.

    anon: unsigned requests (public buckets).
    profile: named AWS profile (else the default credential chain).
    endpoint_url: S3-compatible server (MinIO, Ceph, rclone, R2...). ``AWS_ENDPOINT_URL(_S3)`` in the
        environment works too (read by botocore itself).
    region: bucket region; None lets botocore find it.
    requester_pays: add the requester-pays header (S3) / user project (GCS).
    checksum: botocore response/request checksum mode. "when_required" is the default because
        several S3-compatible servers return whole-object checksums on ranged GETs, which makes
        botocore >= 1.36 reject valid range reads under "when_supported".
    max_connections: HTTP connection pool size; None = sized by the loader from its concurrency.
    retries: attempts per request (botocore "standard" mode) before an error is raised.
    connect_timeout, read_timeout: seconds; bound every request so a dead server cannot hang a read.
    extra: raw fsspec options merged last (e.g. ``key``/``secret`` for a test server, ``token`` for GCS).
    backend: "fsspec" (s3fs/gcsfs/aiohttp; every scheme) or "obstore" (zarr's ObjectStore on obstore's
        Rust client; s3:// only, opt-in; far less CPU per request, see ``objstore``). Under obstore,
        ``read_timeout`` bounds a whole request (connect to last byte), not each socket read, and
        ``max_connections`` is not used: requests in flight are bounded by the loader's fetch limit.
    """

    anon: bool = False
    profile: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    requester_pays: bool = False
    checksum: str = "when_required"
    max_connections: int | None = None
    retries: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    backend: str = "fsspec"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown storage backend {self.backend!r}: choose one of {list(BACKENDS)}")

    def with_connections(self, n: int) -> StorageOptions:
        """The same options with a pool of at least ``n`` connections (unless the user fixed one)."""
        if self.max_connections is not None:
            return self
        return replace(self, max_connections=max(10, n))

    @classmethod
    def coerce(cls, value: StorageOptions | Mapping[str, Any] | None) -> StorageOptions:
        """Accept a StorageOptions, a plain fsspec options dict (kept as ``extra``), or None."""
        if value is None:
            return cls()
        if isinstance(value, StorageOptions):
            return value
        if isinstance(value, Mapping):
            return cls(extra=dict(value))
        raise TypeError(f"storage_options must be StorageOptions, a dict or None, not {type(value).__name__}")


@dataclass(frozen=True)
class Location:
    """A parsed dataset URL."""

    url: str
    protocol: str  # "s3", "gcs", "http" or "file"
    path: str  # bucket/key for object stores, absolute path for files, full URL for http

    @property
    def bucket(self) -> str | None:
        return self.path.split("/", 1)[0] if self.protocol in ("s3", "gcs") else None

    @property
    def read_only(self) -> bool:
        return self.protocol == "http"

    def child(self, name: str) -> Location:
        name = name.strip("/")
        if not name:
            return self
        sep = "" if self.url.endswith("/") else "/"
        path_sep = "" if self.path.endswith("/") else "/"
        return Location(url=self.url + sep + name, protocol=self.protocol, path=self.path + path_sep + name)


def parse_url(url: str | os.PathLike[str]) -> Location:
    """Parse a dataset URL or local path; raise InvalidURLError with the accepted forms otherwise."""
    text = os.fspath(url)
    if not text:
        raise InvalidURLError("empty dataset URL: pass s3://bucket/key, gs://bucket/key, https://... or a path")
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = parsed.path if scheme == "file" else text
        return Location(url=text, protocol="file", path=os.path.abspath(os.path.expanduser(path)))
    if scheme not in REMOTE_SCHEMES:
        raise InvalidURLError(
            f"unsupported URL scheme {scheme!r} in {text!r}: use s3://, gs://, http(s):// (read-only), "
            "file:// or a local path"
        )
    protocol = REMOTE_SCHEMES[scheme]
    if protocol == "http":
        return Location(url=text, protocol="http", path=text)
    if not parsed.netloc:
        raise InvalidURLError(f"no bucket in {text!r}: expected {scheme}://BUCKET/PATH")
    path = (parsed.netloc + "/" + parsed.path.lstrip("/")).rstrip("/")
    return Location(url=f"{scheme}://{path}", protocol=protocol, path=path)


_SESSIONS: dict[tuple[Any, ...], Any] = {}


def _aio_session(profile: str | None) -> Any:
    """One aiobotocore session per (process, profile): creating a client from a fresh session re-reads
    botocore's service models (~0.3 s); a shared session makes every new filesystem cheap. Keyed by
    pid (a forked child never reuses its parent's) and by the AWS_* environment, because a session
    caches the credentials it resolved."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (os.getpid(), profile, env)
    if key not in _SESSIONS:
        import aiobotocore.session

        _SESSIONS[key] = aiobotocore.session.AioSession(profile=profile)
    return _SESSIONS[key]


def _botocore_supports(option: str) -> bool:
    try:
        from botocore.config import Config
    except ImportError:  # pragma: no cover - s3fs always brings botocore
        return False
    return option in getattr(Config, "OPTION_DEFAULTS", {})


def fsspec_options(loc: Location, opts: StorageOptions, *, asynchronous: bool = False) -> dict[str, Any]:
    """fsspec keyword arguments for ``loc``'s filesystem. A fresh (uncached) instance every time, so
    that pool sizes differ per use and nothing is shared across a fork."""
    out: dict[str, Any] = {"skip_instance_cache": True}
    if asynchronous:
        out["asynchronous"] = True
    if loc.protocol == "s3":
        if opts.anon:
            out["anon"] = True
        if asynchronous and "session" not in opts.extra:  # (a session object makes fs.to_json() fail)
            out["session"] = _aio_session(opts.profile)
        if opts.profile:
            out["profile"] = opts.profile
        if opts.requester_pays:
            out["requester_pays"] = True
        # Recent s3fs HEADs every object before a whole-object GET (to split objects over its block
        # size into parallel ranges): one extra round trip per chunk. Chunks are far below that size
        # and our concurrency is across chunks, so turn the split (and the HEAD) off.
        out["max_concurrency"] = 1
        client: dict[str, Any] = {}
        if opts.endpoint_url:
            client["endpoint_url"] = opts.endpoint_url
        if opts.region:
            client["region_name"] = opts.region
        config: dict[str, Any] = {
            "connect_timeout": opts.connect_timeout,
            "read_timeout": opts.read_timeout,
            "retries": {"max_attempts": max(1, opts.retries), "mode": "standard"},
        }
        if opts.max_connections:
            config["max_pool_connections"] = opts.max_connections
        for name in ("response_checksum_validation", "request_checksum_calculation"):
            if _botocore_supports(name):
                config[name] = opts.checksum
        out["client_kwargs"] = client
        out["config_kwargs"] = config
    elif loc.protocol == "gcs":
        if opts.anon:
            out["token"] = "anon"
        if opts.requester_pays:
            out["requester_pays"] = True
        if opts.endpoint_url:
            out["endpoint_url"] = opts.endpoint_url
    elif loc.protocol == "http":
        out["client_kwargs"] = {}
    # user-supplied raw options win, nested dicts merged one level deep
    for k, v in opts.extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    if loc.protocol == "file":
        out = {k: v for k, v in out.items() if k not in ("skip_instance_cache", "asynchronous")}
    return out


def filesystem(loc: Location, opts: StorageOptions, *, asynchronous: bool = False) -> Any:
    """An fsspec filesystem for ``loc`` (sync by default: for listing, raw GETs and writes)."""
    import fsspec

    proto = {"gcs": "gs", "http": "https" if loc.url.startswith("https") else "http"}.get(loc.protocol, loc.protocol)
    return fsspec.filesystem(proto, **fsspec_options(loc, opts, asynchronous=asynchronous))


def zarr_store(loc: Location, opts: StorageOptions, *, read_only: bool = True) -> Any:
    """A zarr 3 store for ``loc``: LocalStore for files, FsspecStore (async fsspec) otherwise."""
    from zarr.storage import FsspecStore, LocalStore

    if loc.protocol == "file":
        return LocalStore(loc.path, read_only=read_only)
    if loc.read_only and not read_only:
        raise InvalidURLError(f"{loc.url} is read-only (http/https): write to s3://, gs:// or a path instead")
    if opts.backend == "obstore":
        from .objstore import obstore_zarr_store

        return obstore_zarr_store(loc, opts, read_only=read_only)
    return FsspecStore.from_url(loc.url, storage_options=fsspec_options(loc, opts, asynchronous=True), read_only=read_only)


def close_store(store: Any, timeout: float = 5.0) -> None:
    """Close the HTTP client behind a zarr store from ``zarr_store`` now, on zarr's event loop where
    s3fs created it. Left to garbage collection, aiohttp prints "Unclosed client session/connector"."""
    client = getattr(getattr(store, "fs", None), "_s3", None)  # s3fs' aiobotocore client
    if client is None:
        return
    import asyncio

    try:
        from zarr.core.sync import _get_loop

        loop = _get_loop()
    except Exception:  # no loop (or another zarr): nothing we can close cleanly
        return
    if not loop.is_running():
        return
    with contextlib.suppress(RuntimeError):
        if asyncio.get_running_loop() is loop:  # called on the loop itself: schedule, never wait
            loop.create_task(client.close())
            return
    # bounded: this also runs at interpreter exit, which a stuck connection must not hang
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout)


def object_path(loc: Location) -> str:
    """The path of ``loc`` as the sync filesystem names it (no scheme for s3/gs/file)."""
    return loc.path
