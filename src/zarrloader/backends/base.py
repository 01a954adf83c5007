"""The backend protocol: what every storage backend gives the loader, ``inspect``, ``sync``, ``convert``
and ``bench``, and the machinery they share (zarr's event loop, the deadline, error translation).

A backend is one object per (location, options), created in the process that reads. It owns one
client (HTTP pool) for everything it does: the zarr store, the receiver, raw GETs, listing and
writes all go through it, and ``close()`` (or garbage collection, or interpreter exit) closes it.

Every operation that waits on storage is bounded by the backend's ``Deadline``: the libraries' own
timeouts are set from the options, but the guarantee is the outer deadline that ``run`` (and the
loader's fetch node) put around each operation, because not every library honours its own timeout
(s3fs's body reads do not).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import enum
import threading
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from ..errors import AccessDeniedError, StorageUnavailableError, StoreNotFoundError, ZarrLoaderError
from ..receive import Receiver
from ..storage import Location, StorageOptions
from .tensorstore_reads import TensorstoreReads

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """What ``Backend.wait`` waits on: a ``concurrent.futures.Future``, or a ``NativeFetch``."""

    def result(self, timeout: float | None = None) -> T_co: ...

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...

#: Added to connect + read x attempts: the libraries' backoff between attempts, and the error path.
GRACE_S = 2.0
#: How long closing a client may take (it also runs at interpreter exit, which must never hang).
CLOSE_TIMEOUT_S = 5.0


class ErrorKind(enum.Enum):
    """What a storage exception means, whatever library raised it."""

    NOT_FOUND = "not found"  # no such object, bucket or prefix
    DENIED = "denied"  # credentials missing, wrong, expired, or lacking permission
    UNAVAILABLE = "unavailable"  # endpoint unreachable, connection refused or reset, timed out
    TRANSIENT = "transient"  # the server answered with a retryable error (5xx, throttling, cut body)
    OTHER = "other"  # anything else: bad data, a bug, an option the server rejects

    @property
    def retryable(self) -> bool:
        return self in (ErrorKind.UNAVAILABLE, ErrorKind.TRANSIENT)


@dataclass(frozen=True)
class Deadline:
    """The time one storage operation may take, from the options that applied.

    A frozen server (TCP open, no bytes) makes every attempt wait ``read_timeout`` once connected,
    and a connection may take ``connect_timeout`` to open, so an operation ends, in error, within
    ``connect_timeout + read_timeout x (retries + 1)`` plus ``GRACE_S`` (the libraries' backoff
    between attempts). ``seconds`` is that bound; None for local files, which need none."""

    connect_timeout: float
    read_timeout: float
    retries: int
    grace: float = GRACE_S

    @classmethod
    def from_options(cls, opts: StorageOptions) -> Deadline:
        return cls(float(opts.connect_timeout), float(opts.read_timeout), max(0, int(opts.retries)))

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def request_seconds(self) -> float:
        """connect_timeout + read_timeout x (retries + 1): what the libraries are told."""
        return self.connect_timeout + self.read_timeout * self.attempts

    @property
    def seconds(self) -> float:
        return self.request_seconds + self.grace

    def settings(self) -> str:
        return (f"connect_timeout={self.connect_timeout:g} s, read_timeout={self.read_timeout:g} s, "
                f"retries={self.retries}: at most {self.connect_timeout:g} + {self.read_timeout:g} x "
                f"{self.attempts} + {self.grace:g} = {self.seconds:g} s per operation")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the backend's location, and its size in bytes."""

    key: str
    size: int


FIX_UNAVAILABLE = ("Fix: check the endpoint URL and the network, and that the server is running and not overloaded; "
                   "for a slow or distant store raise StorageOptions(read_timeout=..., retries=...) "
                   "(on the command line: --read-timeout, --retries)")
FIX_DENIED = ("Fix: check the credentials the standard chain finds (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
              "AWS_PROFILE, instance/IRSA role; for GCS GOOGLE_APPLICATION_CREDENTIALS), use anon=True for "
              "public data, requester_pays=True for requester-pays buckets, or endpoint_url for an "
              "S3-compatible server")


def zarr_loop() -> asyncio.AbstractEventLoop:
    """zarr's own event loop (one per process, on its ``zarr_io`` thread): every backend client lives
    there, as zarr's stores do, so the loader's reads and the backend's own calls share one client."""
    from zarr.core.sync import _get_loop

    return _get_loop()


def on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop() is loop
    return False


class Backend(abc.ABC):
    """One storage backend for one location. Subclasses live in one module each and are registered
    in ``zarrloader.backends`` (the one dispatch point)."""

    #: the name users pass as ``StorageOptions(backend=...)``
    name: ClassVar[str]
    #: ``Location.protocol`` values this backend serves
    protocols: ClassVar[tuple[str, ...]]

    def __init__(self, location: Location, options: StorageOptions) -> None:
        if location.protocol not in self.protocols:
            from ..errors import BackendOptionError

            raise BackendOptionError(
                f"backend={self.name!r} does not serve {location.url!r} (it serves {', '.join(self.protocols)}). "
                "Fix: drop backend= to get the default for this scheme")
        self.location = location
        self.options = options
        self.deadline: Deadline | None = Deadline.from_options(options)
        _LIVE.add(self)
        _register_exit_hook()

    # -- identity --------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """Where requests go, for messages: the endpoint URL, or the service (and region) it resolves to."""
        return self.location.url

    def describe(self) -> str:
        return f"{self.endpoint} ({self.name} backend)"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location.url!r})"

    # -- zarr ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def zarr_store(self, *, read_only: bool = True) -> Any:
        """A zarr 3 store on the location, using this backend's client."""

    def receiver(self) -> Receiver | None:
        """A receiver into caller-owned memory (see ``zarrloader.receive``), or None when chunks must
        go through the zarr store's ``get``."""
        return None

    def native_reads(self, probe_key: str, concurrency: int) -> TensorstoreReads | None:
        """A native client for small whole chunks, read off zarr's event loop (``tensorstore_reads``;
        ``probe_key``: an object that exists, read once to check), or None: chunks go through
        ``receiver``/the zarr store."""
        return None

    def drop_native_reads(self, why: str, reads: TensorstoreReads | None = None) -> None:
        """Stop using ``native_reads`` (one of its fetches failed; the other clients read from now on).
        ``reads``: the reads that failed (reads opened since are kept)."""
        return None

    # -- objects (async: run them on zarr's loop, see ``run``/``submit``) ---------------------------
    @abc.abstractmethod
    async def get_async(self, key: str) -> Any:
        """The whole object at ``key`` (relative to the location) as a bytes-like object (buffer
        protocol; may be read-only), or None when it does not exist. The bench's raw GET."""

    @abc.abstractmethod
    async def put_async(self, key: str, data: bytes | memoryview) -> None:
        """Write ``data`` to ``key`` (whole object, replacing what is there)."""

    @abc.abstractmethod
    async def delete_async(self, key: str) -> None:
        """Delete ``key``; a missing object is not an error."""

    @abc.abstractmethod
    async def list_async(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (relative to the location), with sizes, in key order."""

    @abc.abstractmethod
    async def size_async(self, key: str) -> int | None:
        """Size of ``key`` in bytes, or None when it does not exist."""

    async def bucket_exists_async(self) -> bool | None:
        """Whether the bucket exists (None: not a bucket store, or not known)."""
        return None

    # -- the same, blocking, each bounded by the deadline -----------------------------------------
    def get(self, key: str) -> bytes | None:
        data = self.run(self.get_async(key), f"reading {self._url(key)}")
        return None if data is None else bytes(data)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.run(self.put_async(key, data), f"writing {self._url(key)}")

    def delete(self, key: str) -> None:
        self.run(self.delete_async(key), f"deleting {self._url(key)}")

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        return self.run(self.list_async(prefix), f"listing {self._url(prefix)}")

    def size(self, key: str) -> int | None:
        return self.run(self.size_async(key), f"reading the size of {self._url(key)}")

    def bucket_exists(self) -> bool | None:
        return self.run(self.bucket_exists_async(), f"checking the bucket of {self.location.url}")

    def _url(self, key: str) -> str:
        return self.location.child(key).url if key else self.location.url

    # -- running on zarr's loop --------------------------------------------------------------------
    def prepare(self) -> None:  # noqa: B027 - an optional hook: most backends have nothing to set up
        """Set up, in the caller's thread, what may block without an event loop (resolving credentials
        can probe a metadata server): done on zarr's loop it would stall every read in the process.
        Called before any work goes to the loop; a no-op where there is nothing to set up."""

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on zarr's event loop, where this backend's client lives."""
        self.prepare()
        return asyncio.run_coroutine_threadsafe(coro, zarr_loop())

    def run(self, coro: Coroutine[Any, Any, T], operation: str) -> T:
        """Run ``coro`` on zarr's loop and wait for it, at most the deadline: then it is cancelled and
        ``StorageUnavailableError`` names the endpoint, the operation and the settings. Storage errors
        come back translated (``translate``)."""
        loop = zarr_loop()
        if on_loop_thread(loop):
            coro.close()
            raise RuntimeError(f"internal: blocking call while {operation} from zarr's event loop")
        try:
            self.prepare()
        except ZarrLoaderError:
            coro.close()
            raise
        except Exception as exc:
            coro.close()
            raise self.translate(exc, operation) from exc
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        return self.wait(fut, operation)

    def wait(self, fut: Pending[T], operation: str, timeout: float | None = None) -> T:
        """The result of ``fut`` within ``timeout`` (default: the deadline), else cancel it and raise
        ``StorageUnavailableError``. Exceptions are translated."""
        limit = timeout if timeout is not None else (self.deadline.seconds if self.deadline else None)
        try:
            return fut.result(timeout=limit)
        except concurrent.futures.CancelledError:
            raise self.timed_out(operation) from None
        except ZarrLoaderError:
            raise
        except Exception as exc:
            if not fut.done():  # our deadline (a TimeoutError raised by the operation itself is its own)
                fut.cancel()
                raise self.timed_out(operation) from None
            raise self.translate(exc, operation) from exc

    # -- errors ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def classify(self, exc: BaseException) -> ErrorKind:
        """What ``exc`` (raised by this backend's library, or one of its causes) means."""

    def classify_chain(self, exc: BaseException) -> ErrorKind:
        """``classify`` over ``exc`` and its causes: the first definite answer wins."""
        for e in exception_chain(exc):
            kind = self.classify(e)
            if kind is not ErrorKind.OTHER:
                return kind
        return ErrorKind.OTHER

    def settings(self) -> str:
        return f"{self.name} backend; " + (self.deadline.settings() if self.deadline else "local files: no timeouts")

    def timed_out(self, operation: str) -> StorageUnavailableError:
        assert self.deadline is not None, "local files have no deadline"
        return StorageUnavailableError(
            f"cannot reach storage while {operation}: no answer from {self.endpoint} within "
            f"{self.deadline.seconds:g} s ({self.settings()}). {FIX_UNAVAILABLE}")

    def translate(self, exc: BaseException, operation: str) -> ZarrLoaderError:
        """A ``ZarrLoaderError`` with cause and fix for a storage exception raised while ``operation``
        (e.g. "opening s3://bucket/x.zarr")."""
        if isinstance(exc, ZarrLoaderError):
            return exc
        kind = self.classify_chain(exc)
        brief = self._redacted(_brief(exc))
        if kind is ErrorKind.DENIED:
            return AccessDeniedError(f"access denied while {operation}: {brief}. {FIX_DENIED}")
        if kind.retryable:
            return StorageUnavailableError(
                f"cannot reach storage while {operation} at {self.endpoint} (gave up after bounded retries; "
                f"{self.settings()}): {brief}. {FIX_UNAVAILABLE}")
        if kind is ErrorKind.NOT_FOUND:
            return StoreNotFoundError(f"not found while {operation}: {brief}. Fix: check the bucket and path spelling")
        return ZarrLoaderError(f"error while {operation}: {type(exc).__name__}: {brief}")

    def _redacted(self, text: str) -> str:
        return redact_secrets(text, self.options.extra)

    # -- closing -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the client now (bounded wait). The backend may be used again: it reopens lazily."""
        _LIVE.discard(self)


def redact_secrets(text: str, extra: Mapping[str, Any]) -> str:
    """``text`` without the secrets passed as raw options (a raw token or secret key that a client library
    quotes in its error, e.g. gcsfs's token check URL): each becomes ``<token>`` / ``<secret>``."""
    for key in ("token", "secret"):
        value = extra.get(key)
        if isinstance(value, str) and len(value) >= 8:  # shorter ones are method names ("anon", "cloud")
            text = text.replace(value, f"<{key}>")
    return text


def exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _brief(exc: BaseException, limit: int = 600) -> str:
    """The exception's message without the multi-line debug dumps some libraries append."""
    text = str(exc).strip() or type(exc).__name__
    first = text.split("\n\nDebug source:", 1)[0]
    return first if len(first) <= limit else first[:limit] + " ..."


def close_on_loop(closers: list[Any], wait: bool) -> None:
    """Await every ``closers`` coroutine function on zarr's loop: scheduled when called from the loop
    or when ``wait`` is False (garbage collection), else waited for at most ``CLOSE_TIMEOUT_S``."""
    if not closers:
        return
    from zarr.core.sync import loop as zarr_loops

    loop = zarr_loops[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return  # no loop left to close on (interpreter exit past zarr's hook): nothing clean to do

    async def close_all() -> None:
        for close in closers:
            with contextlib.suppress(Exception):
                await close()

    if on_loop_thread(loop):
        loop.create_task(close_all())
        return
    try:
        fut = asyncio.run_coroutine_threadsafe(close_all(), loop)
    except RuntimeError:  # the loop closed meanwhile
        return
    if wait:
        with contextlib.suppress(Exception):
            fut.result(CLOSE_TIMEOUT_S)


_LIVE: weakref.WeakSet[Backend] = weakref.WeakSet()
_exit_hook: list[bool] = []
_exit_lock = threading.Lock()


def _cancel_orphan_tasks(timeout: float = 2.0) -> None:
    """Cancel the tasks still pending on zarr's loop (e.g. the sibling reads of a gather that failed
    or hit its deadline), and let them unwind in their own task context. Left pending when zarr stops
    its loop, they are closed by garbage collection outside it, and aiobotocore then prints "Exception
    ignored ... created in a different Context" tracebacks at exit."""
    from zarr.core.sync import loop as zarr_loops

    loop = zarr_loops[0]
    if loop is None or loop.is_closed() or not loop.is_running() or on_loop_thread(loop):
        return

    async def cancel_all() -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout + 1)


def _close_live_backends() -> None:
    # Runs before zarr's own exit hook stops its loop, so every client still open closes cleanly
    # (left to garbage collection after the loop stops, aiohttp prints "Unclosed client session").
    _cancel_orphan_tasks()
    for backend in list(_LIVE):
        with contextlib.suppress(Exception):
            backend.close()


def _register_exit_hook() -> None:
    """Once, after zarr is imported: atexit runs hooks last-in first-out, so ours runs first."""
    if _exit_hook:
        return
    with _exit_lock:
        if not _exit_hook:
            import atexit

            import zarr.core.sync  # noqa: F401  (registers zarr's hook before ours)

            atexit.register(_close_live_backends)
            _exit_hook.append(True)
