"""torchdata.nodes building blocks of the loader.

    PlanTasks  --(AsyncFetch on zarr's loop; ParallelMapper threads in patch mode: fetch+decode)-->  ShuffleBatcher
               --> transform --> [PinMemory] --> Prefetcher

``ShuffleBatcher`` owns the epoch and the sample position; its state is just ``{epoch, position}``
because the plan is a pure function of the config (see plan.py). Restoring it recomputes the plan,
re-fetches the one buffer holding ``position`` and skips to it: exact resume, whatever the
upstream nodes were doing when the state was taken.

Read errors travel down the pipeline as ``Failure`` values rather than exceptions, so the user gets
the original exception object (type, message, chunk key) instead of a re-wrapped traceback string.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from .plan import EpochPlan, PlanConfig, ReadTask, make_plan, patch_starts
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


class PlanCursor:
    """Shared between ShuffleBatcher (which decides) and PlanTasks (which emits): the current plan,
    the buffer the next iteration of PlanTasks starts from, and how many reads go in one fetch."""

    def __init__(self, group: int = 1) -> None:
        self.plan: EpochPlan | None = None
        self.start_buffer = 0
        self.group = group


ReadGroup = tuple[ReadTask, ...]


class PlanTasks(BaseNode[ReadGroup]):
    """Emits the current plan's reads from ``cursor.start_buffer`` on, in groups of up to
    ``cursor.group`` reads that never cross a buffer boundary (one fetch call per group)."""

    def __init__(self, cursor: PlanCursor) -> None:
        super().__init__()
        self.cursor = cursor
        self._groups: list[ReadGroup] = []
        self._next = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        plan, g = self.cursor.plan, max(1, self.cursor.group)
        self._groups = []
        if plan is not None:
            for b in range(self.cursor.start_buffer, plan.num_buffers):
                tasks = plan.buffer_tasks(b)
                self._groups += [tasks[i : i + g] for i in range(0, len(tasks), g)]
        self._next = initial_state["next"] if initial_state is not None else 0

    def next(self) -> ReadGroup:
        if self._next >= len(self._groups):
            raise StopIteration
        group = self._groups[self._next]
        self._next += 1
        return group

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next}


@dataclass
class Fetched:
    tasks: ReadGroup
    data: list[dict[str, np.ndarray]]


class Fetcher:
    """map_fn of the ParallelMapper: read one task's rows (or patches), never raise."""

    def __init__(self, source: ZarrSource, patch: PatchSpec | None, seed: int) -> None:
        self.source = source
        self.patch = patch
        self.extents: tuple[int, ...] | None = None  # set by the loader once metadata is open
        self.seed = seed

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


class AsyncFetch(BaseNode[Fetched | Failure]):
    """Whole-row reads without worker threads: keeps up to ``in_flight`` groups of reads submitted to
    zarr's event loop (``ZarrSource.submit_ranges``) and hands them over in plan order. The consumer's
    thread only waits on the oldest future; fetch and decode run on zarr's loop (and its codec
    threads). Compared with a ParallelMapper of ``in_flight`` threads each calling zarr's blocking API,
    this saves a thread hand-off and a blocked thread per fetch (measured: ~15 % less loader CPU per
    epoch at 1 MiB chunks, 4 per fetch; also faster at one 4 MiB read per fetch, see make_loader). A read that fails is redone synchronously by the ``Fetcher``, so
    the error names the chunk exactly as before."""

    def __init__(self, tasks: BaseNode[ReadGroup], fetcher: Fetcher, in_flight: int,
                 cursor: PlanCursor | None = None, max_requests: int | None = None) -> None:
        super().__init__()
        self.tasks = tasks
        self.fetcher = fetcher
        self.in_flight = max(1, in_flight)
        # With a cursor and a request budget (the HTTP pool), fetches in flight are capped so that
        # fetches x reads per fetch stay within it: more would only queue for a connection, and cost
        # CPU and memory while they wait. Set at reset, once the group size is known.
        self._cursor = cursor
        self._max_requests = max_requests
        self._limit = self.in_flight
        self._pending: deque[tuple[ReadGroup, Future[list[dict[str, np.ndarray]]] | None]] = deque()
        self._exhausted = False

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._cancel()
        self.tasks.reset(initial_state.get("tasks") if initial_state else None)
        self._exhausted = False
        self._limit = self.in_flight
        if self._cursor is not None and self._max_requests:
            self._limit = max(1, min(self.in_flight, self._max_requests // max(1, self._cursor.group)))

    def _cancel(self) -> None:
        while self._pending:
            _, fut = self._pending.popleft()
            if fut is not None:
                fut.cancel()

    def _fill(self) -> None:
        while not self._exhausted and len(self._pending) < self._limit:
            try:
                group = next(self.tasks)
            except StopIteration:
                self._exhausted = True
                break
            try:
                fut = self.fetcher.source.submit_ranges([(t.start, t.stop) for t in group])
            except Exception:  # e.g. opening failed: the synchronous redo reports it
                fut = None
            self._pending.append((group, fut))

    def next(self) -> Fetched | Failure:
        self._fill()
        if not self._pending:
            raise StopIteration
        group, fut = self._pending.popleft()
        self._fill()  # keep the pipe full while we wait
        if fut is None:
            return self.fetcher(group)
        try:
            return Fetched(group, fut.result())
        except Exception:
            return self.fetcher(group)  # redo synchronously: the error then names the chunk

    def get_state(self) -> dict[str, Any]:
        return {"tasks": self.tasks.state_dict()}


class ShuffleBatcher(BaseNode[Any]):
    """Fills a buffer of K fetched reads, permutes its samples, emits batches (dicts of numpy arrays,
    plus ``index``: the global row of every sample). Batches may straddle two buffers."""

    def __init__(self, source: BaseNode[Fetched | Failure], cursor: PlanCursor, plan_config: Callable[[], PlanConfig],
                 batch_size: int, drop_last: bool, return_index: bool, initial_epoch: int = 0,
                 on_epoch: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.source = source
        self.cursor = cursor
        self._plan_config = plan_config  # deferred: building it opens the store (must happen post-fork)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.return_index = return_index
        self.epoch = initial_epoch
        self.position = 0
        self._started = False
        self._on_epoch = on_epoch
        self._lock = threading.Lock()
        self._plan: EpochPlan | None = None
        self._buf_index = -1
        self._buf_order: np.ndarray = np.empty(0, dtype=np.int64)
        self._buf_cursor = 0
        self._buf_blocks: list[dict[str, np.ndarray]] = []
        self._buf_block_of: np.ndarray = np.empty(0, dtype=np.int64)
        self._buf_row_of: np.ndarray = np.empty(0, dtype=np.int64)
        self._buf_global: np.ndarray = np.empty(0, dtype=np.int64)
        self._failed = False

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
        self._failed = False
        if self._on_epoch is not None:
            self._on_epoch()
        plan = make_plan(self._plan_config(), self.epoch)
        self._plan = plan
        self.cursor.plan = plan
        b = plan.buffer_of(self.position)
        self.cursor.start_buffer = b
        self.source.reset(None)
        self._clear_buffer(b - 1)
        if b < plan.num_buffers and self.position > plan.buffer_offsets[b]:
            self._load_buffer(b)
            self._buf_cursor = self.position - plan.buffer_offsets[b]

    def next(self) -> Any:
        if self._failed:
            raise StopIteration
        assert self._plan is not None
        self._started = True
        pieces: list[tuple[int, np.ndarray]] = []  # (buffer-local positions) per buffer piece
        blocks_per_piece: list[tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray, np.ndarray]] = []
        need = self.batch_size
        while need > 0:
            if self._buf_cursor >= len(self._buf_order):
                nxt = self._buf_index + 1
                if nxt >= self._plan.num_buffers:
                    break
                failure = self._load_buffer(nxt)
                if failure is not None:
                    self._failed = True
                    return failure
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
        return self._gather(pieces, blocks_per_piece, n)

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

    def _load_buffer(self, b: int) -> Failure | None:
        assert self._plan is not None
        tasks = self._plan.buffer_tasks(b)
        self._clear_buffer(b)
        blocks: list[dict[str, np.ndarray]] = []
        while len(blocks) < len(tasks):
            try:
                item = next(self.source)
            except StopIteration:
                return Failure(RuntimeError(f"internal: read stream ended before task {tasks[len(blocks)].index}"))
            if isinstance(item, Failure):
                return item
            expected = tasks[len(blocks) : len(blocks) + len(item.tasks)]
            if item.tasks != expected:  # in_order=True guarantees this; a mismatch would be a bug
                return Failure(RuntimeError(f"internal: got reads {item.tasks}, expected {expected}"))
            blocks.extend(item.data)
        sizes = np.array([t.size for t in tasks], dtype=np.int64)
        self._buf_blocks = blocks
        self._buf_block_of = np.repeat(np.arange(len(tasks)), sizes)
        starts = np.cumsum(sizes) - sizes
        self._buf_row_of = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)
        self._buf_global = self._buf_row_of + np.repeat(np.array([t.start for t in tasks], dtype=np.int64), sizes)
        self._buf_order = self._plan.buffer_order(b)
        return None

    def _gather(self, pieces: list[tuple[int, np.ndarray]], ctx: list[Any], n: int) -> dict[str, np.ndarray]:
        view = self._contiguous_view(pieces, ctx)
        if view is not None:
            return view
        first_blocks = ctx[0][0]
        out: dict[str, np.ndarray] = {
            k: np.empty((n, *v.shape[1:]), dtype=v.dtype) for k, v in first_blocks[0].items()
        }
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
