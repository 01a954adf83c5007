"""Whole small chunk objects read by tensorstore's C++ ``s3`` kvstore, for the obstore backend.

Why: below about 1 MiB per object a read's cost is mostly per request, and obstore's requests end on
Python's side: each one completes a Rust future into an asyncio future on zarr's event loop, which
needs the GIL twice per object (headers, body), so every other Python thread of the loader (batching,
the consumer) competes with the network for it. tensorstore's reads complete in its own threads, on
futures a loader thread waits on without an event loop. Measured on 2 cores against a loopback
``rclone serve s3`` (256 KiB objects, 40 in flight, fetches of 8 objects, rows gathered into
batches): 403 MiB/s at 1.76 CPU-s/GiB through tensorstore against 309 MiB/s at 2.75 through
obstore, whose raw GETs alone ran at 360 MiB/s, 2.29 CPU-s/GiB. At 4 MiB objects tensorstore is the
slower client (373 against 672 MiB/s, 3 x the CPU), hence ``MAX_CHUNK_BYTES``. Figures and the
decision: docs/zarrloader.md, "Small chunks".

``open_reads`` probes with one real read, within ``PROBE_SECONDS`` (or the deadline, if shorter),
and gives None (obstore then reads) when tensorstore is missing, turned off
(``ZARRLOADER_TENSORSTORE=0``), cannot express the credentials (refreshing ones: SSO, assume-role,
instance roles), or cannot read the probe. Its requests get obstore's budget: the same attempts and
backoff, and libcurl's connect and stall limits set from ``connect_timeout`` and ``read_timeout``
(``TENSORSTORE_CURL_*``, only where the environment does not set them: tensorstore reads them once per
process). A fetch that fails on this path for want of the storage (unavailable, timed out) is a
``StorageUnavailableError`` within the deadline, as on obstore; any other failure is redone through
zarr (see ``ZarrSource.wait_fetch``), and the source reads through obstore from then on.

Static credentials (the options' key/secret, or what botocore's chain resolved from the environment
or the shared files) reach tensorstore through a credentials file of our own: tensorstore takes no
keys in its spec, and its ``environment`` provider would read the process environment. The file sits
in a private temporary folder (mode 0700, the file 0600) only until the probe has read it (tensorstore
keeps the credentials it read), and is in no image.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import ZarrLoaderError

T = TypeVar("T")

#: objects up to this size are read through tensorstore (above it obstore is faster: module docstring)
MAX_CHUNK_BYTES = 512 << 10
#: the environment switch: "0" keeps every read on obstore
ENV_SWITCH = "ZARRLOADER_TENSORSTORE"
#: seconds the kvstore open and the probe read may take together before this path is left out
PROBE_SECONDS = 10.0
#: tensorstore's status codes of a storage that is not there (after its own attempts)
UNAVAILABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED")

_PROFILE = "zarrloader"
_FOLDERS: list[tuple[int, str]] = []  # (pid, credential folder) not yet removed
_EXIT_HOOK: list[int] = []


_ON, _OFF = ("1", "true", "yes", "on", ""), ("0", "false", "no", "off")


def switched_off() -> str | None:
    """Why the environment keeps this path off, or None when it does not. A value that is neither
    on nor off keeps it off too, and says so (logged as a warning by the caller): a misspelt switch
    must not be read as either answer silently."""
    raw = os.environ.get(ENV_SWITCH)
    value = (raw or "").strip().lower()
    if value in _ON:
        return None
    if value in _OFF:
        return f"{ENV_SWITCH}={raw}"
    return (f"{ENV_SWITCH}={raw!r} is not one of {'/'.join(v for v in _ON if v)} (on) or {'/'.join(_OFF)} (off). "
            f"Fix: set one of those, or unset it (on); until then obstore reads")


@dataclass
class TensorstoreReads:
    """An open tensorstore kvstore on the backend's location; ``start(key)`` returns its read future.
    Usable only in the process that opened it (tensorstore's threads do not survive ``fork``)."""

    kv: Any
    pid: int
    folder: str | None = None
    closed: bool = field(default=False, repr=False)

    @property
    def usable(self) -> bool:
        return not self.closed and self.pid == os.getpid()

    def start(self, key: str) -> Any:
        kv = self.kv
        if kv is None or not self.usable:
            raise NativeReadError("tensorstore: its kvstore was closed")
        return kv.read(key)

    def forget_credentials(self) -> None:
        """Remove the credentials file (tensorstore keeps what it read)."""
        if self.folder is not None and self.pid == os.getpid():
            _remove_folder(self.folder)
        self.folder = None

    def close(self) -> None:
        self.closed = True
        self.kv = None
        self.forget_credentials()


class NativeReadError(ZarrLoaderError):
    """A tensorstore read failed. ``unavailable``: for want of the storage, after tensorstore's own
    attempts (the caller names it as such); otherwise the fetch is redone through zarr."""

    def __init__(self, message: str, *, unavailable: bool = False, reads: TensorstoreReads | None = None) -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.reads = reads


class NativeFetch(Generic[T]):
    """The future of one fetch made of tensorstore reads: ``result(timeout)`` waits for every read (at
    most ``timeout`` s in all, then ``TimeoutError`` with the reads still pending) and returns
    ``finish(results)``; ``cancel`` cancels the reads. Quacks like ``concurrent.futures.Future`` where
    ``Backend.wait`` uses one."""

    def __init__(self, futures: Sequence[Any], finish: Callable[[list[Any]], T],
                 reads: TensorstoreReads | None = None) -> None:
        self.futures = list(futures)
        self.finish = finish
        self.reads = reads  # whose reads these are: a late failure drops only the reads still current

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def cancel(self) -> bool:
        for f in self.futures:
            f.cancel()
        return True

    def result(self, timeout: float | None = None) -> T:
        end = None if timeout is None else time.monotonic() + timeout
        results = []
        for f in self.futures:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                results.append(f.result(timeout=left))
            except TimeoutError:  # the caller cancels and names the deadline
                raise
            except (Exception, asyncio.CancelledError) as exc:  # tensorstore's cancelled futures raise the latter
                self.cancel()  # the rest would only compete with the redo
                if isinstance(exc, asyncio.CancelledError):
                    raise concurrent.futures.CancelledError() from None
                message = str(exc)
                raise NativeReadError(f"tensorstore: {message[:300]}", reads=self.reads,
                                      unavailable=message.split(":", 1)[0].strip() in UNAVAILABLE_CODES) from exc
        return self.finish(results)  # its errors (a chunk of the wrong size) are the data's, not ours


def body(result: Any) -> bytes | None:
    """The bytes of a kvstore read, or None when the object does not exist. Each access to
    ``ReadResult.value`` builds a new ``bytes`` (copied out of tensorstore's own buffer), so the one
    returned here is referenced by nothing else: the loader may adopt it as writable memory
    (``receive.adopt_buffer``, which copies the empty and one-byte ``bytes`` instead: CPython shares
    those), as it adopts obstore's buffers."""
    return result.value if result.state == "value" else None


def kvstore_spec(config: dict[str, Any], concurrency: int, retries: int) -> tuple[dict[str, Any], dict[str, str] | None]:
    """(tensorstore kvstore spec, static credentials or None) for the keyword arguments obstore's
    ``S3Store`` gets (``backends.obstore.obstore_config``). Raises ``ValueError`` when tensorstore
    cannot express them (the caller then keeps obstore)."""
    conf = dict(config.get("config") or {})
    if conf.get("virtual_hosted_style_request"):
        raise ValueError("virtual-hosted-style requests")
    spec: dict[str, Any] = {"driver": "s3", "bucket": config["bucket"]}
    prefix = (config.get("prefix") or "").strip("/")
    if prefix:
        spec["path"] = prefix + "/"
    if conf.get("endpoint"):
        spec["endpoint"] = str(conf["endpoint"])
    if conf.get("region"):
        spec["aws_region"] = str(conf["region"])
    if conf.get("request_payer"):
        spec["requester_pays"] = True
    creds: dict[str, str] | None = None
    if conf.get("skip_signature"):
        spec["aws_credentials"] = {"type": "anonymous"}
    else:
        if conf.get("access_key_id"):
            creds = {"aws_access_key_id": str(conf["access_key_id"]),
                     "aws_secret_access_key": str(conf.get("secret_access_key") or "")}
            if conf.get("session_token"):
                creds["aws_session_token"] = str(conf["session_token"])
        elif config.get("credential_provider") is not None:
            try:
                got = config["credential_provider"]()
            except Exception as exc:  # obstore will report it, through botocore, where it matters
                raise ValueError(f"credentials: {type(exc).__name__}") from exc
            if got.get("expires_at") is not None:
                raise ValueError("refreshing credentials")
            creds = {"aws_access_key_id": got["access_key_id"], "aws_secret_access_key": got["secret_access_key"]}
            if got.get("token"):
                creds["aws_session_token"] = got["token"]
        else:
            raise ValueError("no credentials")
    # the attempts and backoff obstore gets (``backends.obstore.obstore_config``); max_retries counts attempts
    spec["context"] = {"s3_request_concurrency": {"limit": max(1, concurrency)},
                       "s3_request_retries": {"max_retries": max(1, retries + 1), "initial_delay": "0.1s",
                                              "max_delay": "1s"}}
    return spec, creds


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in the environment for the duration: tensorstore's gcs driver takes its endpoint
    from the environment only, and its credential providers read it on the first request of a store
    (an array open reads metadata; a bare kvstore open reads nothing). One block at a time."""
    if not values:
        yield
        return
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def gcs_kvstore_spec(config: dict[str, Any], concurrency: int, retries: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensorstore ``gcs`` kvstore spec, environment it reads at open and first request) for the keyword
    arguments obstore's ``GCSStore`` gets (``backends.obstore_gcs.store_config``). Raises ``ValueError``
    where tensorstore would not authenticate as obstore does: its gcs driver knows only Google's default
    chain (application-default credentials, the GCE metadata server), so credentials gcsfs found in any
    other way (a token file, a dict, a credentials object, its token cache) keep obstore; so does
    ``anon`` where application-default credentials exist (tensorstore has no anonymous mode and would
    sign with them)."""
    conf = dict(config.get("config") or {})
    provider = config.get("credential_provider")
    if conf.get("skip_signature"):
        if _adc_file() is not None:
            raise ValueError(f"anonymous reads, but it would sign with the credentials in {_adc_file()}")
    elif provider is None or getattr(provider, "method", None) not in ("google_default", "cloud"):
        raise ValueError("credentials given as token= (its gcs driver takes only Google's default chain)")
    spec: dict[str, Any] = {"driver": "gcs", "bucket": config["bucket"]}
    prefix = (config.get("prefix") or "").strip("/")
    if prefix:
        spec["path"] = prefix + "/"
    spec["context"] = {"gcs_request_concurrency": {"limit": max(1, concurrency)},
                       "gcs_request_retries": {"max_retries": max(1, retries + 1), "initial_delay": "0.1s",
                                               "max_delay": "1s"}}
    env = {"TENSORSTORE_GCS_HTTP_URL": str(conf["base_url"])} if conf.get("base_url") else {}
    return spec, env


def _adc_file() -> str | None:
    """The application-default credentials file Google's chain would read, if there is one."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return named
    home = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    path = os.path.join(home, "application_default_credentials.json")
    return path if os.path.isfile(path) else None


def set_curl_limits(connect_timeout: float, read_timeout: float) -> None:
    """libcurl's connect timeout and stall limit (under 1 byte/s for ``read_timeout`` s aborts the
    attempt, which tensorstore retries), as obstore's ``connect_timeout``/``read_timeout``. Only where
    the environment does not set them; tensorstore reads them when it makes its first HTTP transport."""
    os.environ.setdefault("TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS", str(max(1, round(connect_timeout))))
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(max(1, round(read_timeout))))
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")


def open_reads(config: dict[str, Any], probe_key: str, *, concurrency: int, retries: int,
               connect_timeout: float, read_timeout: float, probe_seconds: float | None = None,
               protocol: str = "s3") -> tuple[TensorstoreReads | None, str]:
    """(reads, "") when tensorstore can read ``probe_key`` (an object that exists) with ``config``
    (``S3Store``'s keyword arguments; ``GCSStore``'s for ``protocol="gcs"``), the kvstore open and the
    read together within ``probe_seconds`` (default ``PROBE_SECONDS``); else (None, why)."""
    budget = PROBE_SECONDS if probe_seconds is None else probe_seconds
    off = switched_off()
    if off is not None:
        return None, off
    try:
        import tensorstore as ts
    except ImportError:
        return None, "tensorstore is not installed"
    env: dict[str, str] = {}
    try:
        if protocol == "gcs":
            (spec, env), creds = gcs_kvstore_spec(config, concurrency, retries), None
        else:
            spec, creds = kvstore_spec(config, concurrency, retries)
    except ValueError as exc:
        return None, f"tensorstore cannot take these settings ({exc})"
    folder = None
    if creds is not None:
        folder = _credentials_folder(creds)
        spec["aws_credentials"] = {"type": "profile", "profile": _PROFILE,
                                   "credentials_file": os.path.join(folder, "credentials"),
                                   "config_file": os.path.join(folder, "config")}
    set_curl_limits(connect_timeout, read_timeout)
    end = time.monotonic() + budget
    reads = None
    try:
        with scoped_environ(env):  # the open and the first request read it; the kvstore keeps it
            kv = _within(ts.KvStore.open(spec), end, budget)
            reads = TensorstoreReads(kv, os.getpid(), folder)
            got = _within(reads.start(probe_key), end, budget)
        if body(got) is None:
            raise ValueError(f"it found no object at {probe_key!r}")
    except Exception as exc:  # any failure: obstore reads instead
        if reads is not None:
            reads.close()
        elif folder is not None:
            _remove_folder(folder)
        return None, f"tensorstore's probe read failed: {str(exc)[:300]}"
    reads.forget_credentials()  # read by now, and kept by tensorstore: no secret left on disk
    return reads, ""


def _within(fut: Any, end: float, budget: float) -> Any:
    """``fut``'s result by ``end`` (monotonic), else cancel it and raise ``ValueError``."""
    try:
        return fut.result(timeout=max(0.0, end - time.monotonic()))
    except TimeoutError:
        fut.cancel()
        raise ValueError(f"no answer within {budget:g} s") from None


def _credentials_folder(creds: dict[str, str]) -> str:
    folder = tempfile.mkdtemp(prefix="zarrloader-ts-")  # mode 0700
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(os.getpid())
        atexit.register(_remove_all)
    _FOLDERS.append((os.getpid(), folder))
    lines = [f"[{_PROFILE}]", *(f"{k} = {v}" for k, v in creds.items()), ""]
    fd = os.open(os.path.join(folder, "credentials"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    fd = os.open(os.path.join(folder, "config"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[profile {_PROFILE}]\n")
    return folder


def _remove_folder(folder: str) -> None:
    with contextlib.suppress(ValueError):
        _FOLDERS.remove((os.getpid(), folder))
    shutil.rmtree(folder, ignore_errors=True)


def _remove_all() -> None:
    for pid, folder in list(_FOLDERS):
        if pid == os.getpid():  # a forked child exiting leaves its parent's folders alone
            _remove_folder(folder)


__all__ = ["ENV_SWITCH", "MAX_CHUNK_BYTES", "NativeFetch", "NativeReadError", "TensorstoreReads", "body",
           "gcs_kvstore_spec", "kvstore_spec", "open_reads", "scoped_environ", "set_curl_limits", "switched_off"]
