"""``zarrloader sync SRC DST --select A:B``: copy samples [A, B) of a store, touching only the objects
the selection needs, with metadata rewritten for the subset.

* Objects whose rows line up with the selection (start on a chunk/shard boundary along axis 0) are
  copied byte for byte, without decoding. Otherwise the rows are decoded and re-encoded by zarr itself
  (into an in-memory store holding the destination metadata), so codecs and sharding are preserved.
* Atomic: metadata is written last, so DST is never a readable half store. A local DST is staged in a
  sibling ``DST.zarrloader-partial`` directory and renamed into place; an object-store DST gets its
  objects first and its metadata documents (zarr.json / .zarray / .zgroup / .zmetadata) at the end.
* Resumable: a manifest in the staging area records finished objects; rerunning the same command
  skips them. A different selection over the same staging area is refused (start over with restart=True).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from .errors import DatasetLayoutError, WriteError, ZarrLoaderError
from .source import ZarrSource, translate_error
from .storage import Location, StorageOptions, filesystem, parse_url

MANIFEST = ".zarrloader-sync.json"
PARTIAL_SUFFIX = ".zarrloader-partial"
V2_META = (".zarray", ".zgroup", ".zattrs", ".zmetadata")
V3_META = ("zarr.json",)


@dataclass
class SyncResult:
    dst: str
    rows: tuple[int, int]
    objects_total: int
    copied_raw: int = 0
    reencoded: int = 0
    skipped_done: int = 0
    bytes_written: int = 0
    arrays: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
    """One destination object row: all objects of ``array`` for object-row ``j`` on axis 0."""

    array: str
    j: int

    @property
    def key(self) -> str:
        return f"{self.array}#{self.j}"


def parse_select(text: str | None, n: int) -> tuple[int, int]:
    """'A:B', 'A:', ':B' or None -> clipped (start, stop) on axis 0."""
    if text is None or text.strip() in ("", ":"):
        return 0, n
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"--select takes START:STOP on the sample axis (e.g. 0:1000), got {text!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else n
    except ValueError as exc:
        raise ValueError(f"--select takes integers START:STOP, got {text!r}") from exc
    start, stop, _ = slice(start, stop).indices(n)
    if stop <= start:
        raise ValueError(f"--select {text!r} is empty for {n} samples")
    return start, stop


class _Target:
    """Where objects go: a staging directory (local DST) or DST itself (object store)."""

    def __init__(self, loc: Location, opts: StorageOptions) -> None:
        if loc.read_only:
            raise WriteError(f"cannot write to {loc.url}: http(s) is read-only; sync to s3://, gs:// or a path")
        self.loc = loc
        self.local = loc.protocol == "file"
        self.fs = filesystem(loc, opts)
        self.final = loc.path.rstrip("/")
        self.root = self.final + PARTIAL_SUFFIX if self.local else self.final

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        p = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = f"{p}.tmp-{threading.get_ident()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, p)
        else:
            self.fs.pipe_file(p, data)

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self.path(key)))
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def final_exists(self) -> bool:
        if self.local:
            return os.path.exists(self.final)
        return any(self.fs.exists(f"{self.final}/{m}") for m in (*V3_META, ".zarray", ".zgroup"))

    def clear_final(self) -> None:
        """--overwrite on an object store: remove the old store first, so no mix of old and new
        objects is ever readable (the new one appears when its metadata lands)."""
        if not self.local and self.fs.exists(self.final):
            self.fs.rm(self.final, recursive=True)

    def commit(self) -> None:
        if not self.local:
            return
        old = None
        if os.path.exists(self.final):  # overwrite: swap, then delete the old copy
            old = f"{self.final}.zarrloader-old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.root, self.final)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def _meta_docs(src_fs: Any, base: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for name in (*V3_META, *V2_META):
        key = f"{prefix}/{name}" if prefix else name
        try:
            out[key] = bytes(src_fs.cat_file(f"{base}/{key}"))
        except FileNotFoundError:
            continue
    return out


def _reshape_doc(doc: dict[str, Any], length: int) -> None:
    if "shape" in doc and isinstance(doc["shape"], list) and doc["shape"]:
        doc["shape"][0] = length


def sync_subset(src: str, dst: str, select: str | tuple[int, int] | None = None, *,
                arrays: list[str] | None = None,
                src_options: StorageOptions | Mapping[str, Any] | None = None,
                dst_options: StorageOptions | Mapping[str, Any] | None = None,
                concurrency: int = 16, overwrite: bool = False, restart: bool = False,
                progress: bool = True, on_item: Callable[[int, int], None] | None = None) -> SyncResult:
    """Copy rows ``select`` of ``src`` (an array or a group of aligned arrays) to ``dst``.

    ``on_item(done, total)`` is called after every finished object row (it may raise to stop: the
    partial sync stays resumable)."""
    source = ZarrSource(src, arrays=arrays, storage_options=src_options).open()
    n = len(source)
    start, stop = select if isinstance(select, tuple) else parse_select(select, n)
    if not 0 <= start < stop <= n:
        raise ValueError(f"selection {start}:{stop} out of range for {n} samples")
    target = _Target(parse_url(dst), StorageOptions.coerce(dst_options))
    if target.final_exists() and not overwrite:
        raise WriteError(f"{dst} already exists: choose another destination or pass overwrite=True (--overwrite)")
    if restart and target.local and os.path.exists(target.root):
        shutil.rmtree(target.root)
    if overwrite:
        target.clear_final()

    src_fs = filesystem(source.location, source.options)
    base = source.location.path.rstrip("/") if source.location.protocol != "http" else source.location.url.rstrip("/")
    handles = source._handles()
    params = {"src": source.url, "rows": [start, stop], "arrays": list(source.names)}
    manifest = _load_manifest(target, params, restart)
    done: set[str] = set(manifest["done"])

    items: list[_Item] = []
    for info in source.infos:
        obj = info.object_shape[0]
        rows_out = stop - start
        items += [_Item(info.name, j) for j in range(math.ceil(rows_out / obj))]
    result = SyncResult(dst=dst, rows=(start, stop), objects_total=len(items), arrays=list(source.names))
    todo = [it for it in items if it.key not in done]
    result.skipped_done = len(items) - len(todo)
    lock = threading.Lock()
    meta_for: dict[str, dict[str, bytes]] = {
        info.name: _meta_docs(src_fs, base, handles[info.name].path.strip("/") if info.name else "")
        for info in source.infos
    }

    def work(it: _Item) -> tuple[int, bool]:
        info = next(i for i in source.infos if i.name == it.array)
        return _copy_row(source, handles[it.array], info, it.j, start, stop, src_fs, base, target, meta_for[it.array])

    bar = _progress(len(items), result.skipped_done, progress)
    futures: dict[Any, _Item] = {}
    try:
        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            futures = {pool.submit(work, it): it for it in todo}
            for fut in as_completed(futures):
                it = futures[fut]
                try:
                    written, raw = fut.result()
                except ZarrLoaderError:
                    raise
                except Exception as exc:
                    raise translate_error(exc, f"{source.url} -> {dst}", f"syncing {it.array or 'array'} row {it.j} of") from exc
                with lock:
                    done.add(it.key)
                    result.bytes_written += written
                    if raw:
                        result.copied_raw += 1
                    else:
                        result.reencoded += 1
                    if len(done) % 16 == 0:
                        _save_manifest(target, params, done)
                bar.update(1)
                if on_item is not None:
                    on_item(len(done), len(items))
    except BaseException:
        for f in futures:
            f.cancel()
        _save_manifest(target, params, done)
        bar.close()
        raise
    bar.close()
    _write_metadata(source, target, src_fs, base, stop - start, meta_for)
    target.delete(MANIFEST)
    target.commit()
    return result


def _copy_row(source: ZarrSource, arr: Any, info: Any, j: int, start: int, stop: int, src_fs: Any, base: str,
              target: _Target, meta: dict[str, bytes]) -> tuple[int, bool]:
    """Write destination object row ``j`` of one array; returns (bytes written, copied raw?)."""
    import itertools

    obj = info.object_shape
    prefix = arr.path.strip("/") if info.name else ""
    enc = arr.metadata.encode_chunk_key
    other = [range(math.ceil(s / o)) for s, o in zip(info.shape[1:], obj[1:], strict=True)]
    written = 0
    if start % obj[0] == 0:  # aligned: the source object row maps 1:1, copy bytes
        src_row = start // obj[0] + j
        for rest in itertools.product(*other):
            key = enc((src_row, *rest))
            try:
                data = src_fs.cat_file(f"{base}/{prefix}/{key}" if prefix else f"{base}/{key}")
            except FileNotFoundError:
                continue  # never written: stays missing (reads as fill_value)
            dkey = enc((j, *rest))
            target.put(f"{prefix}/{dkey}" if prefix else dkey, bytes(data))
            written += len(data)
        return written, True
    # unaligned: decode the rows and let zarr re-encode them with the destination metadata
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    proto = default_buffer_prototype()
    length = stop - start
    docs: dict[str, Any] = {}
    for k, v in meta.items():
        name = k.rsplit("/", 1)[-1]
        if name in ("zarr.json", ".zarray"):
            doc = json.loads(v)
            _reshape_doc(doc, length)
            docs[name] = proto.buffer.from_bytes(json.dumps(doc).encode())
        elif name == ".zattrs":
            docs[name] = proto.buffer.from_bytes(v)
    objects: dict[str, Any] = dict(docs)  # MemoryStore keeps its objects in this very dict
    out = zarr.open_array(store=MemoryStore(store_dict=objects), mode="r+")
    r0, r1 = j * obj[0], min(length, (j + 1) * obj[0])
    out[r0:r1] = source.read_array_rows(info.name, start + r0, start + r1)
    for key, buf in objects.items():
        if key in docs:
            continue
        data = buf.to_bytes()
        target.put(f"{prefix}/{key}" if prefix else key, data)
        written += len(data)
    return written, False


def _write_metadata(source: ZarrSource, target: _Target, src_fs: Any, base: str, length: int,
                    meta_for: dict[str, dict[str, bytes]]) -> None:
    """Array documents, then the groups above them (root last): the store appears whole or not at all."""
    names = set(source.names)
    for docs in meta_for.values():
        for key, data in docs.items():
            if key.rsplit("/", 1)[-1] in ("zarr.json", ".zarray"):
                doc = json.loads(data)
                _reshape_doc(doc, length)
                data = json.dumps(doc, indent=2).encode()
            target.put(key, data)
    prefixes: set[str] = set()
    for name in names:
        parts = source._handles()[name].path.strip("/").split("/")[:-1] if name else []
        prefixes.update("/".join(parts[:i]) for i in range(len(parts), 0, -1))
    for prefix in sorted(prefixes, key=lambda p: -p.count("/")):
        for key, data in _meta_docs(src_fs, base, prefix).items():
            target.put(key, _rewrite_group_doc(key, data, length, names))
    if names != {""}:
        for key, data in _meta_docs(src_fs, base, "").items():
            target.put(key, _rewrite_group_doc(key, data, length, names))


def _rewrite_group_doc(key: str, data: bytes, length: int, names: set[str]) -> bytes:
    """Consolidated metadata (v3 inside zarr.json, v2 in .zmetadata) lists array shapes: update them
    and drop arrays that were not copied."""
    doc = json.loads(data)
    fname = key.rsplit("/", 1)[-1]
    if fname == "zarr.json" and isinstance(doc.get("consolidated_metadata"), dict):
        meta = doc["consolidated_metadata"].get("metadata", {})
        for name in list(meta):
            entry = meta[name]
            if entry.get("node_type") == "array":
                if name in names:
                    _reshape_doc(entry, length)
                else:
                    del meta[name]
    elif fname == ".zmetadata":
        meta = doc.get("metadata", {})
        for k in list(meta):
            node, _, leaf = k.rpartition("/")
            if leaf == ".zarray":
                if node in names:
                    _reshape_doc(meta[k], length)
                else:
                    meta.pop(k)
                    meta.pop(f"{node}/.zattrs", None)
    return json.dumps(doc, indent=2).encode()


def _load_manifest(target: _Target, params: dict[str, Any], restart: bool) -> dict[str, Any]:
    raw = None if restart else target.get(MANIFEST)
    if raw is None:
        return {**params, "done": []}
    m = json.loads(raw)
    if {k: m.get(k) for k in params} != params:
        raise DatasetLayoutError(
            f"an unfinished sync with other parameters is staged at {target.path('')} ({ {k: m.get(k) for k in params} }). "
            "Fix: rerun it with the same source/selection to finish it, or pass restart=True (--restart)"
        )
    return m


def _save_manifest(target: _Target, params: dict[str, Any], done: set[str]) -> None:
    target.put(MANIFEST, json.dumps({**params, "done": sorted(done)}).encode())


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
