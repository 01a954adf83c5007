"""torchdata.nodes building blocks of the loader.

    PlanFetch (the epoch plan + fetches in flight: on zarr's loop, or threads in patch mode)
        --> ShuffleBatcher --> transform --> [PinMemory] --> Prefetcher

State goes down the pipeline through ``reset(initial_state)``, as torchdata's own nodes pass it to
their sources: ``ShuffleBatcher`` owns the epoch and the sample position (its state is just
``{epoch, position}``, because the plan is a pure function of the config, see plan.py) and resets
``PlanFetch`` with them; ``PlanFetch`` computes the plan itself and emits whole buffers from the one
holding ``position``, each carrying the (immutable) plan it belongs to. Nothing is shared mutable
between the nodes. Restoring a state re-fetches the one buffer holding ``position`` and skips to it:
exact resume, whatever the upstream nodes were doing when the state was taken.

Every fetch is waited for at most the backend's deadline (``backends.Deadline``): a frozen store
becomes a ``StorageUnavailableError`` naming the endpoint, the rows and the settings, never a hang.
Read errors travel down the pipeline as ``Failure`` values rather than exceptions, so the user gets
the original exception object (type, message, chunk key) instead of a re-wrapped traceback string.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torchdata.nodes import BaseNode

from .backends.base import Pending
from .batchpool import BatchPool
from .errors import DatasetLayoutError, ZarrLoaderError
from .plan import EpochPlan, PlanConfig, ReadTask, make_plan, patch_starts, read_grouping, request_budget
from .source import ZarrSource


@dataclass
class Failure:
    """An exception raised while producing an item, carried as a value to the consumer."""

    exc: BaseException


@dataclass(frozen=True)
class PatchSpec:
    """Random windows of ``size`` along ``axes`` (axes of the stored arrays, >= 1; negative from the
    end), one per sample, drawn from (seed, epoch, row). Arrays with fewer dimensions (labels) are
    returned whole."""

    size: tuple[int, ...]
    axes: tuple[int, ...] = (-2, -1)

    def __post_init__(self) -> None:
        if len(self.size) != len(self.axes):
            raise ValueError(f"patch size {self.size} and axes {self.axes} must have the same length")
        if any(s < 1 for s in self.size):
            raise ValueError(f"patch size must be positive, got {self.size}")


ReadGroup = tuple[ReadTask, ...]


class ReadConfig(Protocol):
    """What the fetch node needs of the loader's config (``loader.LoaderConfig`` has it all)."""

    batch_size: int
    shuffle: bool
    seed: int
    shuffle_buffer_chunks: int
    concurrency: int
    rank: int
    world_size: int
    patch: PatchSpec | None
    initial_epoch: int
    min_read_bytes: int


@dataclass(frozen=True)
class ReadSetup:
    """Derived once metadata is open: the plan's config, reads per fetch, and patch extents."""

    plan_config: PlanConfig
    group: int
    extents: tuple[int, ...] | None


def read_setup(source: ZarrSource, config: ReadConfig) -> ReadSetup:
    """A pure function of the (opened) source and the config: opens metadata on first use, in the
    process that calls it."""
    extents = patch_extents(source, config.patch) if config.patch is not None else None
    group, buffered = read_grouping(config, source.block_length * source.sample_nbytes)
    plan_config = PlanConfig(num_samples=len(source), block_length=source.block_length, shuffle=config.shuffle,
                             seed=config.seed, rank=config.rank, world_size=config.world_size, buffer_blocks=buffered)
    return ReadSetup(plan_config, group, extents)


def patch_extents(source: ZarrSource, patch: PatchSpec) -> tuple[int, ...]:
    extents: dict[tuple[int, ...], list[str]] = {}
    for info in source.infos:
        axes = source.patch_axes(info, patch.axes)
        if axes is not None:
            extents.setdefault(tuple(info.major_shape[a] for a in axes), []).append(info.name or "<array>")
    if not extents:
        raise DatasetLayoutError(f"no array of {source.url} has axes {patch.axes} (axis 0 is the sample axis)")
    if len(extents) > 1:
        raise DatasetLayoutError(
            f"arrays disagree on the extent of patch axes {patch.axes}: {extents}. Fix: select arrays of "
            "matching spatial size with arrays=[...]"
        )
    ext = next(iter(extents))
    if any(s > e for s, e in zip(patch.size, ext, strict=True)):
        raise DatasetLayoutError(f"patch size {patch.size} exceeds the array extent {ext} along axes {patch.axes}")
    return ext


@dataclass
class Fetched:
    tasks: ReadGroup
    data: list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class LoadedBuffer:
    """Buffer ``index`` of ``plan``: one dict of arrays per read task of the buffer, in plan order."""

    plan: EpochPlan
    index: int
    blocks: list[dict[str, np.ndarray]]


class Fetcher:
    """Reads one group of tasks' rows (or patches) through zarr, blocking; never raises. Used for patch
    mode (in threads) and to redo a failed fast-path fetch so that the error names the chunk."""

    def __init__(self, source: ZarrSource, patch: PatchSpec | None, seed: int,
                 extents: tuple[int, ...] | None = None) -> None:
        self.source = source
        self.patch = patch
        self.seed = seed
        self.extents = extents

    def __call__(self, group: ReadGroup) -> Fetched | Failure:
        try:
            if self.patch is None:
                return Fetched(group, self.source.read_ranges([(t.start, t.stop) for t in group]))
            return Fetched(group, [self._patches(t) for t in group])
        except Exception as exc:  # carried to the consumer, see module docstring
            return Failure(exc)

    def _patches(self, task: ReadTask) -> dict[str, np.ndarray]:
        assert self.patch is not None and self.extents is not None
        rows = []
        for row in range(task.start, task.stop):
            starts = patch_starts(self.seed, task.epoch, row, self.extents, self.patch.size)
            rows.append(self.source.read_patch(row, self.patch.axes, starts, self.patch.size))
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class PlanFetch(BaseNode[LoadedBuffer | Failure]):
    """Owns the epoch's plan and its fetches, and emits the plan's buffers in order.

    ``reset({"epoch": e, "position": p})`` computes the plan of epoch ``e`` and starts at the buffer
    holding sample ``p`` (``reset(None)``: the config's initial epoch, from the start). Reads are
    grouped into fetches of up to G reads that never cross a buffer (``plan.read_grouping``). Whole-row
    reads are submitted straight to zarr's event loop (``ZarrSource.submit_ranges``): no worker
    threads, and this node's thread only waits on the oldest fetch, for at most the backend's
    deadline. Measured on 2 cores against a thread pool: ~15 % less loader CPU per epoch at 1 MiB
    chunks (4 per fetch), and at 4 MiB chunks sequential 0.94-1.0 x raw against 0.79-0.87. Up to
    ``concurrency`` fetches are in flight, and no more than fit the request budget (fetches x G <=
    ``request_budget``: more would only queue for a connection). Patch mode (one zarr call per sample
    window) runs ``Fetcher`` in ``concurrency`` threads, each of its zarr calls bounded by the
    deadline. A fast-path fetch that fails for any reason but the storage itself is redone through
    zarr, so the error names the chunk. Until the first fetch of an epoch is in, at most
    ``START_BYTES`` of fetches (and at least that one) are in flight, so that it does not share the
    link with all the others (time to first batch at 16 MiB chunks, see docs/zarrloader.md)."""

    def __init__(self, source: ZarrSource, config: ReadConfig) -> None:
        super().__init__()
        self.source = source
        self.config = config
        self._plan: EpochPlan | None = None
        self._epoch = config.initial_epoch
        self._buffer = 0
        self._groups: deque[tuple[int, ReadGroup]] = deque()
        self._pending: deque[tuple[int, ReadGroup, Pending[Any] | None]] = deque()
        self._limit = 1
        self._start_limit = 1
        self._started = False
        self._contiguous = True
        self._fetcher: Fetcher | None = None
        self._threads: ThreadPoolExecutor | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._cancel()
        state = initial_state or {"epoch": self.config.initial_epoch, "position": 0}
        setup = read_setup(self.source, self.config)  # opens metadata: here, in the process that iterates
        _raise_zarr_concurrency(self.config.concurrency)
        plan = make_plan(setup.plan_config, int(state["epoch"]))
        self._plan, self._epoch = plan, plan.epoch
        self._buffer = plan.buffer_of(int(state["position"]))
        self._fetcher = Fetcher(self.source, self.config.patch, self.config.seed, setup.extents)
        g = max(1, setup.group)
        self._groups = deque()
        for b in range(self._buffer, plan.num_buffers):
            tasks = plan.buffer_tasks(b)
            self._groups.extend((b, tasks[i : i + g]) for i in range(0, len(tasks), g))
        c = max(1, self.config.concurrency)
        self._limit = c if self.config.patch is not None else max(1, min(c, request_budget(c) // g))
        # Until the first fetch is in, no more than START_BYTES in flight (at least the first fetch):
        # it shares the link with every other one, so with large chunks (16 x 16 MiB) it would mostly
        # arrive only with all of them; after it, the full pipe. Figures: docs/zarrloader.md.
        fetch_bytes = g * self.source.block_length * self.source.sample_nbytes
        self._start_limit = self._limit if self.config.patch is not None else \
            max(1, min(self._limit, START_BYTES // max(1, fetch_bytes)))
        self._started = False
        # Storage-order batches that do not tile the reads (longer than one, or not dividing it) cross
        # read boundaries: they are views only where the reads of a fetch lie back to back in one
        # block. Otherwise (and shuffled) a client's buffers may be adopted (see chunkread).
        self._contiguous = not self.config.shuffle and self.source.block_length % self.config.batch_size != 0

    def get_state(self) -> dict[str, Any]:
        offsets = self._plan.buffer_offsets if self._plan is not None else (0,)
        return {"epoch": self._epoch, "position": int(offsets[min(self._buffer, len(offsets) - 1)])}

    def next(self) -> LoadedBuffer | Failure:
        plan = self._plan
        if plan is None or self._buffer >= plan.num_buffers:
            raise StopIteration
        b = self._buffer
        blocks: list[dict[str, np.ndarray]] = []
        expected = plan.buffer_tasks(b)
        while len(blocks) < len(expected):
            self._fill()
            if not self._pending or self._pending[0][0] != b:
                return self._fail(RuntimeError(f"internal: buffer {b} lacks reads {expected[len(blocks):]}"))
            _, group, fut = self._pending.popleft()
            if self._started:
                self._fill()  # keep the pipe full while we wait
            item = self._result(group, fut)
            if isinstance(item, Failure):
                return self._fail(item.exc)
            if not self._started:
                self._started = True
                self._fill()
            blocks.extend(item.data)
        self._buffer += 1
        return LoadedBuffer(plan, b, blocks)

    def _fill(self) -> None:
        limit = self._limit if self._started else self._start_limit
        while self._groups and len(self._pending) < limit:
            b, group = self._groups.popleft()
            self._pending.append((b, group, self._submit(group)))

    def _submit(self, group: ReadGroup) -> Pending[Any] | None:
        assert self._fetcher is not None
        if self.config.patch is not None:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max(1, self.config.concurrency), thread_name_prefix="zarrloader-patch")
            return self._threads.submit(self._fetcher, group)
        try:
            return self.source.submit_ranges([(t.start, t.stop) for t in group], contiguous=self._contiguous)
        except Exception:  # e.g. opening failed: the synchronous redo reports it
            return None

    def _result(self, group: ReadGroup, fut: Pending[Any] | None) -> Fetched | Failure:
        assert self._fetcher is not None
        if fut is None:
            return self._fetcher(group)
        if self.config.patch is not None:
            return fut.result()  # type: ignore[no-any-return]  # (each zarr call inside is bounded)
        try:
            data = self.source.wait_fetch(fut, [(t.start, t.stop) for t in group])
        except ZarrLoaderError as exc:  # the storage itself: unreachable, frozen, denied
            return Failure(exc)
        if data is None:
            return self._fetcher(group)  # redo through zarr: the error then names the chunk
        return Fetched(group, data)

    def _fail(self, exc: BaseException) -> Failure:
        self._cancel()
        self._groups.clear()
        assert self._plan is not None
        self._buffer = self._plan.num_buffers
        return Failure(exc)

    def _cancel(self) -> None:
        while self._pending:
            _, _, fut = self._pending.popleft()
            if fut is not None:
                fut.cancel()


#: bytes of fetches in flight before the first one is in (see ``PlanFetch.reset``)
START_BYTES = 64 << 20


def _raise_zarr_concurrency(concurrency: int) -> None:
    import zarr

    # zarr's per-call chunk concurrency; a global setting, only ever raised.
    if int(zarr.config.get("async.concurrency") or 0) < concurrency:
        zarr.config.set({"async.concurrency": concurrency})


class ShuffleBatcher(BaseNode[Any]):
    """Takes buffers of K fetched reads, permutes their samples, emits batches (dicts of numpy arrays,
    plus ``index``: the global row of every sample). Batches may straddle two buffers. Its state is
    ``{epoch, position}``; ``reset`` hands both to its source. Full gathered batches are written into
    recycled memory (``batchpool``, up to ``pool_batches`` batches of it; 0: fresh memory)."""

    def __init__(self, source: PlanFetch, batch_size: int, drop_last: bool, return_index: bool,
                 initial_epoch: int = 0, decode: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
                 pool_batches: int = 0) -> None:
        super().__init__()
        self.source = source
        # gathered batches come from recycled memory (see batchpool): up to this many batches of it
        self.pool_batches = pool_batches
        self._pool: BatchPool | None = None
        self.decode = decode  # CF decoding (ZarrSource.decode_batch): one vectorised call per batch
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.return_index = return_index
        self.epoch = initial_epoch
        self.position = 0
        self._started = False
        self._skip = 0
        self._buf_index = -1
        self._buf_order: np.ndarray = np.empty(0, dtype=np.int64)
        self._buf_cursor = 0
        self._buf_blocks: list[dict[str, np.ndarray]] = []
        self._buf_block_of: np.ndarray = np.empty(0, dtype=np.int64)
        self._buf_row_of: np.ndarray = np.empty(0, dtype=np.int64)
        self._buf_global: np.ndarray = np.empty(0, dtype=np.int64)
        self._failed = False
        self._ended = False

    # -- BaseNode ---------------------------------------------------------------------------------
    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None:
            self.epoch = int(initial_state["epoch"])
            self.position = int(initial_state["position"])
            self._started = True
        else:
            if self._started:
                self.epoch += 1
            self.position = 0
            self._started = False
        self._failed = self._ended = False
        self._clear_buffer(-1)
        self._skip = -1  # samples of the first buffer already yielded: known once it arrives
        self.source.reset({"epoch": self.epoch, "position": self.position})

    def next(self) -> Any:
        if self._failed or self._ended:
            raise StopIteration
        self._started = True
        pieces: list[tuple[int, np.ndarray]] = []  # (buffer-local positions) per buffer piece
        blocks_per_piece: list[tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray, np.ndarray]] = []
        need = self.batch_size
        while need > 0:
            if self._buf_cursor >= len(self._buf_order):
                try:
                    item = next(self.source)
                except StopIteration:
                    self._ended = True
                    break
                if isinstance(item, Failure):
                    self._failed = True
                    return item
                self._take_buffer(item)
                continue
            take = self._buf_order[self._buf_cursor : self._buf_cursor + need]
            self._buf_cursor += len(take)
            need -= len(take)
            pieces.append((len(take), take))
            blocks_per_piece.append((self._buf_blocks, self._buf_block_of, self._buf_row_of, self._buf_global))
        n = self.batch_size - need
        if n == 0 or (need > 0 and self.drop_last):
            self.position += n
            raise StopIteration
        self.position += n
        batch = self._gather(pieces, blocks_per_piece, n)
        if self.decode is None:
            return batch
        try:
            return self.decode(batch)
        except Exception as exc:  # carried to the consumer like read errors
            self._failed = True
            return Failure(exc)

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    # -- buffer -----------------------------------------------------------------------------------
    def _contiguous_view(self, pieces: list[tuple[int, np.ndarray]], ctx: list[Any]) -> dict[str, np.ndarray] | None:
        """Unshuffled batches are row ranges of the data read: return views, not copies. Inside one
        read that is a slice; across reads it works when they were fetched together (coalesced reads
        of adjacent rows come back as one array, split into views) and so lie back to back in memory.
        Read-only reads (chunks decoded in place in the received bytes) are always copied: a tensor
        must never alias memory it may not write."""
        if len(pieces) != 1:
            return None
        count, take = pieces[0]
        blocks, block_of, row_of, glob = ctx[0]
        b0, b1 = int(block_of[take[0]]), int(block_of[take[-1]])
        if not all(v.flags.writeable for b in range(min(b0, b1), max(b0, b1) + 1) for v in blocks[b].values()):
            return None
        rows = row_of[take]
        r0 = int(rows[0])
        if b0 == b1:
            if not np.array_equal(rows, np.arange(r0, r0 + count)):
                return None
            out = {k: v[r0 : r0 + count] for k, v in blocks[b0].items()}
        else:
            g0 = int(glob[take[0]])
            if b1 < b0 or not np.array_equal(glob[take], np.arange(g0, g0 + count)):
                return None
            out = {}
            for k, first in blocks[b0].items():
                view = _adjacent_rows(first, [blocks[b][k] for b in range(b0 + 1, b1 + 1)], r0, count)
                if view is None:
                    return None
                out[k] = view
        if self.return_index:
            out["index"] = glob[take].copy()
        return out

    def _clear_buffer(self, index: int) -> None:
        self._buf_index = index
        self._buf_order = np.empty(0, dtype=np.int64)
        self._buf_cursor = 0
        self._buf_blocks = []

    def _take_buffer(self, item: LoadedBuffer) -> None:
        plan, b = item.plan, item.index
        tasks = plan.buffer_tasks(b)
        self._clear_buffer(b)
        sizes = np.array([t.size for t in tasks], dtype=np.int64)
        self._buf_blocks = item.blocks
        self._buf_block_of = np.repeat(np.arange(len(tasks)), sizes)
        starts = np.cumsum(sizes) - sizes
        self._buf_row_of = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)
        self._buf_global = self._buf_row_of + np.repeat(np.array([t.start for t in tasks], dtype=np.int64), sizes)
        self._buf_order = plan.buffer_order(b)
        if self._skip < 0:  # the first buffer after a reset: skip what was yielded before the state
            self._buf_cursor = max(0, self.position - plan.buffer_offsets[b])
            self._skip = self._buf_cursor

    def _gather(self, pieces: list[tuple[int, np.ndarray]], ctx: list[Any], n: int) -> dict[str, np.ndarray]:
        view = self._contiguous_view(pieces, ctx)
        if view is not None:
            return view
        first_blocks = ctx[0][0]
        if self._pool is None and self.pool_batches > 0:
            per_batch = sum(self.batch_size * v[:1].nbytes for v in first_blocks[0].values())
            self._pool = BatchPool(self.pool_batches * per_batch)
        # only full batches: the pool keys blocks by size, a short last batch would only sit idle
        empty = self._pool.empty if self._pool is not None and n == self.batch_size else np.empty
        out: dict[str, np.ndarray] = {k: empty((n, *v.shape[1:]), v.dtype) for k, v in first_blocks[0].items()}
        index = np.empty(n, dtype=np.int64)
        pos = 0
        for (count, take), (blocks, block_of, row_of, glob) in zip(pieces, ctx, strict=True):
            # Order the piece by source read (stable, so the shuffled order survives inside each
            # read): each read then fills one contiguous run of the batch with a single np.take.
            take = take[np.argsort(block_of[take], kind="stable")]
            bsel = block_of[take]
            rsel = row_of[take]
            index[pos : pos + count] = glob[take]
            cuts = np.flatnonzero(np.diff(bsel)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, count], strict=True):
                blk = int(bsel[lo])
                r0, r1 = int(rsel[lo]), int(rsel[hi - 1]) + 1
                run = r1 - r0 == hi - lo and bool(np.all(np.diff(rsel[lo:hi]) == 1))
                for k, arr in blocks[blk].items():
                    if run:  # consecutive rows (storage order): one memcpy-like slice copy
                        out[k][pos + lo : pos + hi] = arr[r0:r1]
                    else:
                        # mode="clip": the rows are valid by construction, and numpy's default
                        # mode ("raise") with out= gathers into a temporary first: a second copy
                        np.take(arr, rsel[lo:hi], axis=0, out=out[k][pos + lo : pos + hi], mode="clip")
            pos += count
        if self.return_index:
            out["index"] = index
        return out


def _adjacent_rows(first: np.ndarray, rest: list[np.ndarray], r0: int, count: int) -> np.ndarray | None:
    """Rows ``r0 .. r0+count`` of ``first`` followed by ``rest``, as one view, when they are C-contiguous
    slices of one array lying back to back in memory; else None (the caller copies)."""
    if first.ndim == 0 or not first.flags.c_contiguous:
        return None
    end = first.ctypes.data + first.nbytes
    total = len(first)
    for a in rest:
        if a.dtype != first.dtype or a.shape[1:] != first.shape[1:] or not a.flags.c_contiguous or a.ctypes.data != end:
            return None
        end += a.nbytes
        total += len(a)
    root = first
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not root.flags.c_contiguous or root.dtype != first.dtype:
        return None
    row_items = math.prod(first.shape[1:])
    start_item, rem = divmod(first.ctypes.data - root.ctypes.data, first.itemsize)
    if rem or start_item < 0 or r0 + count > total:
        return None
    lo = start_item + r0 * row_items
    hi = lo + count * row_items
    if hi > root.size:
        return None
    return root.reshape(-1)[lo:hi].reshape(count, *first.shape[1:])
