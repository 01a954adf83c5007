"""The obstore backend (the default for ``s3://`` and ``gs://``): zarr's ``ObjectStore`` over obstore's Rust
clients (``S3Store``; ``GCSStore`` for gs://, configured in ``obstore_gcs``).

Why: with s3fs every HTTP request is parsed and signed by aiobotocore on one Python thread that holds
the GIL; obstore does the HTTP work in Rust threads without it, at less than half the client CPU per
byte (see docs/zarrloader.md, "Backends", for the figures).

Everything the fsspec backend resolves through botocore is resolved through botocore here too, so
the two behave alike: credentials from botocore's own chain (environment, named profiles from the
shared config and credentials files, SSO, assume-role, ``credential_process``, web identity, ECS and
instance roles) handed to obstore as a credential provider; the region and endpoint from the options,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL(_S3)`` and the profile (plain ``http://``
endpoints allowed); TLS trust from ``AWS_CA_BUNDLE`` (or the profile's ``ca_bundle``), ``SSL_CERT_FILE``
and the system CA bundle, added to obstore's own roots.

Servers that answer a range request with status 200 (``rclone serve s3`` sends the right bytes, but
not the 206 that obstore insists on) get ranges cut from whole objects, each fetched once per read
(``RangeSafeObjectStore``). obstore's runtime does not survive ``fork``: a process forked after its
parent used obstore gets the fsspec backend by default, or a clear error when obstore was asked for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
import warnings
from typing import Any, ClassVar

from ..errors import AccessDeniedError, BackendOptionError, ChunkReadError
from ..receive import ObjectSizeError, Receiver
from ..storage import Location, StorageOptions
from . import tensorstore_reads
from .base import Backend, ErrorKind, ObjectInfo
from .fsspec import classify_os_error
from .tensorstore_reads import TensorstoreReads, open_reads

#: botocore settings whose obstore counterpart comes from the StorageOptions fields (or none is needed)
_MAPPED_CONFIG = {"response_checksum_validation", "request_checksum_calculation", "connect_timeout", "read_timeout",
                  "retries", "max_pool_connections"}
#: fsspec-only keys that callers pass through and that mean nothing here
_FSSPEC_ONLY = ("skip_instance_cache", "max_concurrency", "session", "asynchronous", "cache_regions")
#: ranges cut from whole objects are kept for re-use up to this many bytes (servers without 206 only)
WHOLE_OBJECT_CACHE_BYTES = 64 << 20

_RUNTIME_PID: list[int] = []  # the process whose obstore runtime (Rust threads) we started
_FORK_WARNED: list[int] = []


def forked_after_use() -> bool:
    """True in a process forked after its parent used obstore: the inherited runtime has no threads,
    so the first request would hang forever."""
    return bool(_RUNTIME_PID) and _RUNTIME_PID[0] != os.getpid()


FORK_FIX = ("Fix: start workers with the 'spawn' or 'forkserver' method, create loaders only in the workers, "
            "or use backend='fsspec'")


def parse_extra(loc: Location, opts: StorageOptions) -> dict[str, Any]:
    """What of ``opts.extra`` (raw fsspec/s3fs options) obstore can honour, as
    ``{"endpoint", "region", "anon", "requester_pays", "key", "secret", "token", "client_options"}``
    (gs://: ``obstore_gcs.parse_extra``); raises ``BackendOptionError`` naming anything else."""
    if loc.protocol == "gcs":
        from . import obstore_gcs

        return obstore_gcs.parse_extra(loc, opts)
    if loc.protocol != "s3":
        raise BackendOptionError(
            f"backend='obstore' supports s3:// and gs:// URLs here, not {loc.url!r}. Fix: use the default backend "
            "(drop backend=, or backend='fsspec') for http(s):// and local data")
    extra = dict(opts.extra)
    client_kwargs = dict(extra.pop("client_kwargs", {}) or {})
    config_kwargs = dict(extra.pop("config_kwargs", {}) or {})
    unknown = sorted(set(client_kwargs) - {"endpoint_url", "region_name"}) + sorted(set(config_kwargs) - _MAPPED_CONFIG)
    if unknown:
        raise BackendOptionError(f"backend='obstore' cannot honour client/config options {unknown}. Fix: drop "
                                 "them, or use backend='fsspec' for botocore settings")
    out: dict[str, Any] = {
        # raw options win over the fields, as in fsspec_options
        "endpoint": client_kwargs.get("endpoint_url") or extra.pop("endpoint_url", None) or opts.endpoint_url,
        "region": client_kwargs.get("region_name") or opts.region,
        "anon": bool(opts.anon or extra.pop("anon", False)),
        "requester_pays": bool(opts.requester_pays or extra.pop("requester_pays", False)),
        "client_options": dict(extra.pop("client_options", {}) or {}),
    }
    for ours in ("key", "secret", "token"):
        out[ours] = extra.pop(ours, None)
    refuse_unknown(extra, _FSSPEC_ONLY, "fsspec/s3fs")
    return out


def refuse_unknown(extra: dict[str, Any], ignorable: tuple[str, ...], kind: str, where: str = "") -> None:
    """``BackendOptionError`` naming what is left of ``extra`` once the ``ignorable`` keys are dropped."""
    for key in ignorable:
        extra.pop(key, None)
    if extra:
        raise BackendOptionError(f"backend='obstore' does not understand storage options {sorted(extra)}{where}. "
                                 f"Fix: drop them, or use backend='fsspec' for {kind} options")


def unsupported_reason(loc: Location, opts: StorageOptions) -> str | None:
    """Why obstore cannot serve ``loc`` with ``opts`` here (None: it can). Used to pick the default."""
    try:
        import obstore  # noqa: F401
        from zarr.storage import ObjectStore  # noqa: F401
    except ImportError as exc:
        return f"obstore is not importable: {exc}"
    if forked_after_use():
        return "this process was forked after its parent used obstore"
    try:
        parse_extra(loc, opts)
    except BackendOptionError as exc:
        return str(exc)
    return None


# -- botocore's resolution, for obstore -------------------------------------------------------------------
class BotocoreCredentials:
    """An obstore credential provider backed by botocore's credential chain (so profiles, SSO,
    assume-role and ``credential_process`` work exactly as under s3fs). Refreshable credentials are
    handed out for a few minutes at a time; botocore refreshes them before they expire."""

    TTL = datetime.timedelta(minutes=5)

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials

    def __call__(self) -> dict[str, Any]:
        from botocore.credentials import RefreshableCredentials

        frozen = self.credentials.get_frozen_credentials()
        expires = None
        if isinstance(self.credentials, RefreshableCredentials):
            expires = datetime.datetime.now(datetime.UTC) + self.TTL
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token, "expires_at": expires}


def _botocore_session(profile: str | None) -> Any:
    import botocore.exceptions
    import botocore.session

    session = botocore.session.Session(profile=profile)
    try:
        session.get_scoped_config()
    except botocore.exceptions.ProfileNotFound as exc:
        raise AccessDeniedError(
            f"AWS profile {profile!r} not found: {exc}. Fix: check the name against the shared config and "
            "credentials files (~/.aws/config, ~/.aws/credentials, or AWS_CONFIG_FILE / "
            "AWS_SHARED_CREDENTIALS_FILE), or drop profile= to use the default chain") from exc
    return session


def _configured_endpoint(session: Any) -> str | None:
    """``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or the profile's endpoint, as botocore resolves them."""
    with contextlib.suppress(Exception):
        if session.get_config_variable("ignore_configured_endpoint_urls"):
            return None
    try:
        from botocore.configprovider import ConfiguredEndpointProvider

        found = ConfiguredEndpointProvider(full_config=session.full_config, scoped_config=session.get_scoped_config(),
                                           client_name="s3", environ=os.environ).provide()
        return str(found) if found else None
    except Exception:  # older botocore: the environment only
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_PEM_CACHE: dict[tuple[Any, ...], str] = {}


def ca_certificates(session: Any | None, *, aws: bool = True) -> tuple[str | None, list[str]]:
    """(PEM text, the files it came from) of every CA bundle that should be trusted: ``AWS_CA_BUNDLE`` or
    the profile's ``ca_bundle`` (``aws``: for S3 only), ``SSL_CERT_FILE`` and the system bundle. Added to
    obstore's own roots, so a TLS-inspecting proxy's CA works wherever the system (or AWS) settings name it."""
    named: list[tuple[str, str]] = []
    bundle = os.environ.get("AWS_CA_BUNDLE") if aws else None
    if aws and not bundle and session is not None:
        with contextlib.suppress(Exception):
            bundle = session.get_config_variable("ca_bundle")
    if bundle:
        named.append(("AWS_CA_BUNDLE" if os.environ.get("AWS_CA_BUNDLE") else "the profile's ca_bundle", bundle))
    if os.environ.get("SSL_CERT_FILE"):
        named.append(("SSL_CERT_FILE", os.environ["SSL_CERT_FILE"]))
    for what, path in named:
        if not os.path.isfile(path):
            raise BackendOptionError(f"{what} names {path}, which is not a file. Fix: point it at a PEM CA bundle, "
                                     "or unset it")
    paths = [p for _, p in named]
    system = ssl.get_default_verify_paths()
    for path in (system.cafile, system.openssl_cafile):
        if path and os.path.isfile(path) and path not in paths:
            paths.append(path)
            break
    if not paths:
        return None, []
    key = tuple((p, os.stat(p).st_mtime_ns) for p in paths)
    if key not in _PEM_CACHE:
        texts = []
        for p in paths:
            with open(p, encoding="ascii", errors="ignore") as f:
                texts.append(f.read())
        _PEM_CACHE.clear()
        _PEM_CACHE[key] = "\n".join(texts)
    return _PEM_CACHE[key], paths


def _bucket_region(bucket: str, timeout: float, cafile: str | None) -> str | None:
    """The region of an AWS bucket from the ``x-amz-bucket-region`` header S3 sends on any answer to a
    HEAD (even 301/403): obstore, unlike botocore, does not follow region redirects."""
    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    req = urllib.request.Request(f"https://{bucket}.s3.amazonaws.com/", method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.headers.get("x-amz-bucket-region")
    except urllib.error.HTTPError as exc:
        return exc.headers.get("x-amz-bucket-region")
    except Exception:
        return None


def obstore_config(loc: Location, opts: StorageOptions, *, resolve: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``obstore.store.S3Store`` for ``loc`` (exposed for tests and inspection).
    ``resolve=False`` leaves out what needs botocore's chain (credentials, profile settings)."""
    from .base import Deadline

    if loc.protocol == "gcs":
        raise BackendOptionError(f"obstore_config builds S3Store arguments, not those for {loc.url!r}. Fix: use "
                                 "backends.obstore_gcs.store_config for gs://")
    raw = parse_extra(loc, opts)
    bucket, _, prefix = loc.path.partition("/")
    session = _botocore_session(opts.profile) if resolve else None
    endpoint = raw["endpoint"] or (_configured_endpoint(session) if session is not None else None)
    region = raw["region"]
    if region is None and session is not None:
        region = session.get_config_variable("region")
    config: dict[str, Any] = {}
    if endpoint:
        # both keys: obstore lets AWS_ENDPOINT_URL_S3 from the environment win over a plain `endpoint`
        config["endpoint"] = config["aws_endpoint_url_s3"] = endpoint
    deadline = Deadline.from_options(opts)
    if region is None and not endpoint and resolve:
        pem_file = os.environ.get("AWS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        region = _bucket_region(bucket, opts.connect_timeout + opts.read_timeout, pem_file)
    if region:
        config["region"] = region
    if raw["anon"]:
        config["skip_signature"] = True
    if raw["requester_pays"]:
        config["request_payer"] = True
    credential_provider = None
    if not raw["anon"]:
        if raw["key"] or raw["secret"]:
            config["access_key_id"], config["secret_access_key"] = raw["key"], raw["secret"]
            if raw["token"]:
                config["session_token"] = raw["token"]
        elif session is not None:
            creds = session.get_credentials()
            if creds is None:
                raise AccessDeniedError(
                    f"no AWS credentials found for {loc.url} (environment, profile, shared files, SSO, web "
                    "identity, container or instance role). Fix: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE, attach a role, or use anon=True for public data")
            credential_provider = BotocoreCredentials(creds)
        if session is not None and not endpoint:
            with contextlib.suppress(Exception):
                style = (session.get_scoped_config().get("s3") or {}).get("addressing_style")
                if style == "virtual":
                    config["virtual_hosted_style_request"] = True
    client_options, retry_config = client_and_retry(opts, deadline)
    if endpoint and str(endpoint).startswith("http://"):
        client_options["allow_http"] = True
    elif resolve:
        pem, _ = ca_certificates(session)
        if pem:
            client_options["root_certificate"] = pem
    client_options.update(raw["client_options"])
    out = {"bucket": bucket, "prefix": prefix or None, "config": config, "client_options": client_options,
           "retry_config": retry_config}
    if credential_provider is not None:
        out["credential_provider"] = credential_provider
    return out


def client_and_retry(opts: StorageOptions, deadline: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """obstore's client options (timeouts) and retry config from the options and their ``Deadline``,
    for every store this backend makes."""
    client_options: dict[str, Any] = {
        "connect_timeout": datetime.timedelta(seconds=opts.connect_timeout),
        # obstore's read_timeout is per read (inactivity), as botocore's; `timeout` bounds a whole attempt
        "read_timeout": datetime.timedelta(seconds=opts.read_timeout),
        "timeout": datetime.timedelta(seconds=deadline.request_seconds),
    }
    retry_config = {"max_retries": max(0, opts.retries),
                    "retry_timeout": datetime.timedelta(seconds=deadline.request_seconds),
                    "backoff": {"init_backoff": datetime.timedelta(milliseconds=100),
                                "max_backoff": datetime.timedelta(seconds=1), "base": 2}}
    return client_options, retry_config


# -- zarr store: ranges from whole objects where the server does not answer 206 ------------------------
def _is_not_partial(exc: BaseException) -> bool:
    return "non-partial response" in str(exc)


class _WholeObjects:
    """Whole objects fetched to cut ranges from: one download per object however many ranges of it are
    asked for at once, and the most recent ones kept up to ``WHOLE_OBJECT_CACHE_BYTES``."""

    def __init__(self, capacity: int = WHOLE_OBJECT_CACHE_BYTES) -> None:
        self.needed = False  # set once the server answered a range request with status 200
        self.capacity = capacity
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    async def get(self, store: Any, key: str) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(store, key))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f, k=key: self._inflight.pop(k, None))
        return await asyncio.shield(fut)

    async def _fetch(self, store: Any, key: str) -> Any:
        import obstore

        try:
            data = await (await obstore.get_async(store, key)).bytes_async()
        except FileNotFoundError:
            return None
        if len(data) <= self.capacity:
            self._cache[key] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old)
        return data

    def forget(self, key: str) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._bytes -= len(old)


def _cut(data: Any, byte_range: Any) -> memoryview:
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    view = memoryview(data)
    if isinstance(byte_range, RangeByteRequest):
        return view[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return view[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return view[max(0, len(view) - byte_range.suffix) :]
    raise ValueError(f"unexpected byte range {byte_range!r}")


_STORE_CLASS: list[type] = []


def range_safe_store_class() -> type:
    """zarr's ``ObjectStore`` with ranges cut from whole objects on servers that do not answer 206."""
    if _STORE_CLASS:
        return _STORE_CLASS[0]
    from zarr.storage import ObjectStore

    class RangeSafeObjectStore(ObjectStore):  # type: ignore[misc, type-arg]
        def __init__(self, store: Any, *, read_only: bool = False, whole: _WholeObjects | None = None) -> None:
            super().__init__(store, read_only=read_only)
            self._whole = whole or _WholeObjects()

        def with_read_only(self, read_only: bool = False) -> Any:
            return type(self)(self.store, read_only=read_only, whole=self._whole)

        def __getstate__(self) -> dict[Any, Any]:
            state = super().__getstate__()
            state["_whole"] = None
            return state

        def __setstate__(self, state: dict[Any, Any]) -> None:
            super().__setstate__(state)
            self._whole = _WholeObjects()

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            if byte_range is None or not self._whole.needed:
                try:
                    return await super().get(key, prototype, byte_range)
                except Exception as exc:
                    if byte_range is None or not _is_not_partial(exc):
                        raise
                    self._whole.needed = True
            data = await self._whole.get(self.store, key)
            return None if data is None else prototype.buffer.from_bytes(_cut(data, byte_range))

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
            key_ranges = list(key_ranges)
            if not self._whole.needed:
                try:
                    return await super().get_partial_values(prototype, key_ranges)
                except Exception as exc:
                    if not _is_not_partial(exc):
                        raise
                    self._whole.needed = True
            return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

        async def set(self, key: str, value: Any) -> None:
            self._whole.forget(key)
            await super().set(key, value)

        async def delete(self, key: str) -> None:
            self._whole.forget(key)
            await super().delete(key)

    RangeSafeObjectStore.__qualname__ = RangeSafeObjectStore.__name__ = "RangeSafeObjectStore"
    _STORE_CLASS.append(RangeSafeObjectStore)
    return RangeSafeObjectStore


class _ObstoreReceiver:
    """Whole chunk objects from obstore, which has no ``readinto``. Two ways (see ``receive``):

    ``adopt``: the buffer ``bytes_async`` returns is taken over as writable memory, no copy
    (``receive.adopt_buffer``). It is ours alone: object_store collects a body of several frames
    into a fresh allocation, and a body of one frame is a slice of the connection's read buffer that
    the connection never touches again (it reads on into memory after that slice, or into a new
    allocation while the slice is still referenced). Nothing else holds it, so writing to it races
    with nothing; the array keeps it alive.

    call: the buffer copied into the caller's, right after it arrived (still in cache), where the
    caller wants the chunks of a fetch back to back in one block (storage-order batches that span
    chunks are then views of the block)."""

    adopts = True

    def __init__(self, backend: ObstoreBackend) -> None:
        self.backend = backend
        self._store: Any = None  # the backend's store, taken once: its lock is per-chunk cost otherwise

    async def _get(self, key: str, nbytes: int) -> Any:
        import obstore

        if self._store is None:
            self._store = self.backend.object_store()
        try:
            data = await (await obstore.get_async(self._store, key)).bytes_async()
        except FileNotFoundError:
            return None
        if len(data) != nbytes:
            raise ObjectSizeError(f"{self.backend.location.child(key).url} holds {len(data)} bytes, expected {nbytes}")
        return data

    async def adopt(self, key: str, nbytes: int) -> Any:
        from ..receive import adopt_buffer

        data = await self._get(key, nbytes)
        return None if data is None else adopt_buffer(data)

    async def __call__(self, key: str, out: memoryview) -> bool:
        import numpy as np

        data = await self._get(key, len(out))
        if data is None:
            return False
        # numpy's copy releases the GIL for large blocks (memoryview assignment would not)
        np.copyto(np.frombuffer(out, dtype=np.uint8), np.frombuffer(data, dtype=np.uint8))
        return True


class ObstoreBackend(Backend):
    name: ClassVar[str] = "obstore"
    protocols: ClassVar[tuple[str, ...]] = ("s3", "gcs")

    def __init__(self, location: Location, options: StorageOptions) -> None:
        super().__init__(location, options)
        if forked_after_use():
            raise BackendOptionError(
                "backend='obstore' cannot be used in a process forked after its parent used obstore (the Rust "
                f"runtime's threads do not survive fork; requests would hang). {FORK_FIX}")
        parse_extra(location, options)  # bad options fail now, not at the first read
        self._lock = threading.Lock()
        self._kw: dict[str, Any] | None = None
        self._store: Any = None
        self._bucket_store: Any = None
        self._native_lock = threading.Lock()
        self._native: TensorstoreReads | None = None
        self._native_tried = False
        self.native_note = ""  # why small chunks are not read through tensorstore ("" when they are)

    def _config(self) -> dict[str, Any]:
        if self._kw is None:
            if self.location.protocol == "gcs":
                from . import obstore_gcs

                self._kw = obstore_gcs.store_config(self.location, self.options)
            else:
                self._kw = obstore_config(self.location, self.options)
        return self._kw

    @property
    def endpoint(self) -> str:
        if self.location.protocol == "gcs":
            from . import obstore_gcs

            return obstore_gcs.describe_endpoint(self.location, self.options)
        raw = parse_extra(self.location, self.options)
        url = raw["endpoint"]
        if url is None and self._kw is not None:
            url = self._kw["config"].get("endpoint")
        if url is None:
            url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = self._kw["config"].get("region") if self._kw else raw["region"]
        where = url or (f"AWS S3 ({region})" if region else "AWS S3")
        return f"{where} (bucket {self.location.bucket})"

    def prepare(self) -> None:
        if self._store is None:  # its config resolves credentials: botocore's chain, or gcsfs's
            self.object_store()

    def object_store(self, *, bucket_only: bool = False) -> Any:
        """obstore's store for the location (or its bucket): ``S3Store``, or ``GCSStore`` for gs://,
        created on first use."""
        with self._lock:
            if self._store is None:
                self._store = self._make_store(prefix=True)
                if not _RUNTIME_PID:
                    _RUNTIME_PID.append(os.getpid())
            if bucket_only and self._bucket_store is None:
                self._bucket_store = self._make_store(prefix=False)
        return self._bucket_store if bucket_only else self._store

    def _make_store(self, *, prefix: bool) -> Any:
        try:
            from obstore.store import GCSStore, S3Store
        except ImportError as exc:
            raise BackendOptionError(f"backend='obstore' needs obstore: {exc}. Fix: pip install obstore, "
                                     "or use backend='fsspec'") from exc
        kw = dict(self._config())
        if not prefix:
            kw["prefix"] = None
        cls = GCSStore if self.location.protocol == "gcs" else S3Store
        return cls(kw.pop("bucket"), **kw)

    def zarr_store(self, *, read_only: bool = True) -> Any:
        try:
            cls = range_safe_store_class()
        except ImportError as exc:
            raise BackendOptionError(f"backend='obstore' needs zarr >= 3 with ObjectStore: {exc}. "
                                     "Fix: upgrade zarr, or use backend='fsspec'") from exc
        return cls(self.object_store(), read_only=read_only)

    def receiver(self) -> Receiver | None:
        return _ObstoreReceiver(self)

    def native_reads(self, probe_key: str, concurrency: int) -> TensorstoreReads | None:
        """tensorstore's kvstore on the location for small whole chunks (``tensorstore_reads``), opened
        and probed with ``probe_key`` once per backend (within ``PROBE_SECONDS`` or the deadline, if
        shorter); None when it cannot be used (``native_note`` says why)."""
        # its own lock: the probe waits on the network, and ``_lock`` guards what zarr's loop needs
        with self._native_lock:
            if not self._native_tried:
                self._native_tried = True
                budget = min(tensorstore_reads.PROBE_SECONDS, self.deadline.seconds if self.deadline else 1e9)
                self._native, why = open_reads(self._config(), probe_key, concurrency=concurrency,
                                               retries=self.options.retries, probe_seconds=budget,
                                               connect_timeout=self.options.connect_timeout,
                                               read_timeout=self.options.read_timeout,
                                               protocol=self.location.protocol)
                self.native_note = why
                if why:
                    # a misspelt switch is the user's to fix: a warning; anything else is information
                    level = logging.WARNING if "Fix:" in why else logging.INFO
                    logging.getLogger("zarrloader").log(level, "small chunks of %s are read by obstore: %s",
                                                        self.location.url, why)
            native = self._native
        return native if native is not None and native.usable else None

    @property
    def native_active(self) -> bool:
        """Small plain chunks are being read through tensorstore (``native_reads``) in this process."""
        return self._native is not None and self._native.usable

    def drop_native_reads(self, why: str, reads: TensorstoreReads | None = None) -> None:
        """Stop reading through tensorstore (a fetch failed on that path; obstore reads from now on).
        ``reads``: the reads that failed; reads opened since (after a close) are kept."""
        with self._native_lock:
            if self._native is not None and (reads is None or reads is self._native):
                self._native.close()
                self._native = None
                self.native_note = why
                logging.getLogger("zarrloader").info("small chunks of %s are read by obstore from now on: %s",
                                                     self.location.url, why)

    # -- objects -----------------------------------------------------------------------------------------
    async def get_async(self, key: str) -> Any:
        import obstore

        try:
            return await (await obstore.get_async(self.object_store(), key)).bytes_async()
        except FileNotFoundError:
            return None

    async def put_async(self, key: str, data: bytes | memoryview) -> None:
        import obstore

        await obstore.put_async(self.object_store(), key, bytes(data))

    async def delete_async(self, key: str) -> None:
        import obstore

        with contextlib.suppress(FileNotFoundError):
            await obstore.delete_async(self.object_store(), key)

    async def list_async(self, prefix: str = "") -> list[ObjectInfo]:
        import obstore

        metas = await obstore.list(self.object_store(), prefix=prefix or None).collect_async()
        return sorted((ObjectInfo(m["path"], int(m["size"])) for m in metas), key=lambda o: o.key)

    async def size_async(self, key: str) -> int | None:
        import obstore

        try:
            return int((await obstore.head_async(self.object_store(), key))["size"])
        except FileNotFoundError:
            return None

    async def bucket_exists_async(self) -> bool | None:
        import obstore

        try:
            await obstore.list_with_delimiter_async(self.object_store(bucket_only=True))
        except Exception as exc:
            if "NoSuchBucket" in str(exc) or isinstance(exc, FileNotFoundError):
                return False
            raise
        return True

    # -- errors ------------------------------------------------------------------------------------------
    def classify(self, exc: BaseException) -> ErrorKind:
        return classify_obstore_error(exc)

    def translate(self, exc: BaseException, operation: str) -> Any:
        if any(_is_not_partial(e) for e in _chain(exc)):
            return ChunkReadError(f"the server answered a range request with the wrong status while {operation}. "
                                  "Fix: use backend='fsspec' for this server")
        return super().translate(exc, operation)

    def close(self) -> None:
        super().close()  # obstore's client has no session to close; its pool goes with the store
        with self._native_lock:
            if self._native is not None:
                self._native.close()  # fetches still in flight fail as NativeReadError: redone, or dropped
            self._native, self._native_tried = None, False


def _chain(exc: BaseException) -> list[BaseException]:
    from .base import exception_chain

    return exception_chain(exc)


_TRANSPORT = ("error sending request", "connection refused", "connection reset", "connection closed",
              "operation timed out", "timed out", "timedout", "timeout", "dns error", "tcp connect error",
              "broken pipe", "request or response body error", "error decoding response body", "unexpected eof",
              "certificate", "invalid peer")


def classify_obstore_error(exc: BaseException) -> ErrorKind:
    """obstore's exception classes; its ``GenericError`` carries the HTTP status or the transport
    failure only in its message, so that message is read here (and nowhere else)."""
    try:
        from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError
    except ImportError:  # pragma: no cover
        return classify_os_error(exc)
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
        return ErrorKind.DENIED
    if isinstance(exc, GenericError):
        text = str(exc).split("\n\nDebug source:", 1)[0]
        low = text.lower()
        if "nosuchbucket" in low or "status code: 404" in low:
            return ErrorKind.NOT_FOUND
        if "status code: 403" in low or "status code: 401" in low or "accessdenied" in low:
            return ErrorKind.DENIED
        if any(f"status code: {s}" in low for s in ("500", "502", "503", "504", "429")) or "slowdown" in low:
            return ErrorKind.TRANSIENT
        # the transport failure may be named only in the debug dump (e.g. "source: TimedOut")
        if any(t in low or t in str(exc).lower() for t in _TRANSPORT):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.OTHER
    return classify_os_error(exc)


def warn_fork_fallback() -> None:
    """Once per process: the default backend for s3:// and gs:// is fsspec here, and why."""
    if _FORK_WARNED and _FORK_WARNED[0] == os.getpid():
        return
    _FORK_WARNED[:] = [os.getpid()]
    warnings.warn("zarrloader: this process was forked after its parent used obstore, whose runtime does not "
                  "survive fork; s3:// and gs:// are read with the fsspec backend here (slower). " + FORK_FIX.replace(
                      ", or use backend='fsspec'", " to keep obstore"), RuntimeWarning, stacklevel=3)
