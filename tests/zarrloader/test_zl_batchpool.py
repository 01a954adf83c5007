"""Recycled batch memory (zarrloader.batchpool): a block is reused only once nothing can reach it —
not the array, not a view of it, not a tensor on it — and the pool never holds more than its
capacity."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from zarrloader.batchpool import BatchPool

MiB = 1 << 20


def test_a_released_block_is_reused() -> None:
    pool = BatchPool(8 * MiB)
    a = pool.empty((256, 1024), np.float32)
    addr = a.ctypes.data
    del a
    b = pool.empty((256, 1024), np.float32)
    assert b.ctypes.data == addr and pool.reused == 1
    assert b.flags.writeable and b.flags.c_contiguous and b.shape == (256, 1024) and b.dtype == np.float32


def _owner(a: np.ndarray) -> object:
    """What finally holds the memory of ``a`` (numpy's chain of bases, to the first non-array)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base


def _holder(a: np.ndarray, kind: str) -> object:
    if kind == "view":
        return a[10:20]
    if kind == "tensor":
        return torch.from_numpy(a)
    if kind == "tensor_view":
        return torch.from_numpy(a)[5:9, :3]
    return torch.from_numpy(a).numpy()[3:]


@pytest.mark.parametrize("holder", ["view", "tensor", "tensor_view", "numpy_of_tensor"])
def test_a_block_is_not_reused_while_anything_uses_it(holder: str) -> None:
    pool = BatchPool(16 * MiB)
    a = pool.empty((256, 1024), np.float32)
    a[:] = 7
    addr = a.ctypes.data
    keep = _holder(a, holder)
    del a
    gc.collect()
    b = pool.empty((256, 1024), np.float32)  # the same size: would take the block if it were idle
    b[:] = 0
    assert b.ctypes.data != addr and pool.reused == 0
    values = keep.numpy() if isinstance(keep, torch.Tensor) else np.asarray(keep)
    assert (values == 7).all()
    del keep, values
    c = pool.empty((256, 1024), np.float32)
    assert c.ctypes.data == addr and pool.reused == 1


def test_capacity_bounds_what_the_pool_holds() -> None:
    pool = BatchPool(3 * MiB)
    held = [pool.empty((MiB,), np.uint8) for _ in range(5)]
    assert [type(_owner(a)).__name__ == "_Lease" for a in held] == [True] * 3 + [False] * 2, \
        "past the capacity a batch must be plain memory"
    addrs = {a.ctypes.data for a in held[:3]}
    del held
    assert pool.idle_bytes == 3 * MiB
    again = [pool.empty((MiB,), np.uint8) for _ in range(3)]
    assert {a.ctypes.data for a in again} == addrs and pool.reused == 3


def test_a_lease_dying_inside_the_pool_does_not_deadlock() -> None:
    """A lease can die while its thread is inside the pool holding the lock (the garbage collector runs
    finalizers at any allocation): its __del__ must not need the lock. The test lets the last reference
    to a batch go exactly there, in a thread with a deadline, so a regression fails instead of hanging."""
    from collections import defaultdict

    pool = BatchPool(64 * MiB)
    victim = [pool.empty((4, 1024), np.float32)]

    class DropsABatch(defaultdict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # called by empty() under the pool's lock
            victim.clear()
            return super().get(key, default)

    pool._idle = DropsABatch(list, pool._idle)
    got: list[np.ndarray] = []
    t = threading.Thread(target=lambda: got.append(pool.empty((4, 1024), np.float32)), daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "deadlock: a lease's __del__ waited for the pool's lock"
    assert got and not victim
    got.clear()
    assert pool.idle_bytes == 2 * 4 * 1024 * 4  # both blocks came back


def test_object_and_string_dtypes_get_plain_memory() -> None:
    pool = BatchPool(8 * MiB)
    a = pool.empty((3, 2), object)
    assert a.dtype == object and a.shape == (3, 2)
    a[0, 0] = "x"
    b = pool.empty((4,), np.dtype("U8"))
    b[:] = "abc"
    assert list(b) == ["abc"] * 4


def test_other_sizes_and_empty_shapes() -> None:
    pool = BatchPool(8 * MiB)
    a = pool.empty((3, 5), np.float64)
    b = pool.empty((0, 5), np.float32)
    c = pool.empty((7,), np.complex128)
    assert a.shape == (3, 5) and b.shape == (0, 5) and c.shape == (7,)
    assert c.ctypes.data % 16 == 0


def test_released_on_another_thread() -> None:
    """Batches are assembled on the loader's thread and dropped on the training loop's."""
    import queue

    pool = BatchPool(8 * (256 << 10))
    q: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)

    def produce() -> None:
        for i in range(200):
            a = pool.empty((64, 1024), np.float32)
            a[:] = i
            q.put(a, timeout=30)
            del a
        q.put(None, timeout=30)

    t = threading.Thread(target=produce, daemon=True)  # a failing check below must not leave it blocking
    t.start()
    i = 0
    while (item := q.get(timeout=30)) is not None:
        assert (item == i).all()  # never overwritten while the consumer holds it
        i += 1
        del item
    t.join(timeout=30)
    assert i == 200 and pool.reused >= 150
    assert pool.idle_bytes <= pool.capacity_bytes
