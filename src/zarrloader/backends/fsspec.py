"""The fsspec backend: s3fs (``s3://``), gcsfs (``gs://``) and fsspec's aiohttp filesystem (``http(s)://``)
under zarr's ``FsspecStore``.

One asynchronous filesystem per backend, living on zarr's event loop; its HTTP session is closed by
``close()``, by garbage collection of the backend (scheduled on the loop, never waited for) or at
interpreter exit, so aiohttp never prints "Unclosed client session".

Retries happen in one layer only: botocore's "standard" mode makes ``retries + 1`` attempts of every
request, and s3fs's own retry loop (5 more rounds of those by default, which is how a frozen server
used to hang a read for minutes) is set to one round. Plain chunks are received with our own
``get_object`` call on the filesystem's aiobotocore client (public ``set_session``), its body read
with the response stream's public ``readinto``: the same request s3fs makes, without its copy.

``gs://`` uses gcsfs's JSON-API filesystem (``gcsfs.core.GCSFileSystem``), not the class gcsfs makes
its default since 2026 (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT``, on unless set). That class asks Google's
gRPC Storage Control API for the bucket's layout before reads and writes, does not remember a failed
answer, and waits 60 s for each: against an endpoint without that API (an emulator, a private
endpoint, a network that lets only HTTPS out) every chunk read then waits 60 s (measured:
docs/zarrloader.md, "gs:// measured"). Setting ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=true`` (or 1) in the
environment takes gcsfs's choice instead, for zonal buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import AccessDeniedError, InvalidURLError
from ..loopback_puts import send_loopback_put_bodies_at_once
from ..receive import FillReceiver, Receiver, body_errors, read_body
from ..storage import Location, StorageOptions
from .base import Backend, ErrorKind, ObjectInfo, close_on_loop

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchVersion"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401", "ExpiredToken",
                 "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
                 "InvalidClientTokenId", "UnrecognizedClientException"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "500", "502", "503", "504", "429"}
_GET_OBJECT_EXTRAS = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5", "ExpectedBucketOwner")


#: gcsfs's switch for its experimental filesystem class (see the module docstring)
GCSFS_EXPERIMENTAL = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def gcs_endpoint(opts: StorageOptions) -> str | None:
    """The GCS endpoint gcsfs would use for ``opts`` (``endpoint_url``, else ``STORAGE_EMULATOR_HOST``,
    given a scheme where it has none, as gcsfs does), or None for Google's own."""
    raw = opts.endpoint_url or opts.extra.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")
    if not raw or raw == "default":
        return None
    url = str(raw).rstrip("/")
    return url if "://" in url else f"http://{url}"


def _make_filesystem(loc: Location, kw: dict[str, Any]) -> Any:
    """The fsspec filesystem for ``loc``: for ``gs://`` gcsfs's JSON-API class unless the environment
    asks for gcsfs's experimental one by name (module docstring); else fsspec's registered class.
    (gcsfs itself reads the variable when it is imported, hence "gcsfs's choice" below.)"""
    import fsspec

    if loc.protocol == "gcs" and os.environ.get(GCSFS_EXPERIMENTAL, "").strip().lower() not in ("true", "1"):
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(**kw)
    return fsspec.filesystem(_protocol_name(loc), **kw)


def _protocol_name(loc: Location) -> str:
    return {"gcs": "gs", "http": "https" if loc.url.startswith("https") else "http"}.get(loc.protocol, loc.protocol)


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
        send_loopback_put_bodies_at_once()  # before any session is made: see loopback_puts
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
        # one client per filesystem (botocore follows region redirects itself), so close() closes all
        out["cache_regions"] = False
        client: dict[str, Any] = {}
        if opts.endpoint_url:
            client["endpoint_url"] = opts.endpoint_url
        if opts.region:
            client["region_name"] = opts.region
        # botocore trusts AWS_CA_BUNDLE (or a profile's ca_bundle) and else only its own bundle; a
        # TLS-inspecting proxy's CA usually comes as SSL_CERT_FILE, which botocore ignores
        cert = os.environ.get("SSL_CERT_FILE")
        if cert and not os.environ.get("AWS_CA_BUNDLE") and os.path.isfile(cert):
            client["verify"] = cert
        config: dict[str, Any] = {
            "connect_timeout": opts.connect_timeout,
            "read_timeout": opts.read_timeout,
            "retries": {"max_attempts": max(0, opts.retries) + 1, "mode": "standard"},
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
        out["requests_timeout"] = opts.connect_timeout + opts.read_timeout
    elif loc.protocol == "http":
        import aiohttp

        out["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout,
                                                                 sock_read=opts.read_timeout)}
    # user-supplied raw options win, nested dicts merged one level deep
    for k, v in opts.extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    if loc.protocol == "file":
        out = {k: v for k, v in out.items() if k not in ("skip_instance_cache", "asynchronous")}
    return out


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


def sync_filesystem(loc: Location, opts: StorageOptions) -> Any:
    """A synchronous fsspec filesystem for ``loc`` (fsspec's own loop thread; for code not yet on the
    backend protocol). Same options as the backend's, so the same retries and timeouts apply."""
    fs = _make_filesystem(loc, fsspec_options(loc, opts))
    if loc.protocol == "s3":
        fs.retries = 1
    return fs


def check_google_credentials(opts: StorageOptions) -> None:
    """A ``GOOGLE_APPLICATION_CREDENTIALS`` naming no readable file would have gcsfs fall back through
    every other method, with warnings, for most of a minute: say so at once instead."""
    if opts.anon or "token" in opts.extra:
        return
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path is None:
        return
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        what = "does not exist" if not os.path.exists(path) else "is not a readable file"
        raise AccessDeniedError(
            f"GOOGLE_APPLICATION_CREDENTIALS={path} {what}. Fix: point it at a service-account key file this "
            "user can read, unset it to use application-default credentials (gcloud auth application-default "
            "login, or the metadata server on GCP), or pass anon=True for public data")


class FsspecBackend(Backend):
    name: ClassVar[str] = "fsspec"
    protocols: ClassVar[tuple[str, ...]] = ("s3", "gcs", "http")

    def __init__(self, location: Location, options: StorageOptions) -> None:
        super().__init__(location, options)
        if location.protocol == "gcs":
            check_google_credentials(options)
        self._fs: Any = None
        self._finalizer: weakref.finalize | None = None
        self._http_sessions: list[Any] = []

    @property
    def endpoint(self) -> str:
        loc, opts = self.location, self.options
        if loc.protocol == "http":
            return "/".join(loc.url.split("/", 3)[:3])
        raw = dict(self.options.extra.get("client_kwargs", {}) or {}).get("endpoint_url")
        url = raw or opts.endpoint_url or self.options.extra.get("endpoint_url")
        if loc.protocol == "s3":
            url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            return f"{url or 'AWS S3'} (bucket {loc.bucket})"
        return f"{url or 'Google Cloud Storage'} (bucket {loc.bucket})"

    # -- the filesystem ------------------------------------------------------------------------------
    def filesystem(self) -> Any:
        """The backend's asynchronous fsspec filesystem (created on first use)."""
        if self._fs is None:
            kw = fsspec_options(self.location, self.options, asynchronous=True)
            if self.location.protocol == "http" and "get_client" not in kw:
                kw["get_client"] = self._get_http_client
            fs = _make_filesystem(self.location, kw)
            if self.location.protocol == "s3":
                fs.retries = 1  # one retry layer: botocore's (see the module docstring)
            self._fs = fs
            self._finalizer = weakref.finalize(self, _close_fs, fs, self.location.protocol, self._http_sessions, False)
            self._finalizer.atexit = False  # the exit hook in base closes live backends while the loop runs
        return self._fs

    async def _get_http_client(self, **kwargs: Any) -> Any:
        import aiohttp

        session = aiohttp.ClientSession(**kwargs)
        self._http_sessions.append(session)
        return session

    def _path(self, key: str = "") -> str:
        base = self.location.url if self.location.protocol == "http" else self.location.path
        base = base.rstrip("/")
        return f"{base}/{key}" if key else base

    def zarr_store(self, *, read_only: bool = True) -> Any:
        from zarr.storage import FsspecStore

        if self.location.read_only and not read_only:
            raise InvalidURLError(f"{self.location.url} is read-only (http/https): write to s3://, gs:// or a path instead")
        return FsspecStore(self.filesystem(), read_only=read_only, path=self._path())

    def receiver(self) -> Receiver | None:
        if self.location.protocol != "s3":
            return None
        return _S3Receiver(self)

    # -- objects ---------------------------------------------------------------------------------------
    async def get_async(self, key: str) -> Any:
        try:
            return await self.filesystem()._cat_file(self._path(key))
        except FileNotFoundError:
            return None

    async def put_async(self, key: str, data: bytes | memoryview) -> None:
        await self.filesystem()._pipe_file(self._path(key), bytes(data))

    async def delete_async(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await self.filesystem()._rm_file(self._path(key))

    async def list_async(self, prefix: str = "") -> list[ObjectInfo]:
        fs = self.filesystem()
        root = self._path()
        try:
            found = await fs._find(self._path(prefix), detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            if info.get("type", "file") != "file":
                continue
            rel = path[len(fs._strip_protocol(root)):].lstrip("/") if path.startswith(fs._strip_protocol(root)) else path
            out.append(ObjectInfo(rel, int(info.get("size") or 0)))
        return sorted(out, key=lambda o: o.key)

    async def size_async(self, key: str) -> int | None:
        try:
            info = await self.filesystem()._info(self._path(key))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type", "file") == "file" else None

    async def bucket_exists_async(self) -> bool | None:
        if self.location.bucket is None:
            return None
        return bool(await self.filesystem()._exists(self.location.bucket))

    # -- errors ---------------------------------------------------------------------------------------
    def classify(self, exc: BaseException) -> ErrorKind:
        return classify_fsspec_error(exc)

    # -- closing ----------------------------------------------------------------------------------------
    def close(self) -> None:
        super().close()
        fin, self._finalizer, self._fs = self._finalizer, None, None
        if fin is not None:
            detached = fin.detach()
            if detached is not None:
                _, func, args, _ = detached
                func(*args[:3], True)
        self._http_sessions = []


def _close_fs(fs: Any, protocol: str, http_sessions: list[Any], wait: bool) -> None:
    closers: list[Any] = []
    if protocol == "s3":
        try:
            client = fs.s3  # public property; raises until a session was set up
        except Exception:
            client = None
        if client is not None:
            closers.append(client.close)
    elif protocol == "gcs":
        try:
            session = fs.session  # public property; raises until a session was set up
        except Exception:
            session = None
        if session is not None:
            closers.append(session.close)
    closers.extend(s.close for s in http_sessions if not s.closed)
    close_on_loop(closers, wait)


class _S3Receiver(FillReceiver):
    """Plain chunks of an s3fs-backed store, received into the caller's memory (see ``receive``)."""

    def __init__(self, backend: FsspecBackend) -> None:
        self.backend = backend
        bucket, _, prefix = backend.location.path.partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.kwargs: dict[str, Any] = {"RequestPayer": "requester"} if backend.options.requester_pays else {}
        extra = backend.options.extra.get("s3_additional_kwargs") or {}
        self.kwargs.update({k: v for k, v in extra.items() if k in _GET_OBJECT_EXTRAS})
        self.attempts = max(0, backend.options.retries) + 1
        self.body_errors = body_errors()

    async def __call__(self, key: str, out: memoryview) -> bool:
        from botocore.exceptions import ClientError

        client = await self.backend.filesystem().set_session()
        name = f"{self.prefix}/{key}" if self.prefix else key
        for attempt in range(self.attempts):
            try:
                # botocore retries the request itself ("standard" mode, retries + 1 attempts)
                resp = await client.get_object(Bucket=self.bucket, Key=name, **self.kwargs)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    return False
                raise
            try:
                await read_body(resp, out, f"s3://{self.bucket}/{name}")
                return True
            except self.body_errors:
                # a body cut off mid-way: the request again, as s3fs retries its own reads
                if attempt == self.attempts - 1:
                    raise
                await asyncio.sleep(min(1.7**attempt * 0.1, 15))
        raise AssertionError("unreachable")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    err = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(err.get("Code", ""))
    status = (response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    return code or (str(status) if status else "")


def classify_fsspec_error(exc: BaseException) -> ErrorKind:
    """Classify exceptions of botocore, aiohttp, s3fs, gcsfs, google-auth and fsspec by their classes."""
    try:
        import botocore.exceptions as bce

        if isinstance(exc, bce.ClientError):
            code = _error_code(exc)
            if code in _NOT_FOUND_CODES:
                return ErrorKind.NOT_FOUND
            if code in _DENIED_CODES:
                return ErrorKind.DENIED
            if code in _TRANSIENT_CODES:
                return ErrorKind.TRANSIENT
            return ErrorKind.OTHER
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.ProfileNotFound,
                            bce.CredentialRetrievalError, bce.UnauthorizedSSOTokenError, bce.SSOTokenLoadError,
                            bce.TokenRetrievalError)):
            return ErrorKind.DENIED
        if isinstance(exc, bce.ResponseStreamingError):
            return ErrorKind.TRANSIENT
        if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
                            bce.ConnectionClosedError, bce.ProxyConnectionError, bce.SSLError, bce.HTTPClientError)):
            return ErrorKind.UNAVAILABLE
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientResponseError):
            return _status_kind(exc.status)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return ErrorKind.TRANSIENT
        if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
            return ErrorKind.UNAVAILABLE
    except ImportError:  # pragma: no cover - fsspec's http and s3fs bring aiohttp
        pass
    try:
        from gcsfs.retry import HttpError

        if isinstance(exc, HttpError):
            return _status_kind(int(getattr(exc, "code", 0) or 0))
    except ImportError:
        pass
    try:
        import google.auth.exceptions as gae

        if isinstance(exc, gae.TransportError):
            return ErrorKind.UNAVAILABLE
        if isinstance(exc, (gae.DefaultCredentialsError, gae.RefreshError)):
            return ErrorKind.DENIED
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        if isinstance(exc, FSTimeoutError):
            return ErrorKind.UNAVAILABLE
    except ImportError:  # pragma: no cover
        pass
    return classify_os_error(exc)


def classify_os_error(exc: BaseException) -> ErrorKind:
    """The standard library's exceptions (what s3fs and fsspec translate storage errors into)."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ErrorKind.NOT_FOUND
    if isinstance(exc, PermissionError):
        return ErrorKind.DENIED
    if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.OTHER


def _status_kind(status: int) -> ErrorKind:
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status in (401, 403):
        return ErrorKind.DENIED
    if status == 429 or 500 <= status < 600:
        return ErrorKind.TRANSIENT
    return ErrorKind.OTHER
