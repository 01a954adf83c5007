"""Recycled memory for the batches the loader gathers (shuffled batches): a batch's memory goes back
to the pool when the last array or tensor using it is gone, and the next batch is written into it.

Why: fresh memory costs a page fault per 4 KiB page and the kernel zeroing it, only for the loader to
overwrite every byte. Measured figures (page faults with and without the pool; the CPU difference
was within the noise of a 2-core host): docs/zarrloader.md, "Recycled batch memory". On hosts that
move several GB/s per process, a page fault per 4 KiB is a cost the pipeline need not pay.

Lifetime is exact, not guessed: each batch array's numpy base is a lease on a pool block; views of
the array, ``torch.from_numpy`` tensors and their views all keep the lease alive (numpy and torch keep
their base), so a block is reused only after nothing can reach it, as with ``free``. A dying lease
only puts its block on a queue (``SimpleQueue.put`` is safe in ``__del__``, even when the garbage
collector runs it inside ``empty`` on the same thread); ``empty`` takes the returned blocks back. The
pool holds at most ``capacity_bytes`` of blocks, leased and idle together: a consumer holding many
batches at once gets plain memory beyond that, released as usual.
"""

from __future__ import annotations

import queue
import threading
from collections import defaultdict
from typing import Any

import numpy as np


class _Lease:
    """The numpy base of one batch array: exposes the pool's block through the array interface and
    hands the block back when garbage."""

    __slots__ = ("__array_interface__", "block", "returns")

    def __init__(self, returns: queue.SimpleQueue[np.ndarray], block: np.ndarray) -> None:
        self.returns = returns
        self.block = block
        self.__array_interface__ = {"version": 3, "shape": (block.size,), "typestr": "|u1",
                                    "data": (block.ctypes.data, False)}

    def __del__(self) -> None:
        # not contextlib.suppress: at interpreter shutdown module globals may already be gone
        try:  # noqa: SIM105
            self.returns.put(self.block)
        except Exception:  # pragma: no cover - the memory is freed either way
            pass


class BatchPool:
    """``empty(shape, dtype)`` like ``np.empty``, from recycled blocks. Thread-safe: batches are
    assembled on one thread and freed on another (the training loop's)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = max(0, int(capacity_bytes))
        self._lock = threading.Lock()
        self._returns: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._idle: defaultdict[int, list[np.ndarray]] = defaultdict(list)
        self._idle_bytes = 0
        self._leased_bytes = 0  # pool blocks handed out and not yet returned
        self.reused = 0  # blocks handed out again (for tests and the bench)

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            self._take_returns()
            return self._idle_bytes

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any] | type) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes == 0 or dt.hasobject or dt.kind == "T":  # references cannot live in raw bytes
            return np.empty(shape, dtype=dt)
        with self._lock:
            self._take_returns()
            idle = self._idle.get(nbytes)
            if idle:
                block = idle.pop()
                self._idle_bytes -= nbytes
                self.reused += 1
            elif self._leased_bytes + self._idle_bytes + nbytes <= self.capacity_bytes:
                block = None
            else:
                # over capacity (the consumer holds many batches): plain memory, freed as usual
                return np.empty(shape, dtype=dt)
            self._leased_bytes += nbytes
        if block is None:
            block = np.empty(nbytes, dtype=np.uint8)
        return np.asarray(_Lease(self._returns, block)).view(dt).reshape(shape)

    def _take_returns(self) -> None:
        """Blocks of dead leases back to idle (under the lock). Leased and idle together never exceed
        the capacity, so every returned block is kept."""
        while True:
            try:
                block = self._returns.get_nowait()
            except queue.Empty:
                return
            self._leased_bytes -= block.size
            self._idle[block.size].append(block)
            self._idle_bytes += block.size
