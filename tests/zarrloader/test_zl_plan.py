"""The epoch plan is pure arithmetic: check partition, determinism and buffer bookkeeping exhaustively."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from zarrloader.plan import PlanConfig, make_plan, patch_starts


def rows(plan) -> list[int]:
    return [r for t in plan.tasks for r in range(t.start, t.stop)]


@pytest.mark.parametrize(("n", "block", "world"), list(itertools.product([1, 7, 64, 203], [1, 5, 16, 300], [1, 2, 3, 8])))
def test_every_sample_exactly_once_across_ranks(n: int, block: int, world: int) -> None:
    for shuffle in (False, True):
        got: list[int] = []
        sizes = []
        for r in range(world):
            p = make_plan(PlanConfig(n, block, shuffle=shuffle, seed=3, rank=r, world_size=world), epoch=2)
            got += rows(p)
            sizes.append(p.total)
        assert sorted(got) == list(range(n))
        assert max(sizes) - min(sizes) <= 1


def test_same_seed_same_plan_other_seed_or_epoch_differs() -> None:
    cfg = PlanConfig(500, 10, seed=1)
    assert rows(make_plan(cfg, 0)) == rows(make_plan(cfg, 0))
    assert rows(make_plan(cfg, 0)) != rows(make_plan(cfg, 1))
    assert rows(make_plan(cfg, 0)) != rows(make_plan(PlanConfig(500, 10, seed=2), 0))
    p = make_plan(cfg, 0)
    assert np.array_equal(p.buffer_order(1), make_plan(cfg, 0).buffer_order(1))


def test_unshuffled_plan_is_storage_order() -> None:
    p = make_plan(PlanConfig(95, 10, shuffle=False, buffer_blocks=3), 0)
    assert rows(p) == list(range(95))
    assert all(np.array_equal(p.buffer_order(b), np.arange(len(p.buffer_order(b)))) for b in range(p.num_buffers))


def test_buffers_ramp_up_only_when_shuffling() -> None:
    # shuffled: the first batch waits for one read; storage order: every buffer is one fetch of K reads,
    # so buffers, fetches and batches stay aligned (batches can be views of a fetch)
    shuffled = make_plan(PlanConfig(200, 10, shuffle=True, buffer_blocks=4), 0)
    assert shuffled.buffer_task_starts == (0, 1, 3, 7, 11, 15, 19, 20)
    ordered = make_plan(PlanConfig(200, 10, shuffle=False, buffer_blocks=4), 0)
    assert ordered.buffer_task_starts == (0, 4, 8, 12, 16, 20)


def test_buffers_cover_the_plan() -> None:
    p = make_plan(PlanConfig(203, 16, buffer_blocks=4, rank=1, world_size=3), 5)
    assert p.buffer_offsets[0] == 0 and p.buffer_offsets[-1] == p.total
    for b in range(p.num_buffers):
        size = p.buffer_offsets[b + 1] - p.buffer_offsets[b]
        assert sorted(p.buffer_order(b)) == list(range(size))
        assert sum(t.size for t in p.buffer_tasks(b)) == size
    assert p.buffer_of(0) == 0
    assert p.buffer_of(p.total) == p.num_buffers
    assert p.buffer_of(p.buffer_offsets[1]) == 1


def test_chunk_order_shared_by_all_ranks() -> None:
    """Ranks must agree on the block permutation, or samples would be lost or duplicated."""
    plans = [make_plan(PlanConfig(300, 10, seed=9, rank=r, world_size=3), 4) for r in range(3)]
    starts = [t.start for p in plans for t in p.tasks]
    assert len(starts) == len(set(starts)) == 30


def test_bad_config_is_rejected_with_reason() -> None:
    with pytest.raises(ValueError, match="rank"):
        PlanConfig(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="shuffle_buffer_chunks"):
        PlanConfig(10, 2, buffer_blocks=0)


def test_patch_starts_in_range_and_reproducible() -> None:
    seen = {patch_starts(0, 0, r, (40, 36), (16, 16)) for r in range(50)}
    assert all(0 <= y <= 24 and 0 <= x <= 20 for y, x in seen)
    assert len(seen) > 10
    assert patch_starts(0, 1, 5, (40, 36), (16, 16)) == patch_starts(0, 1, 5, (40, 36), (16, 16))
