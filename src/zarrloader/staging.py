"""A safe destination writer for stores that zarrloader creates (``convert`` now, ``sync`` later).

Atomic: a local DST is built in a sibling ``DST.zarrloader-partial`` folder and renamed into place
at commit; an object-store DST (s3://, gs://) gets every data object first and its metadata
documents last (arrays, then groups deepest first, the root document at the very end), so no
reader ever opens a half-written store.

Resumable at the object: a local journal gets one line per finished object, flushed as it is written
(an interrupt, even SIGKILL, keeps every object already written); on object stores, where a PUT is
all or nothing, the objects listed under DST are the finished ones. Work units (e.g. a chunk row)
are journalled too, so a rerun of the same job skips them; a job with other parameters over the same
partial store is refused (``restart=True`` / ``--restart`` discards it).

Never destroys: ``overwrite`` replaces only an existing Zarr store (zarr.json, .zgroup or .zarray at
its root) or a partial store this writer left (its marker file); any other existing path is refused,
naming what is there. An empty folder is used as is. Nothing outside DST and its staging folder is
deleted. A full disk (ENOSPC/EDQUOT) stops with an error naming DST and the bytes still needed; a
rerun resumes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import (
    AccessDeniedError,
    StorageUnavailableError,
    StoreNotFoundError,
    WriteError,
    ZarrLoaderError,
)
from .storage import Location, StorageOptions, parse_url

PARTIAL_SUFFIX = ".zarrloader-partial"
MARKER = ".zarrloader-partial.json"  # the job that owns a partial store (and proof that we made it)
JOURNAL = ".zarrloader-journal"  # local: one JSON line per finished object / unit
JOURNAL_DIR = ".zarrloader-journal.d"  # object stores: segments of finished units
LEGACY_MARKERS = (".zarrloader-sync.json",)  # sync's manifest before it moved onto this writer
ROOT_DOCS = ("zarr.json", ".zgroup", ".zarray")  # one of these at the root makes a Zarr store
METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
_OWN = (MARKER, JOURNAL, JOURNAL_DIR, *LEGACY_MARKERS)
_SEGMENT_UNITS = 64  # object stores: flush finished units every this many ...
_SEGMENT_SECONDS = 5.0  # ... or this often
MiB = 1 << 20


class DestinationExistsError(WriteError):
    """DST exists and is not something this writer may replace (or overwrite was not given)."""


class StagingMismatchError(WriteError):
    """A partial store of another job (other source or parameters) is staged for DST."""


class DiskFullError(WriteError):
    """The destination filesystem is full; ``needed_bytes`` is the estimate still to write."""

    def __init__(self, message: str, needed_bytes: int | None = None) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes


def is_metadata_key(key: str) -> bool:
    """True for zarr metadata documents (zarr.json, .zarray, .zgroup, .zattrs, .zmetadata)."""
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


def metadata_order(keys: Iterable[str]) -> list[str]:
    """Metadata documents in the order they may be written: deepest first, and at the root the
    document that makes the store exist (zarr.json / .zgroup / .zarray) last."""

    def rank(key: str) -> tuple[int, int, str]:
        depth = key.count("/")
        root_doc = depth == 0 and key in ROOT_DOCS
        return (1 if root_doc else 0, -depth, key)

    return sorted(keys, key=rank)


def check_not_inside(src: str, dst: str) -> None:
    """Refuse a destination equal to the source or inside it (or a source inside the destination).
    Local paths are compared after resolving symbolic links (``ln -s data.zarr alias`` is the same store)."""
    a, b = parse_url(src), parse_url(dst)
    if a.protocol != b.protocol:
        return
    pa, pb = a.path.rstrip("/"), b.path.rstrip("/")
    if a.protocol == "file":
        pa, pb = os.path.realpath(pa), os.path.realpath(pb)
    if pa == pb or pb.startswith(pa + "/") or pa.startswith(pb + "/"):
        raise WriteError(
            f"destination {dst} overlaps the source {src}: writing it would change what is being read. "
            "Fix: choose a destination outside the source (e.g. a sibling path)"
        )


@dataclass
class StagingStats:
    objects_written: int = 0  # this run
    bytes_written: int = 0  # this run
    objects_skipped: int = 0  # already finished by an earlier run
    objects_resumed: int = 0  # finished objects found when opening
    units_resumed: int = 0


class StagedWriter:
    """Writes one store at ``dst`` (a path or s3:// / gs:// URL) safely; see the module docstring.

    ``job``: what identifies the work (source, parameters) so that a rerun resumes only the same job.
    ``remaining_bytes``: estimate of the bytes still to write, for the disk-full message.
    Use as a context manager or call :meth:`open`; finish with :meth:`commit`. Thread-safe: objects
    may be put from several threads.
    """

    def __init__(self, dst: str, options: StorageOptions | Mapping[str, Any] | None = None, *,
                 job: Mapping[str, Any], overwrite: bool = False, restart: bool = False, tool: str = "convert",
                 remaining_bytes: Callable[[], int] | None = None) -> None:
        self.url = dst
        self.loc: Location = parse_url(dst)
        if self.loc.read_only:
            raise WriteError(f"cannot write to {dst}: http(s) is read-only. Fix: write to s3://, gs:// or a path")
        self.options = StorageOptions.coerce(options)
        self.job = json.loads(json.dumps(dict(job), default=str))  # plain JSON, comparable after a reload
        self.overwrite = overwrite
        self.restart = restart
        self.tool = tool
        self.remaining_bytes = remaining_bytes
        self.local = self.loc.protocol == "file"
        self.final = self.loc.path.rstrip("/") or "/"
        self.root = self.final + PARTIAL_SUFFIX if self.local else self.final
        self.stats = StagingStats()
        self._backend: Any = None
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._units: set[str] = set()
        self._pending_units: list[str] = []
        self._last_flush = time.monotonic()
        self._segment = 0
        self._journal: Any = None
        self._metadata: dict[str, bytes] = {}
        self._own_remote: set[str] = set()  # bookkeeping objects under an object-store DST
        self._opened = False
        self._committed = False
        self.resumed = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> StagedWriter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # after a storage deadline, flushing the journal would wait out another deadline on the same
        # dead server: skip it (finished objects are found by listing on resume; only empty units redo)
        dead = exc_type is not None and issubclass(exc_type, StorageUnavailableError)
        self.close(flush=not dead)

    @property
    def backend(self) -> Any:
        """The storage backend of an object-store DST: every request bounded by its deadline."""
        if self._backend is None:
            from .backends import open_backend

            self._backend = open_backend(self.loc, self.options, writing=True)
        return self._backend

    def open(self) -> StagedWriter:
        """Check DST, claim it (marker), and load what an earlier run of the same job finished."""
        if self._opened:
            return self
        try:
            if self.local:
                self._open_local()
            else:
                self._open_remote()
        except ZarrLoaderError:
            raise
        except OSError as exc:
            raise self._error(exc, "preparing") from exc
        self._opened = True
        return self

    def close(self, flush: bool = True) -> None:
        """Flush the journal and release files; an uncommitted store stays resumable."""
        with self._lock:
            if self._journal is not None:
                with contextlib.suppress(OSError):
                    self._journal.close()
                self._journal = None
            if flush and not self.local and self._pending_units and not self._committed:
                with contextlib.suppress(Exception):
                    self._flush_segment()
        if self._backend is not None:
            self._backend.close()

    # -- local -------------------------------------------------------------------------------------
    def _open_local(self) -> None:
        final, root = self.final, self.root
        if os.path.lexists(final):
            if not os.path.isdir(final) or os.path.islink(final):
                kind = "a symbolic link" if os.path.islink(final) else "a file"
                raise DestinationExistsError(
                    f"{self.url} is {kind}, not a Zarr store: refusing to replace it. Fix: choose another "
                    "destination, or move it away yourself"
                )
            entries = sorted(os.listdir(final))
            if entries and not any(e in entries for e in ROOT_DOCS):
                raise DestinationExistsError(
                    f"{self.url} is a folder that is not a Zarr store (no zarr.json/.zgroup/.zarray at its root); "
                    f"it holds {_listing(entries, final)}. Refusing to replace it, with or without --overwrite. "
                    "Fix: choose another destination (a new path), or move that folder away yourself"
                )
            if entries and not self.overwrite:
                raise DestinationExistsError(
                    f"{self.url} already exists (a Zarr store). Fix: choose another destination, or pass "
                    "overwrite=True (--overwrite) to replace it"
                )
        _check_local_parent(self.url, root)
        if os.path.lexists(root):
            marker = self._read_local_marker()
            if marker is None:
                raise DestinationExistsError(
                    f"{root} exists but was not left by zarrloader (no {MARKER} in it): refusing to touch it. "
                    "Fix: move it away yourself, or choose another destination"
                )
            if self.restart or marker.get("job") != self.job:
                if not self.restart:
                    raise StagingMismatchError(self._mismatch(marker, root))
                shutil.rmtree(root)
        os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
        if os.path.isdir(root):
            self._load_local_journal()
        else:
            os.makedirs(root)
            self._write_local(MARKER, self._marker_doc("writing"))
        self._journal = open(os.path.join(root, JOURNAL), "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def _read_local_marker(self) -> dict[str, Any] | None:
        for name in (MARKER, *LEGACY_MARKERS):
            p = os.path.join(self.root, name)
            if os.path.isfile(p):
                try:
                    with open(p, encoding="utf-8") as f:
                        doc = json.load(f)
                except (OSError, ValueError):
                    doc = {}
                return doc if name == MARKER else {"job": {"legacy": name}}
        return None

    def _load_local_journal(self) -> None:
        self.resumed = True
        # stale temporary files of an interrupted run (ours: inside our staging folder)
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if ".tmp-" in name:
                    with contextlib.suppress(OSError):
                        os.remove(os.path.join(dirpath, name))
        path = os.path.join(self.root, JOURNAL)
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut off by the interrupt
                if "o" in entry:
                    self._done[entry["o"]] = int(entry.get("n", -1))
                elif "u" in entry:
                    self._units.add(entry["u"])
        # an object counts only if it is there with the size journalled (a power cut may lose data)
        for key, size in list(self._done.items()):
            try:
                ok = os.stat(os.path.join(self.root, key)).st_size == size
            except OSError:
                ok = False
            if not ok:
                del self._done[key]
        self.stats.objects_resumed = len(self._done)
        self.stats.units_resumed = len(self._units)

    def _write_local(self, key: str, data: bytes | memoryview) -> None:
        p = os.path.join(self.root, key)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    # -- object stores -------------------------------------------------------------------------------
    def _open_remote(self) -> None:
        bucket = self.loc.bucket
        try:
            if bucket and self.backend.bucket_exists() is False:
                raise StoreNotFoundError(
                    f"bucket {bucket!r} does not exist (or is not visible to these credentials) for {self.url}. "
                    "Fix: create the bucket, or check its name, the region and the endpoint URL"
                )
            entries = self._remote_listing()
        except ZarrLoaderError:
            raise
        except Exception as exc:
            raise self._error(exc, "listing") from exc
        names = set(entries)
        self._own_remote = {n for n in names if n.split("/", 1)[0] in _OWN}
        marker = None
        if MARKER in names or any(m in names for m in LEGACY_MARKERS):
            marker = self._read_remote_marker() if MARKER in names else {"job": {"legacy": True}}
        if marker is not None:
            if marker.get("job") != self.job and not self.restart:
                raise StagingMismatchError(self._mismatch(marker, self.url))
            if self.restart or marker.get("job") != self.job or marker.get("state") == "clearing":
                self._claim_and_clear(entries)
                return
            self._resume_remote(entries)
            return
        if names:
            top = sorted({n.split("/", 1)[0] for n in names})
            if not any(d in names for d in ROOT_DOCS):
                raise DestinationExistsError(
                    f"{self.url} holds {_listing(top, None, len(names))} but is not a Zarr store (no "
                    "zarr.json/.zgroup/.zarray at its root). Refusing to replace it, with or without --overwrite. "
                    "Fix: choose another destination prefix, or remove those objects yourself"
                )
            if not self.overwrite:
                raise DestinationExistsError(
                    f"{self.url} already exists (a Zarr store, {len(names)} objects). Fix: choose another "
                    "destination, or pass overwrite=True (--overwrite) to replace it"
                )
            self._claim_and_clear(entries)
            return
        self._put_remote(MARKER, self._marker_doc("writing"))

    def _remote_listing(self) -> dict[str, int]:
        """Every object under DST/ with its size, keyed relative to DST."""
        return {o.key: o.size for o in self.backend.list_objects("") if o.key}

    def _read_remote_marker(self) -> dict[str, Any]:
        try:
            raw = self.backend.get(MARKER)
            return json.loads(raw) if raw is not None else {}
        except ValueError:
            return {}

    def _claim_and_clear(self, entries: Mapping[str, int]) -> None:
        """Mark DST as ours (state 'clearing', so an interrupted delete resumes as a delete), remove
        the old store's objects -- only keys under DST/ -- then switch to 'writing'."""
        import asyncio

        self._put_remote(MARKER, self._marker_doc("clearing"))
        doomed = [k for k in entries if k != MARKER]
        # metadata documents first: the old store stops being readable before its chunks go
        doomed.sort(key=lambda k: (0 if is_metadata_key(k) else 1, k))
        backend = self.backend
        for i in range(0, len(doomed), 64):
            batch = doomed[i : i + 64]

            async def delete_all(keys: list[str] = batch) -> None:
                await asyncio.gather(*(backend.delete_async(k) for k in keys))

            backend.run(delete_all(), f"deleting {len(batch)} objects of the old store at {self.url}")
        self._put_remote(MARKER, self._marker_doc("writing"))

    def _resume_remote(self, entries: Mapping[str, int]) -> None:
        self.resumed = True
        for key, size in entries.items():
            if key.split("/", 1)[0] in _OWN or is_metadata_key(key):
                continue
            self._done[key] = size
        for key in sorted(entries):
            if key.startswith(JOURNAL_DIR + "/"):
                self._segment += 1
                raw = self.backend.get(key)
                if raw is not None:
                    self._units.update(u for u in raw.decode().splitlines() if u)
        self.stats.objects_resumed = len(self._done)
        self.stats.units_resumed = len(self._units)

    def _put_remote(self, key: str, data: bytes | memoryview) -> None:
        self.backend.put(key, bytes(data))
        if key.split("/", 1)[0] in _OWN:
            self._own_remote.add(key)

    def _flush_segment(self) -> None:
        if not self._pending_units:
            return
        text = "\n".join(self._pending_units) + "\n"
        name = f"{JOURNAL_DIR}/{self._segment:08d}-{os.getpid()}"
        self._put_remote(name, text.encode())
        self._segment += 1
        self._pending_units = []
        self._last_flush = time.monotonic()

    # -- writing -----------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        return key in self._done

    def unit_done(self, unit: str) -> bool:
        return unit in self._units

    @property
    def done_keys(self) -> frozenset[str]:
        return frozenset(self._done)

    def put(self, key: str, data: bytes | memoryview) -> bool:
        """Write one data object (a chunk or shard; not a metadata document). Returns False when an
        earlier run of this job already wrote it."""
        self._require_open()
        if is_metadata_key(key):
            raise ValueError(f"{key} is a metadata document: pass it to set_metadata (written at commit)")
        if key.split("/", 1)[0] in _OWN:
            raise ValueError(f"{key} is a name this writer reserves")
        if key in self._done:
            with self._lock:
                self.stats.objects_skipped += 1
            return False
        n = len(data)
        try:
            if self.local:
                self._write_local(key, data)
                with self._lock:
                    self._journal.write(json.dumps({"o": key, "n": n}) + "\n")
                    self._journal.flush()
            else:
                self._put_remote(key, data)
        except ZarrLoaderError:
            raise  # already names cause and fix (a storage deadline, a denied write)
        except Exception as exc:
            raise self._error(exc, f"writing {key} to") from exc
        with self._lock:
            self._done[key] = n
            self.stats.objects_written += 1
            self.stats.bytes_written += n
        return True

    def mark(self, unit: str) -> None:
        """Record that work unit ``unit`` (e.g. one chunk row of one array) is complete."""
        self._require_open()
        if "\n" in unit:
            raise ValueError("unit names are single lines")
        with self._lock:
            self._units.add(unit)
            try:
                if self.local:
                    self._journal.write(json.dumps({"u": unit}) + "\n")
                    self._journal.flush()
                else:
                    self._pending_units.append(unit)
                    if (len(self._pending_units) >= _SEGMENT_UNITS
                            or time.monotonic() - self._last_flush > _SEGMENT_SECONDS):
                        self._flush_segment()
            except OSError as exc:
                raise self._error(exc, "journalling to") from exc

    def set_metadata(self, key: str, data: bytes) -> None:
        """A metadata document, held until :meth:`commit` writes it (after every data object)."""
        if not is_metadata_key(key):
            raise ValueError(f"{key} is not a zarr metadata document")
        self._metadata[key] = bytes(data)

    def commit(self) -> None:
        """Write the metadata documents last and make the store appear: rename the staging folder
        into place (local) or drop the marker (object stores)."""
        self._require_open()
        try:
            if self.local:
                for key in metadata_order(self._metadata):
                    self._write_local(key, self._metadata[key])
                with self._lock:
                    if self._journal is not None:
                        self._journal.close()
                        self._journal = None
                for own in (JOURNAL, MARKER):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(self.root, own))
                self._swap_into_place()
            else:
                for key in metadata_order(self._metadata):
                    self._put_remote(key, self._metadata[key])
                self._pending_units = []
                # our own bookkeeping objects, the marker last (known from the listing at open and
                # from what this run wrote: no second listing of a large store)
                for key in [*sorted(self._own_remote - {MARKER}), MARKER]:
                    self.backend.delete(key)
        except ZarrLoaderError:
            raise
        except Exception as exc:
            raise self._error(exc, "committing") from exc
        self._committed = True

    def _swap_into_place(self) -> None:
        final = self.final
        old = None
        if os.path.isdir(final) and os.listdir(final):
            # overwrite of a Zarr store (checked at open): keep it until the new one is in place
            old = f"{final}.zarrloader-old-{os.getpid()}"
            os.replace(final, old)
        elif os.path.isdir(final):
            os.rmdir(final)  # an empty folder: nothing in it to lose
        os.replace(self.root, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("StagedWriter used before open()")
        if self._committed:
            raise RuntimeError("StagedWriter used after commit()")

    def _marker_doc(self, state: str) -> bytes:
        return json.dumps({"tool": self.tool, "dst": self.url, "job": self.job, "state": state,
                           "pid": os.getpid(), "time": time.time()}, indent=1).encode()

    def _mismatch(self, marker: Mapping[str, Any], where: str) -> str:
        return (f"an unfinished {marker.get('tool', 'zarrloader')} job with other parameters is staged at {where} "
                f"(it was: {json.dumps(marker.get('job'), sort_keys=True)}; this one is "
                f"{json.dumps(self.job, sort_keys=True)}). Fix: rerun the original command to finish it, or pass "
                "restart=True (--restart) to discard it and start over")

    def _error(self, exc: BaseException, what: str) -> WriteError:
        code = getattr(exc, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT):
            return self._disk_full(exc)
        where = self.url if not self.local else f"{self.url} (staging folder {self.root})"
        chain = _chain(exc)
        if any(isinstance(e, PermissionError) for e in chain) or code in (errno.EACCES, errno.EPERM, errno.EROFS):
            err: WriteError = WriteError(
                f"permission denied {what} {where}: {exc}. Fix: choose a destination this user may write "
                f"(uid {os.getuid()}), or fix the permissions / credentials")
            err.__cause__ = AccessDeniedError(str(exc))
            return err
        names = {type(e).__name__ for e in chain}
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                    "ServerDisconnectedError", "ConnectionClosedError"} or any(
                isinstance(e, ConnectionError | TimeoutError) for e in chain):
            err = WriteError(
                f"cannot reach storage while {what} {where} (gave up after bounded retries): {exc}. Fix: check "
                "the endpoint URL and network, then rerun the same command: it resumes")
            err.__cause__ = StorageUnavailableError(str(exc))
            return err
        return WriteError(f"failed {what} {where}: {type(exc).__name__}: {exc}. A rerun of the same command resumes")

    def _disk_full(self, exc: BaseException) -> DiskFullError:
        needed = None
        with contextlib.suppress(Exception):
            needed = int(self.remaining_bytes()) if self.remaining_bytes else None
        free = None
        with contextlib.suppress(OSError):
            st = os.statvfs(self.root if os.path.exists(self.root) else os.path.dirname(self.root))
            free = st.f_bavail * st.f_frsize
        kept = len(self._done)
        need_s = f"about {needed / MiB:.1f} MiB still to write" if needed is not None else "more space"
        free_s = f", {free / MiB:.1f} MiB free there" if free is not None else ""
        where = f"{self.url} (staging folder {self.root})" if self.local else self.url
        return DiskFullError(
            f"disk full writing {where}: {need_s}{free_s}; {kept} finished objects are kept. Fix: free at least "
            "that much space (or choose a destination on a larger filesystem), then rerun the same command: "
            f"it resumes ({os.strerror(getattr(exc, 'errno', errno.ENOSPC) or errno.ENOSPC)})",
            needed_bytes=needed,
        )


#: filesystems that hold no files of their own: writing a store there can never work
_SPECIAL_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs", "tracefs",
               "bpf", "configfs", "fusectl", "pstore", "efivarfs", "mqueue", "binfmt_misc", "autofs"}


def _mount_of(path: str) -> tuple[str, str] | None:
    """(mount point, filesystem type) holding ``path`` (an existing path), from /proc/self/mounts."""
    best: tuple[str, str] | None = None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                        best is None or len(point) > len(best[0])):
                    best = (point, parts[2])
    except OSError:
        return None
    return best


def _check_local_parent(url: str, root: str) -> None:
    """Refuse, before creating anything, a destination whose folder cannot hold a store: under a
    file, on a virtual filesystem (/proc, /sys), or in a folder this user may not write."""
    parent = os.path.dirname(os.path.abspath(root)) or "/"
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "/"
    existing = os.path.realpath(existing)
    if not os.path.isdir(existing):
        raise WriteError(f"cannot write {url}: {existing} is a file, not a folder. Fix: choose a destination "
                         "path whose parent is a folder")
    mount = _mount_of(existing)
    if mount is not None and mount[1] in _SPECIAL_FS:
        raise WriteError(f"cannot write {url}: {mount[0]} is a {mount[1]} filesystem (virtual files of the kernel), "
                         "which cannot hold a Zarr store. Fix: choose a destination on a real disk or an object store")
    if not os.access(existing, os.W_OK):
        raise WriteError(f"permission denied: cannot create {url} in {existing} (uid {os.getuid()} may not write "
                         "there). Fix: choose a destination this user may write, or fix the folder's permissions")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _listing(entries: list[str], folder: str | None, total: int | None = None) -> str:
    shown = []
    for e in entries[:5]:
        shown.append(e + "/" if folder is not None and os.path.isdir(os.path.join(folder, e)) else e)
    n = total if total is not None else len(entries)
    more = f" and {n - len(shown)} more" if n > len(shown) else ""
    noun = "entry" if n == 1 else "entries"
    return f"{n} {noun}: {', '.join(shown)}{more}"
