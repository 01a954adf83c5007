"""The epoch plan: which rows each rank reads, in which order, and how samples are shuffled.

Pure arithmetic on (num_samples, block_length, seed, epoch, rank, world_size): no I/O, so a plan can
be recomputed at any time, which is what makes resume exact and order reproducible.

1. Blocks are runs of ``block_length`` rows (one chunk along axis 0). Their order is shuffled per
   epoch from (seed, epoch) -- the same permutation on every rank.
2. The shuffled blocks are concatenated into one sequence of N sample positions; rank r takes the
   contiguous span [N*r//W, N*(r+1)//W). Every sample lands on exactly one rank, ranks differ by at
   most one sample, and each rank reads at most two partial blocks.
3. A rank's reads are grouped into buffers of K reads (when shuffling, the first buffers of an epoch
   ramp up as 1, 2, 4, ... reads, so the first batch only waits for one read); samples are permuted inside each
   buffer from (seed, epoch, rank, world_size, buffer). K trades randomness against memory: a sample
   can only be mixed with the ~K*block_length samples that share its buffer.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ReadTask:
    """Rows [start, stop) of the arrays, read as one unit; ``index`` is its position in the plan."""

    index: int
    start: int
    stop: int
    epoch: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class PlanConfig:
    num_samples: int
    block_length: int
    shuffle: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    buffer_blocks: int = 8

    def __post_init__(self) -> None:
        if self.num_samples < 0 or self.block_length < 1:
            raise ValueError(f"bad plan sizes: num_samples={self.num_samples}, block_length={self.block_length}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size): rank={self.rank}, world_size={self.world_size}")
        if self.buffer_blocks < 1:
            raise ValueError(f"shuffle_buffer_chunks must be >= 1, got {self.buffer_blocks}")


@dataclass(frozen=True)
class EpochPlan:
    config: PlanConfig
    epoch: int
    tasks: tuple[ReadTask, ...]

    @property
    def total(self) -> int:
        """Samples this rank yields this epoch."""
        return sum(t.size for t in self.tasks)

    @cached_property
    def buffer_task_starts(self) -> tuple[int, ...]:
        """Index of the first task of every buffer, plus a final sentinel. When shuffling, buffers ramp
        up 1, 2, 4, ... reads to K so the first batch waits for one read, not K (time to first batch).
        In storage order every buffer is K reads (there K is one fetch; see loader.read_grouping), so
        buffers, fetches and batches keep the same alignment and batches can be views of a fetch."""
        k = self.config.buffer_blocks
        starts, pos, size = [], 0, 1 if self.config.shuffle else k
        while pos < len(self.tasks):
            starts.append(pos)
            pos += size
            size = min(k, size * 2)
        return (*starts, len(self.tasks))

    @cached_property
    def buffer_offsets(self) -> tuple[int, ...]:
        """Sample position at which every buffer starts, plus a final sentinel (= total)."""
        sizes = np.cumsum([0] + [t.size for t in self.tasks])
        return tuple(int(sizes[i]) for i in self.buffer_task_starts)

    @property
    def num_buffers(self) -> int:
        return len(self.buffer_task_starts) - 1

    def buffer_of(self, position: int) -> int:
        """The buffer holding sample ``position`` (num_buffers when position == total)."""
        if position >= self.total:
            return self.num_buffers
        return bisect.bisect_right(self.buffer_offsets, position) - 1

    def buffer_tasks(self, b: int) -> tuple[ReadTask, ...]:
        return self.tasks[self.buffer_task_starts[b] : self.buffer_task_starts[b + 1]]

    def buffer_order(self, b: int) -> np.ndarray:
        """Order in which the buffer's samples (concatenated task rows) are emitted."""
        n = self.buffer_offsets[b + 1] - self.buffer_offsets[b]
        if not self.config.shuffle:
            return np.arange(n)
        c = self.config
        rng = np.random.default_rng([c.seed, self.epoch, c.rank, c.world_size, b, 1])
        return rng.permutation(n)


def block_order(config: PlanConfig, epoch: int) -> np.ndarray:
    n_blocks = -(-config.num_samples // config.block_length)
    if not config.shuffle:
        return np.arange(n_blocks)
    return np.random.default_rng([config.seed, epoch, 0]).permutation(n_blocks)


def make_plan(config: PlanConfig, epoch: int) -> EpochPlan:
    """The reads of ``config.rank`` for ``epoch``."""
    n, bl, w, r = config.num_samples, config.block_length, config.world_size, config.rank
    lo, hi = n * r // w, n * (r + 1) // w
    tasks: list[ReadTask] = []
    pos = 0
    for blk in block_order(config, epoch):
        start = int(blk) * bl
        size = min(bl, n - start)
        a, b = max(lo, pos), min(hi, pos + size)
        if a < b:
            tasks.append(ReadTask(len(tasks), start + (a - pos), start + (b - pos), epoch))
        pos += size
        if pos >= hi:
            break
    return EpochPlan(config=config, epoch=epoch, tasks=tuple(tasks))


def patch_starts(seed: int, epoch: int, row: int, extents: tuple[int, ...], size: tuple[int, ...]) -> tuple[int, ...]:
    """Random window origin for sample ``row``: a pure function of (seed, epoch, row), so patches are
    reproducible and survive resume."""
    rng = np.random.default_rng([seed, epoch, row, 2])
    return tuple(int(rng.integers(0, e - s + 1)) for e, s in zip(extents, size, strict=True))


def request_budget(concurrency: int) -> int:
    """HTTP requests the loader may have in flight (and connections it pools) at ``concurrency``."""
    return 2 * concurrency + 8


def read_grouping(config: Any, read_bytes: int) -> tuple[int, int]:
    """(reads per fetch, reads per buffer) for whole-row reads of ``read_bytes`` each, for a loader
    config (``min_read_bytes``, ``concurrency``, ``patch``, ``shuffle``, ``shuffle_buffer_chunks``).

    Reads of small chunks are coalesced into fetches of ~``min_read_bytes``: below ~1 MB, per-call
    overhead, not the network, would set the pace. A fetch never crosses a buffer, so when shuffling
    it is capped at ``shuffle_buffer_chunks``. In storage order nothing is mixed, and the buffer is
    exactly one fetch: batches can then be views of a fetch's memory (see chunkread), and the first
    batch waits for one fetch, not ``shuffle_buffer_chunks`` chunks. Never more reads per fetch than
    the request budget: tiny chunks would otherwise make one fetch of thousands of GETs."""
    group = max(1, min(config.min_read_bytes // max(1, read_bytes), request_budget(config.concurrency)))
    if config.patch is not None:
        group = 1
    if config.shuffle:
        group = min(group, config.shuffle_buffer_chunks)
        return group, config.shuffle_buffer_chunks
    return group, group
