"""``zarrloader sync SRC DST --select A:B``: copy samples [A, B) of a store (an array, a group of
arrays, or a whole xarray dataset), touching only the objects the selection needs.

* **Dimensions.** Arrays along the sample dimension (``dims``: zarr v3 ``dimension_names``, v2
  ``_ARRAY_DIMENSIONS``) are cut along it, wherever it sits in their shape; every other array
  (coordinates, static fields) is copied whole. Attributes and consolidated metadata are kept,
  rewritten for the new length, so ``xarray.open_zarr(DST)`` is ``ds.isel(time=slice(A, B))``.
* **Objects.** Where the selection starts on an object boundary along the sample axis, objects are
  copied byte for byte; otherwise each destination object is decoded from the source rows and
  re-encoded by zarr with the destination metadata (codecs and sharding are kept).
* **Verified.** Every copied object is decoded before it is written (``verify=False`` /
  ``--no-verify`` skips it): a corrupt source chunk stops the sync naming its key, and nothing
  corrupt lands at DST.
* **Safe, atomic, resumable** through :class:`zarrloader.staging.StagedWriter`: ``overwrite`` replaces
  only a Zarr store or a partial store sync left; metadata is written last; every finished object is
  journalled as it is written, so an interrupt (SIGINT, SIGKILL, a full disk, a dead server) keeps
  it and a rerun of the same command resumes per object.
* **Bounded.** Every storage request goes through a backend (``zarrloader.backends``) and ends, in
  ``StorageUnavailableError`` if need be, within its deadline (connect + read x (retries + 1) + grace).
"""

from __future__ import annotations

import itertools
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend, open_backend
from .errors import (
    AccessDeniedError,
    ChunkReadError,
    DatasetLayoutError,
    StorageUnavailableError,
    StoreNotFoundError,
    ZarrLoaderError,
)
from .staging import PARTIAL_SUFFIX, StagedWriter, check_not_inside
from .storage import Location, StorageOptions, parse_url

__all__ = ["PARTIAL_SUFFIX", "SyncResult", "parse_select", "sync_subset"]

#: how long an interrupted sync waits for the objects being written to finish (they are kept)
INTERRUPT_GRACE_S = 10.0


@dataclass
class SyncResult:
    dst: str
    rows: tuple[int, int]
    objects_total: int  # destination objects (units of work), including those found done
    copied_raw: int = 0
    reencoded: int = 0
    skipped_done: int = 0  # finished by an earlier run of the same command
    missing: int = 0  # not stored in the source (they read as fill_value): nothing to copy
    bytes_written: int = 0
    arrays: list[str] = field(default_factory=list)  # sampled along the sample dimension
    static: list[str] = field(default_factory=list)  # copied whole
    sample_dim: str | None = None
    verified: bool = True


def parse_select(text: str | None, n: int) -> tuple[int, int]:
    """'A:B', 'A:', ':B' or None -> (start, stop) over ``n`` samples. Negative values count from the
    end, as in Python; a selection reaching past the end is refused, not clipped."""
    if text is None or text.strip() in ("", ":"):
        return 0, n
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--select takes START:STOP along the sample dimension (e.g. 0:1000), got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else n
    except ValueError as exc:
        raise ValueError(f"--select takes integers START:STOP, got {text!r}") from exc
    a = start + n if start < 0 else start
    b = stop + n if stop < 0 else stop
    if not (0 <= a <= n and 0 <= b <= n):
        raise ValueError(f"--select {text!r} reaches outside the {n} samples there are (valid: 0 to {n}). "
                         f"Fix: use e.g. --select 0:{n}, or ':' for everything")
    if b <= a:
        raise ValueError(f"--select {text!r} is empty ({n} samples). Fix: give START < STOP, e.g. --select 0:{n}")
    return a, b


@dataclass
class _Plan:
    """One source array and how it is copied."""

    name: str  # path inside the source node; "" when the source is an array
    arr: Any  # zarr.Array
    axis: int | None  # axis of the sample dimension; None: static, copied whole
    docs: dict[str, bytes]  # its own metadata documents, by leaf name (zarr.json or .zarray/.zattrs)
    local: threading.local = field(default_factory=threading.local)

    @property
    def prefix(self) -> str:
        return self.arr.path.strip("/") if self.name else ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.arr.shape)

    @property
    def obj(self) -> tuple[int, ...]:
        shards = getattr(self.arr, "shards", None)
        return tuple(int(s) for s in (shards or self.arr.chunks))

    def key(self, coords: Sequence[int]) -> str:
        k = self.arr.metadata.encode_chunk_key(tuple(coords))
        return f"{self.prefix}/{k}" if self.prefix else k

    def dst_shape(self, length: int) -> tuple[int, ...]:
        shape = list(self.shape)
        if self.axis is not None:
            shape[self.axis] = length
        return tuple(shape)

    def raw_copy(self, start: int) -> bool:
        return self.axis is None or start % self.obj[self.axis] == 0

    def region(self, coords: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(c * o, min((c + 1) * o, s)) for c, o, s in zip(coords, self.obj, shape, strict=True))


@dataclass(frozen=True)
class _Unit:
    """One destination object: object ``coords`` of array ``plan``."""

    plan: int
    coords: tuple[int, ...]

    def id(self, plans: Sequence[_Plan]) -> str:
        return f"{plans[self.plan].name}@{'.'.join(map(str, self.coords))}"


def _reshape(doc: dict[str, Any], axis: int | None, length: int) -> None:
    if axis is not None and isinstance(doc.get("shape"), list) and len(doc["shape"]) > axis:
        doc["shape"][axis] = length


def _open_source(backend: Backend, url: str, arrays: Sequence[str] | None) -> tuple[bool, dict[str, Any]]:
    """(is a group, {name: zarr.Array}) of the source, every request bounded by the deadline."""
    import zarr

    async def open_all() -> tuple[bool, dict[str, Any], list[str]]:
        import zarr.api.asynchronous as za
        from zarr.core.array import AsyncArray

        node = await za.open(store=backend.zarr_store(read_only=True), mode="r")
        if isinstance(node, AsyncArray):
            return False, {"": node}, []
        available = sorted([k async for k in node.array_keys()])
        out: dict[str, Any] = {}
        for name in arrays if arrays is not None else available:
            try:
                member = await node.getitem(name)
            except KeyError:
                return True, {}, [name, *available]
            if not isinstance(member, AsyncArray):
                raise DatasetLayoutError(f"{url}/{name} is a group, not an array: name its arrays with --arrays")
            out[name] = member
        return True, out, []

    what = f"opening {url}"
    try:
        is_group, found, missing = backend.run(open_all(), what)
    except StoreNotFoundError as exc:
        raise StoreNotFoundError(_not_found(backend, url, exc)) from exc
    except ZarrLoaderError:
        raise
    except Exception as exc:
        err = backend.translate(exc, what)
        raise (StoreNotFoundError(_not_found(backend, url, exc)) if isinstance(err, StoreNotFoundError) else err) from exc
    if missing:
        raise StoreNotFoundError(f"no array {missing[0]!r} in {url}; available: {missing[1:]}. Fix: check --arrays")
    if not found:
        raise DatasetLayoutError(f"group {url} has no arrays: point SRC at an array or a group holding some")
    if not is_group and arrays:
        raise DatasetLayoutError(f"{url} is an array, not a group: drop --arrays")
    return is_group, {n: zarr.Array(a) for n, a in found.items()}


def _not_found(backend: Backend, url: str, exc: BaseException) -> str:
    bucket = backend.location.bucket
    if bucket:
        try:
            if backend.bucket_exists() is False:
                return (f"bucket {bucket!r} does not exist (or is not visible to these credentials) for {url}. "
                        "Fix: check the bucket name, the region and the endpoint URL")
        except ZarrLoaderError:
            pass  # best effort: the message below still applies
    cause = exc.__cause__ if isinstance(exc, ZarrLoaderError) and exc.__cause__ is not None else exc
    return (f"no Zarr array or group at {url} (no zarr.json/.zarray/.zgroup found: {cause}). "
            "Fix: check the path; for a member of a group append /NAME or pass --arrays")


def _docs(backend: Backend, prefix: str, names: Sequence[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in names:
        data = backend.get(f"{prefix}/{name}" if prefix else name)
        if data is not None:
            out[name] = data
    return out


ARRAY_DOCS = {3: ("zarr.json",), 2: (".zarray", ".zattrs")}
GROUP_DOCS = {3: ("zarr.json",), 2: (".zgroup", ".zattrs", ".zmetadata")}


def _rewrite_group_doc(leaf: str, data: bytes, prefix: str, plans: Mapping[str, _Plan], length: int) -> bytes:
    """A group document with consolidated metadata (v3 inside zarr.json, v2 in .zmetadata) lists its
    members' metadata: shapes of sampled arrays are updated, members that were not copied dropped."""
    doc = json.loads(data)

    def rel(full: str) -> str:
        return full[len(prefix) + 1 :] if prefix else full

    copied = {rel(n): p for n, p in plans.items()}
    groups = {"/".join(n.split("/")[:i]) for n in copied for i in range(1, n.count("/") + 1)}
    if leaf == "zarr.json" and isinstance(doc.get("consolidated_metadata"), dict):
        meta = doc["consolidated_metadata"].get("metadata", {})
        for name in list(meta):
            entry = meta[name]
            if entry.get("node_type") == "array" and name in copied:
                _reshape(entry, copied[name].axis, length)
            elif name not in groups:
                del meta[name]
    elif leaf == ".zmetadata":
        meta = doc.get("metadata", {})
        for k in list(meta):
            node, _, name = k.rpartition("/")
            if name == ".zarray" and node in copied:
                _reshape(meta[k], copied[node].axis, length)
            elif node and node not in copied and node not in groups:
                meta.pop(k)
    return json.dumps(doc, indent=2).encode()


class _Verifier:
    """Decodes one stored object of a source array in memory, with the array's own metadata: zarr's
    codecs are the judge of whether the bytes are a valid chunk (or shard)."""

    def __init__(self, plan: _Plan) -> None:
        import zarr
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        self.proto = default_buffer_prototype()
        self.objects: dict[str, Any] = {k: self.proto.buffer.from_bytes(v) for k, v in plan.docs.items()}
        self.arr = zarr.open_array(store=MemoryStore(store_dict=self.objects), mode="r")
        self.plan = plan

    def check(self, coords: Sequence[int], data: bytes) -> None:
        key = self.arr.metadata.encode_chunk_key(tuple(coords))
        self.objects[key] = self.proto.buffer.from_bytes(data)
        try:
            self.arr[self.plan.region(coords, self.plan.shape)]
        finally:
            self.objects.pop(key, None)


class _Encoder:
    """An in-memory destination array (the destination metadata): writing one object's region makes
    zarr encode exactly that object, which is then taken out of the dict and written to DST."""

    def __init__(self, plan: _Plan, length: int) -> None:
        import zarr
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore

        proto = default_buffer_prototype()
        docs: dict[str, Any] = {}
        for name, data in plan.docs.items():
            if name in ("zarr.json", ".zarray"):
                doc = json.loads(data)
                _reshape(doc, plan.axis, length)
                data = json.dumps(doc).encode()
            docs[name] = proto.buffer.from_bytes(data)
        self.docs = set(docs)
        self.objects: dict[str, Any] = dict(docs)
        self.arr = zarr.open_array(store=MemoryStore(store_dict=self.objects), mode="r+")

    def encode(self, region: tuple[slice, ...], block: Any) -> dict[str, bytes]:
        self.arr[region] = block
        out = {k: v.to_bytes() for k, v in self.objects.items() if k not in self.docs}
        for k in out:
            del self.objects[k]
        return out


def sync_subset(src: str, dst: str, select: str | tuple[int, int] | None = None, *,
                arrays: list[str] | None = None, sample_dim: str | None = None,
                src_options: StorageOptions | Mapping[str, Any] | None = None,
                dst_options: StorageOptions | Mapping[str, Any] | None = None,
                concurrency: int = 16, overwrite: bool = False, restart: bool = False, verify: bool = True,
                progress: bool = True, on_item: Callable[[int, int], None] | None = None) -> SyncResult:
    """Copy samples ``select`` (along the sample dimension) of ``src`` to ``dst``; see the module docstring.

    ``sample_dim``: the dimension to select along (default: the one most data arrays share on axis 0;
    axis 0 for stores without dimension names). ``on_item(done, total)`` is called after every
    finished destination object (it may raise to stop: the partial sync stays resumable)."""
    from .dims import array_meta, dataset_layout

    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}. Fix: e.g. --concurrency 16")
    src_loc = parse_url(src)
    parse_url(dst)  # a malformed DST fails before anything is read
    check_not_inside(src, dst)
    backend = open_backend(src_loc, StorageOptions.coerce(src_options))
    try:
        is_group, found = _open_source(backend, src_loc.url, arrays)
        layout = dataset_layout([array_meta(n, a) for n, a in found.items()], sample_dim, where=src_loc.url)
        start, stop = select if isinstance(select, tuple) else parse_select(select, layout.length)
        if not 0 <= start < stop <= layout.length:
            raise ValueError(f"selection {start}:{stop} is outside the {layout.length} samples of {src_loc.url}")
        length = stop - start
        plans = []
        for name, arr in found.items():
            fmt = int(arr.metadata.zarr_format)
            prefix = arr.path.strip("/") if name else ""
            plans.append(_Plan(name, arr, layout.axis_of(name), _docs(backend, prefix, ARRAY_DOCS[fmt])))
        group_docs = _group_docs(backend, plans, is_group)
        job = {"tool": "sync", "src": src_loc.url, "rows": [start, stop], "sample_dim": layout.sample_dim,
               "arrays": [p.name for p in plans]}
        units = [_Unit(i, tuple(c)) for i, p in enumerate(plans)
                 for c in itertools.product(*(range(math.ceil(s / o)) for s, o in zip(p.dst_shape(length), p.obj, strict=True)))]
        result = SyncResult(dst=dst, rows=(start, stop), objects_total=len(units), sample_dim=layout.sample_dim,
                            arrays=[p.name for p in plans if p.axis is not None],
                            static=[p.name for p in plans if p.axis is None], verified=verify)
        copier = _Copier(backend, src_loc, plans, start, length, verify, result)
        with StagedWriter(dst, dst_options, job=job, overwrite=overwrite, restart=restart, tool="sync",
                          remaining_bytes=copier.remaining_bytes) as writer:
            copier.writer = writer
            todo = [u for u in units if not copier.finished(u)]
            result.skipped_done = len(units) - len(todo)
            copier.todo = len(todo)
            _run_units(todo, copier.copy, concurrency, len(units), result.skipped_done, progress, on_item)
            for p in plans:
                for leaf, data in p.docs.items():
                    if leaf in ("zarr.json", ".zarray"):
                        doc = json.loads(data)
                        _reshape(doc, p.axis, length)
                        data = json.dumps(doc, indent=2).encode()
                    writer.set_metadata(f"{p.prefix}/{leaf}" if p.prefix else leaf, data)
            by_name = {p.prefix: p for p in plans}
            for prefix, docs in group_docs.items():
                inside = {n: p for n, p in by_name.items() if not prefix or n.startswith(prefix + "/")}
                for leaf, data in docs.items():
                    writer.set_metadata(f"{prefix}/{leaf}" if prefix else leaf,
                                        _rewrite_group_doc(leaf, data, prefix, inside, length))
            writer.commit()
        return result
    finally:
        backend.close()


def _group_docs(backend: Backend, plans: Sequence[_Plan], is_group: bool) -> dict[str, dict[str, bytes]]:
    """The documents of the source group and of every group between it and a copied array."""
    if not is_group:
        return {}
    fmt = int(plans[0].arr.metadata.zarr_format)
    prefixes = {""}
    for p in plans:
        parts = p.prefix.split("/")[:-1]
        prefixes.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {prefix: _docs(backend, prefix, GROUP_DOCS[fmt]) for prefix in sorted(prefixes)}


class _Copier:
    """Copies one destination object (a ``_Unit``); thread-safe, called from the sync's workers."""

    def __init__(self, backend: Backend, loc: Location, plans: list[_Plan], start: int, length: int,
                 verify: bool, result: SyncResult) -> None:
        self.backend, self.loc, self.plans = backend, loc, plans
        self.start, self.length, self.verify, self.result = start, length, verify, result
        self.writer: StagedWriter | None = None
        self.lock = threading.Lock()
        self.todo = 0
        self.done = 0

    def finished(self, u: _Unit) -> bool:
        assert self.writer is not None
        p = self.plans[u.plan]
        return self.writer.unit_done(u.id(self.plans)) or self.writer.is_done(p.key(u.coords))

    def remaining_bytes(self) -> int:
        """Estimate for the disk-full message: the mean object written so far x objects left."""
        left = max(0, self.todo - self.done)
        r = self.result
        written = r.copied_raw + r.reencoded
        if written and r.bytes_written:
            return int(r.bytes_written / written * left)
        p = self.plans[0]
        try:
            itemsize = int(p.arr.dtype.itemsize)
        except (AttributeError, TypeError):
            itemsize = 8
        return math.prod(p.obj) * itemsize * left

    def _url(self, key: str) -> str:
        return self.loc.child(key).url

    def copy(self, u: _Unit) -> None:
        assert self.writer is not None
        p = self.plans[u.plan]
        if p.raw_copy(self.start):
            src_coords = list(u.coords)
            if p.axis is not None:
                src_coords[p.axis] += self.start // p.obj[p.axis]
            data = self.backend.get(p.key(src_coords))
            if data is None:  # never written: stays missing (reads as fill_value)
                written, kind = 0, "missing"
            else:
                if self.verify:
                    self._check(p, src_coords, data)
                self.writer.put(p.key(u.coords), data)
                written, kind = len(data), "raw"
        else:
            written, kind = self._reencode(p, u.coords), "reencoded"
        self.writer.mark(u.id(self.plans))
        with self.lock:
            self.done += 1
            self.result.bytes_written += written
            if kind == "raw":
                self.result.copied_raw += 1
            elif kind == "reencoded":
                self.result.reencoded += 1
            else:
                self.result.missing += 1

    def _check(self, p: _Plan, coords: Sequence[int], data: bytes) -> None:
        verifier = getattr(p.local, "verifier", None)
        if verifier is None:
            verifier = p.local.verifier = _Verifier(p)
        try:
            verifier.check(coords, data)
        except Exception as exc:
            key = p.key(coords)
            raise ChunkReadError(
                f"corrupt or undecodable chunk {self._url(key)} (array {p.name or '(root)'}): {type(exc).__name__}: "
                f"{exc}. Nothing of it was written to the destination. Fix: rewrite that object from the original "
                "data (or sync from a good replica), or check the codecs installed match the array's metadata; "
                "--no-verify copies without decoding", key=key) from exc

    def _reencode(self, p: _Plan, coords: tuple[int, ...]) -> int:
        assert self.writer is not None and p.axis is not None
        region = p.region(coords, p.dst_shape(self.length))
        src_region = list(region)
        sl = region[p.axis]
        src_region[p.axis] = slice(sl.start + self.start, sl.stop + self.start)
        aa = getattr(p.arr, "async_array", None) or p.arr._async_array
        what = f"reading {p.name or 'array'}[{', '.join(f'{s.start}:{s.stop}' for s in src_region)}] of {self.loc.url}"
        try:
            block = self.backend.run(aa.getitem(tuple(src_region)), what)
        except (StorageUnavailableError, AccessDeniedError, StoreNotFoundError):
            raise
        except ZarrLoaderError as exc:  # a decode error: name the object that fails
            self._find_bad(p, tuple(src_region))
            raise ChunkReadError(f"failed {what}: {exc}") from exc
        encoder = getattr(p.local, "encoder", None)
        if encoder is None:
            encoder = p.local.encoder = _Encoder(p, self.length)
        written = 0
        for key, data in encoder.encode(region, block).items():
            self.writer.put(f"{p.prefix}/{key}" if p.prefix else key, data)
            written += len(data)
        return written

    def _find_bad(self, p: _Plan, region: tuple[slice, ...]) -> None:
        spans = [range(s.start // o, math.ceil(s.stop / o)) for s, o in zip(region, p.obj, strict=True)]
        for coords in itertools.product(*spans):
            data = self.backend.get(p.key(coords))
            if data is not None:
                self._check(p, coords, data)


def _run_units(units: list[_Unit], work: Callable[[_Unit], None], concurrency: int, total: int, initial: int,
               progress: bool, on_item: Callable[[int, int], None] | None) -> None:
    """Run ``work`` over ``units`` on daemon threads (a thread stuck on a frozen server must not keep
    the process alive past the error: each request ends at its deadline anyway). The first failure
    stops the rest; an interrupt waits briefly for the objects being written, which are kept."""
    pending: queue.SimpleQueue[_Unit] = queue.SimpleQueue()
    for u in units:
        pending.put(u)
    results: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                u = pending.get_nowait()
            except queue.Empty:
                return
            try:
                work(u)
                results.put(None)
            except BaseException as exc:  # handed to the main thread
                results.put(exc)

    threads = [threading.Thread(target=worker, daemon=True, name=f"zarrloader-sync-{i}")
               for i in range(min(concurrency, len(units)))]
    for t in threads:
        t.start()
    bar = _progress(total, initial, progress)
    done = initial
    try:
        for _ in range(len(units)):
            while True:
                try:
                    outcome = results.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            if outcome is not None:
                raise outcome
            done += 1
            bar.update(1)
            if on_item is not None:
                on_item(done, total)
    except KeyboardInterrupt:
        stop.set()
        limit = time.monotonic() + INTERRUPT_GRACE_S
        for t in threads:
            t.join(max(0.0, limit - time.monotonic()))
        raise
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()
        bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="obj", desc="sync", leave=False)
