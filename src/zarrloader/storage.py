"""URLs and storage options: ``StorageOptions`` (how to reach the storage) and ``parse_url`` (``s3://``,
``gs://``, ``http(s)://``, ``file://`` or a path). What reaches the storage is a backend
(``zarrloader.backends``); the functions at the end of this module are thin compatibility wrappers
over them for code written before backends were modules.

Credentials are never taken as code arguments by default: the standard chains apply (environment,
``AWS_PROFILE``/``profile``, instance or IRSA role for S3; application-default credentials for GCS).
Raw fsspec keys (``key``/``secret``/``token``) can still be passed through ``extra`` for tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from .errors import InvalidURLError

#: what ``StorageOptions(backend=...)`` accepts besides None (the fastest for the scheme); local paths
#: always use the local-files backend
BACKENDS = ("obstore", "fsspec")
REMOTE_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}


@dataclass(frozen=True)
class StorageOptions:
    """How to reach the storage. Every field has a safe default; backends ignore fields of other services.

    anon: unsigned requests (public buckets).
    profile: named AWS profile from the shared config/credentials files (else the default chain).
    endpoint_url: S3-compatible server (MinIO, Ceph, rclone, R2...). ``AWS_ENDPOINT_URL(_S3)`` in the
        environment (or the profile's endpoint) works too, on every backend.
    region: bucket region; None: from ``AWS_REGION``/``AWS_DEFAULT_REGION`` or the profile, else found.
    requester_pays: add the requester-pays header (S3) / user project (GCS).
    checksum: botocore response/request checksum mode. "when_required" is the default because
        several S3-compatible servers return whole-object checksums on ranged GETs, which makes
        botocore >= 1.36 reject valid range reads under "when_supported".
    max_connections: HTTP connection pool size; None = sized by the loader from its concurrency.
    retries: retries after the first attempt of a request (so ``retries + 1`` attempts).
    connect_timeout, read_timeout: seconds to open a connection, and to wait for the next bytes of an
        answer. Every storage operation ends, in error if need be, within ``connect_timeout +
        read_timeout x (retries + 1)`` plus 2 s (``backends.Deadline``): 67 s with the defaults.
    extra: raw fsspec options merged last (e.g. ``key``/``secret`` for a test server, ``token`` for GCS).
    backend: None (default): the fastest backend for the scheme: "obstore" for s3:// and gs:// (zarr's
        ObjectStore on obstore's Rust clients), "fsspec" for http(s)://; local paths always use plain
        files. "fsspec" or "obstore" to choose (see ``zarrloader.backends``).
    """

    anon: bool = False
    profile: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    requester_pays: bool = False
    checksum: str = "when_required"
    max_connections: int | None = None
    retries: int = 2
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"unknown storage backend {self.backend!r}: choose one of {list(BACKENDS)}, "
                             "or None for the fastest for the URL's scheme")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"StorageOptions.{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"StorageOptions.retries must be an integer >= 0, got {self.retries!r}")

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


# -- compatibility wrappers over the backends (code written before backends were modules) ------------------
def fsspec_options(loc: Location, opts: StorageOptions, *, asynchronous: bool = False) -> dict[str, Any]:
    """fsspec keyword arguments for ``loc``'s filesystem (see ``backends.fsspec.fsspec_options``)."""
    from .backends.fsspec import fsspec_options as options

    return options(loc, opts, asynchronous=asynchronous)


def filesystem(loc: Location, opts: StorageOptions, *, asynchronous: bool = False) -> Any:
    """An fsspec filesystem for ``loc`` (sync by default: for listing, raw GETs and writes), with the
    same retries and timeouts as the fsspec backend. New code: ``backends.open_backend``."""
    if asynchronous:
        from .backends.fsspec import FsspecBackend

        return FsspecBackend(loc, opts).filesystem() if loc.protocol != "file" else _local_fs()
    if loc.protocol == "file":
        return _local_fs()
    from .backends.fsspec import sync_filesystem

    return sync_filesystem(loc, opts)


def _local_fs() -> Any:
    import fsspec

    return fsspec.filesystem("file")


# stores made by zarr_store(), so that close_store() finds the backend that owns each one
_OWNERS: dict[int, tuple[Any, Any]] = {}


def zarr_store(loc: Location, opts: StorageOptions, *, read_only: bool = True) -> Any:
    """A zarr 3 store for ``loc`` from the backend ``opts`` choose (``backends.open_backend``); close it
    with ``close_store``. New code: keep the backend and call ``backend.close()``."""
    import weakref

    from .backends import open_backend

    backend = open_backend(loc, opts, writing=not read_only)
    store = backend.zarr_store(read_only=read_only)
    key = id(store)
    _OWNERS[key] = (weakref.ref(store), backend)
    weakref.finalize(store, _OWNERS.pop, key, None)
    return store


def close_store(store: Any, timeout: float = 5.0) -> None:
    """Close the client behind a store from ``zarr_store`` now (bounded wait; also safe at exit)."""
    entry = _OWNERS.pop(id(store), None)
    if entry is not None and entry[0]() is store:
        entry[1].close()


def object_path(loc: Location) -> str:
    """The path of ``loc`` as the sync filesystem names it (no scheme for s3/gs/file)."""
    return loc.path
