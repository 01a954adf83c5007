"""The loader against the real embedded S3 server: coverage, determinism, resume, DDP, patches."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from zl_helpers import BUCKET, Datasets, N, images, labels

from zarrloader import ZarrSource, make_loader


def loader(ds: Datasets, name: str = "v3.zarr", **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("return_index", True)
    kw.setdefault("concurrency", 4)
    return make_loader(ZarrSource(ds.url(name), storage_options=ds.options), **kw)


def epoch_indices(ld) -> list[int]:
    return [i for b in ld for i in b["index"].tolist()]


def check_content(batch: dict[str, torch.Tensor]) -> None:
    idx = batch["index"].numpy()
    np.testing.assert_array_equal(batch["images"].numpy(), images()[idx])
    np.testing.assert_array_equal(batch["labels"].numpy(), labels()[idx])


def test_batches_are_tensors_with_the_right_samples(datasets: Datasets) -> None:
    ld = loader(datasets, batch_size=32, seed=4)
    batches = list(ld)
    assert len(batches) == len(ld) == -(-N // 32)
    for b in batches:
        assert isinstance(b["images"], torch.Tensor) and b["images"].dtype == torch.uint16
        assert b["images"].shape[1:] == (3, 12, 10)
        check_content(b)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(N))


def test_shuffled_is_not_storage_order_and_sequential_is(datasets: Datasets) -> None:
    assert epoch_indices(loader(datasets, shuffle=False)) == list(range(N))
    shuffled = epoch_indices(loader(datasets, shuffle=True, seed=0))
    assert shuffled != list(range(N)) and sorted(shuffled) == list(range(N))


@pytest.mark.parametrize("world", [2, 3])
def test_every_sample_exactly_once_across_ranks(datasets: Datasets, world: int) -> None:
    per_rank = [epoch_indices(loader(datasets, rank=r, world_size=world, seed=11)) for r in range(world)]
    merged = [i for part in per_rank for i in part]
    assert sorted(merged) == list(range(N)), "a sample was lost or duplicated"
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def test_deterministic_by_seed_and_new_order_each_epoch(datasets: Datasets) -> None:
    a, b, c = loader(datasets, seed=5), loader(datasets, seed=5), loader(datasets, seed=6)
    ea, eb, ec = epoch_indices(a), epoch_indices(b), epoch_indices(c)
    assert ea == eb
    assert ea != ec
    assert epoch_indices(a) != ea, "second epoch repeated the first one's order"
    assert epoch_indices(a) == (epoch_indices(b), epoch_indices(b))[1]  # epoch 2 of a == epoch 2 of b


@pytest.mark.parametrize("stop_after", [1, 5, 12])
def test_resume_mid_epoch_is_exact(datasets: Datasets, stop_after: int) -> None:
    ld = loader(datasets, seed=2, batch_size=10, shuffle_buffer_chunks=3)
    it = iter(ld)
    for _ in range(stop_after):
        next(it)
    state = pickle.loads(pickle.dumps(ld.state_dict()))  # a checkpoint goes through serialisation
    rest = [b["index"].tolist() for b in it]
    next_epoch = epoch_indices(ld)

    fresh = loader(datasets, seed=2, batch_size=10, shuffle_buffer_chunks=3)
    fresh.load_state_dict(state)
    resumed = [b["index"].tolist() for b in fresh]
    assert resumed == rest
    assert epoch_indices(fresh) == next_epoch


def test_resume_at_epoch_end_starts_next_epoch(datasets: Datasets) -> None:
    ld = loader(datasets, seed=2)
    list(ld)
    state = ld.state_dict()
    expected = epoch_indices(ld)
    fresh = loader(datasets, seed=2)
    fresh.load_state_dict(state)
    assert epoch_indices(fresh) == expected


def test_drop_last_and_transforms(datasets: Datasets) -> None:
    ld = loader(datasets, batch_size=50, drop_last=True, transform=lambda b: {**b, "images": b["images"].float() / 2})
    batches = list(ld)
    assert len(batches) == len(ld) == N // 50
    assert all(b["images"].dtype == torch.float32 and len(b["index"]) == 50 for b in batches)
    idx = batches[0]["index"].numpy()
    np.testing.assert_allclose(batches[0]["images"].numpy(), images()[idx] / 2)

    def per_sample(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": s["images"][0].astype(np.int64).sum(), "y": s["labels"], "index": s["index"]}

    b0 = next(iter(loader(datasets, batch_size=8, sample_transform=per_sample)))
    idx = b0["index"].numpy()
    np.testing.assert_array_equal(b0["x"].numpy(), images()[idx][:, 0].sum(axis=(1, 2)))
    np.testing.assert_array_equal(b0["y"].numpy(), labels()[idx])


def test_transform_errors_reach_the_caller(datasets: Datasets) -> None:
    def bad(_: object) -> object:
        raise KeyError("user transform failed")

    with pytest.raises(KeyError, match="user transform failed"):
        next(iter(loader(datasets, transform=bad)))


def test_patch_mode_windows_match_the_array(datasets: Datasets) -> None:
    full = np.arange(24 * 2 * 40 * 36, dtype=np.float32).reshape(24, 2, 40, 36)
    kw = {"batch_size": 5, "patch_size": (16, 12), "patch_axes": (-2, -1), "seed": 3}
    batches = list(loader(datasets, "stack.zarr", **kw))
    origins = set()
    for b in batches:
        assert b[""].shape[1:] == (2, 16, 12)
        for patch, row in zip(b[""].numpy(), b["index"].tolist(), strict=True):
            # find the window: value at [0, 0, 0] encodes its origin
            v = int(patch[0, 0, 0]) - row * 2 * 40 * 36
            y, x = divmod(v, 36)
            origins.add((y, x))
            np.testing.assert_array_equal(patch, full[row, :, y : y + 16, x : x + 12])
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(24))
    assert len(origins) > 5, "patches are not random"
    again = list(loader(datasets, "stack.zarr", **kw))
    assert all(torch.equal(a[""], b[""]) for a, b in zip(batches, again, strict=True)), "patches not reproducible"


def test_patch_mode_keeps_low_rank_arrays_whole(datasets: Datasets) -> None:
    b = next(iter(loader(datasets, batch_size=4, patch_size=(5, 4))))
    assert b["images"].shape == (4, 3, 5, 4)
    np.testing.assert_array_equal(b["labels"].numpy(), labels()[b["index"].numpy()])


def test_memory_bound_is_documented_number(datasets: Datasets) -> None:
    ld = loader(datasets, batch_size=16, shuffle_buffer_chunks=4, concurrency=2)
    src = ld.source
    assert src.block_length == 80  # lcm(16, 20)
    per_read = 80 * (3 * 12 * 10 * 2 + 8)
    group = 4  # reads of 58 KB are coalesced up to K=4 per fetch
    assert ld.memory_bound_bytes() == (4 + 4 * 2 * group) * per_read + (2 + 3) * 16 * (3 * 12 * 10 * 2 + 8)


@pytest.fixture(scope="module")
def mem_server(tmp_path_factory: pytest.TempPathFactory):
    """16 MiB of 64 KiB samples, chunked by 4 rows (256 KiB) and by 16 rows (1 MiB), on its own server."""
    import zarr

    from zarrloader.s3server import embedded_s3

    root = tmp_path_factory.mktemp("mem")
    data = np.random.default_rng(0).random((256, 128, 128), dtype=np.float32)
    for rows in (4, 16):
        z = zarr.create_array(str(root / BUCKET / f"mem{rows}.zarr"), shape=data.shape, chunks=(rows, 128, 128),
                              dtype="float32", compressors=None)
        z[:] = data
    with embedded_s3(root) as server:
        yield server


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
@pytest.mark.parametrize(("chunk_rows", "shuffle", "min_read"),
                         [(4, True, 4 << 20), (16, True, 4 << 20), (16, False, 1 << 20), (4, False, 1 << 20)])
def test_allocation_peak_within_memory_bound(mem_server, chunk_rows: int, shuffle: bool, min_read: int,
                                             backend: str) -> None:
    """The peak of what an epoch allocates (numpy buffers, Python objects, and the obstore buffers the
    loader adopts, all via tracemalloc, in a child process: see epochpeak) stays under
    memory_bound_bytes(), which is itself well under the 16 MiB of data. (Storage order with 256 KiB
    chunks: 4 chunks received per fetch into one buffer, batches are views of it; with 1 MiB chunks
    and obstore, views of adopted chunks.)"""
    from zarrloader import StorageOptions
    from zarrloader.epochpeak import epoch_peak

    opts = StorageOptions(extra=mem_server.storage_options(), backend=backend)
    url = f"s3://{BUCKET}/mem{chunk_rows}.zarr"
    kw = {"batch_size": 16, "shuffle": shuffle, "concurrency": 2, "shuffle_buffer_chunks": 1, "pin_memory": False,
          "min_read_bytes": min_read}
    src = ZarrSource(url, storage_options=opts)
    bound = make_loader(src, **kw).memory_bound_bytes()
    src.close()
    assert bound < 16 * 2**20, "bound larger than the data: the test would prove nothing"
    got = epoch_peak(ZarrSource(url, storage_options=opts), kw, timeout=300)  # unopened: the child opens it
    assert (got.samples, got.batches) == (256, 16)
    assert got.peak_bytes <= bound, f"allocated {got.peak_bytes / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB"


def test_epoch_peak_never_traces_this_process(datasets: Datasets, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """tracemalloc.stop() while obstore's threads attach crashes Python 3.11 (CPython gh-128679; a
    segfault seen in CI while an abandoned loader still read): the measurement runs in a child that
    never stops tracing, and this process neither starts nor stops it."""
    import tracemalloc

    from zarrloader.epochpeak import epoch_peak

    def refuse() -> None:
        raise AssertionError("tracemalloc toggled in the test process")

    monkeypatch.setattr(tracemalloc, "start", refuse)
    monkeypatch.setattr(tracemalloc, "stop", refuse)
    # in the child, tracemalloc.stop() aborts the process: the call below fails if the child stops it
    (tmp_path / "sitecustomize.py").write_text("import os, tracemalloc\ntracemalloc.stop = os.abort\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    src = ZarrSource(datasets.url("v3.zarr"), storage_options=datasets.options)
    got = epoch_peak(src, {"batch_size": 16, "shuffle": True, "concurrency": 2}, timeout=300)
    assert got.samples == N and got.batches == -(-N // 16) and got.peak_bytes > 0


def test_epoch_peak_failures_are_named(datasets: Datasets) -> None:
    from zarrloader.epochpeak import EpochPeakError, epoch_peak

    missing = ZarrSource(datasets.url("no-such.zarr"), storage_options=datasets.options)
    with pytest.raises(EpochPeakError, match="exited with status 1") as info:
        epoch_peak(missing, {"batch_size": 4}, timeout=300)
    assert "no-such.zarr" in str(info.value)
    src = ZarrSource(datasets.url("v3.zarr"), storage_options=datasets.options)
    with pytest.raises(EpochPeakError, match=r"longer than 0\.05 s"):
        epoch_peak(src, {"batch_size": 4}, timeout=0.05)


def test_coalesced_reads_change_nothing_but_speed(datasets: Datasets) -> None:
    single = [b for b in loader(datasets, seed=8, min_read_bytes=1)]
    coalesced = [b for b in loader(datasets, seed=8)]
    assert len(single) == len(coalesced)
    for a, b in zip(single, coalesced, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["images"], b["images"])
        check_content(b)


@pytest.mark.parametrize("batch_size", [7, 16, 50])
def test_sequential_batches_across_coalesced_reads(datasets: Datasets, batch_size: int) -> None:
    # storage order: batches are views across reads fetched together, slice copies across fetches
    batches = list(loader(datasets, shuffle=False, batch_size=batch_size))
    assert [i for b in batches for i in b["index"].tolist()] == list(range(N))
    for b in batches:
        check_content(b)


def test_adjacent_rows_view_only_when_back_to_back() -> None:
    from zarrloader.nodes import _adjacent_rows

    base = np.arange(64 * 3 * 2, dtype=np.float32).reshape(64, 3, 2)
    parts = [base[i : i + 16] for i in range(0, 64, 16)]
    v = _adjacent_rows(parts[0], parts[1:3], 5, 40)
    assert v is not None and np.shares_memory(v, base)
    np.testing.assert_array_equal(v, base[5:45])
    assert _adjacent_rows(parts[0], [parts[2]], 0, 20) is None  # a gap between the reads
    assert _adjacent_rows(parts[0], [base[16:32].copy()], 0, 20) is None  # another array
    assert _adjacent_rows(parts[2], [parts[3]], 10, 30) is None  # past the end


def test_pin_memory_without_cuda_is_a_clear_error(datasets: Datasets) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: pinning is valid here")
    with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
        loader(datasets, pin_memory=True)


def _child_epoch(ld, q) -> None:  # runs in a forked child
    try:
        q.put(sorted(epoch_indices(ld)))
    except BaseException as exc:  # report instead of dying silently
        q.put(repr(exc))


def test_nothing_opened_before_fork_and_forked_child_reads(datasets: Datasets) -> None:
    src = ZarrSource(datasets.url("v3.zarr"), storage_options=datasets.options)
    ld = make_loader(src, batch_size=32, return_index=True, concurrency=2)
    assert not src.is_open and not ld.source.is_open, "make_loader opened the store before a fork"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_epoch, args=(ld, q))
    p.start()
    try:
        result = q.get(timeout=60)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    assert result == list(range(N))
    assert os.getpid() != p.pid


def test_source_pickles_without_handles(datasets: Datasets) -> None:
    src = ZarrSource(datasets.url("v3.zarr"), storage_options=datasets.options).open()
    assert src.is_open
    clone = pickle.loads(pickle.dumps(src))
    assert not clone.is_open
    assert clone.read_rows(3, 5)["labels"].tolist() == labels()[3:5].tolist()


def test_a_script_that_used_the_loader_exits_without_unclosed_session_noise(datasets: Datasets) -> None:
    """Sources still open at exit are closed while zarr's event loop runs; before, every script
    ended with aiohttp's "Unclosed client session" / "Unclosed connector" on stderr."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\nfrom zarrloader import make_loader\n"
            "ld = make_loader(sys.argv[1], storage_options=json.loads(sys.argv[2]), batch_size=16)\n"
            "print(sum(len(b['labels']) for b in ld))\n")
    r = subprocess.run([sys.executable, "-c", code, datasets.url("v3.zarr"), json.dumps(datasets.options)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == N
    assert "Unclosed" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_read_grouping_storage_order_reads_one_fetch_per_buffer() -> None:
    from zarrloader.loader import LoaderConfig, read_grouping
    from zarrloader.nodes import PatchSpec

    kib = 1 << 10
    # shuffled: coalesced up to min_read_bytes, never past a buffer of K reads
    assert read_grouping(LoaderConfig(batch_size=8, shuffle_buffer_chunks=8), 256 * kib) == (8, 8)
    assert read_grouping(LoaderConfig(batch_size=8, shuffle_buffer_chunks=8), 1024 * kib) == (4, 8)
    # storage order: K plays no part; a buffer is one fetch of ~min_read_bytes
    assert read_grouping(LoaderConfig(batch_size=8, shuffle=False, shuffle_buffer_chunks=8), 256 * kib) == (16, 16)
    assert read_grouping(LoaderConfig(batch_size=8, shuffle=False, shuffle_buffer_chunks=1), 1024 * kib) == (4, 4)
    assert read_grouping(LoaderConfig(batch_size=8, shuffle=False), 16 << 20) == (1, 1)
    # tiny chunks: never more GETs per fetch than the request budget (2 x concurrency + 8)
    assert read_grouping(LoaderConfig(batch_size=8, shuffle=False, concurrency=16), 4 * kib) == (40, 40)
    # patches: one read per call
    patch = PatchSpec((4, 4))
    assert read_grouping(LoaderConfig(batch_size=8, patch=patch), 64 * kib) == (1, 8)
    assert read_grouping(LoaderConfig(batch_size=8, shuffle=False, patch=patch), 64 * kib) == (1, 1)


def test_recycled_batch_memory_never_changes_a_batch_still_held(datasets: Datasets) -> None:
    """Shuffled batches reuse the memory of batches the consumer dropped (batchpool), and only theirs:
    every batch still held (as a tensor, or a view of one) keeps its samples while later batches are
    written into recycled memory."""
    ld = loader(datasets, "raw.zarr", batch_size=7, shuffle=True, seed=2, min_read_bytes=1)
    held = []
    for i, b in enumerate(ld):
        check_content(b)
        if i % 3 == 0:
            held.append({"images": b["images"][1:], "labels": b["labels"][1:], "index": b["index"][1:]})
    for b in held:
        check_content(b)
    pool = ld._batcher._pool
    assert pool is not None and pool.reused > 0, "dropped batches' memory should have been reused"
    assert pool.idle_bytes <= pool.capacity_bytes


def test_first_fetch_does_not_share_the_link_with_the_whole_pipe(datasets: Datasets, monkeypatch) -> None:
    """Until the first fetch of an epoch is in, at most START_BYTES of fetches are in flight (here: that
    one alone); then the whole pipe (so the first batch of large chunks is not delayed by the others)."""
    from zarrloader import nodes

    monkeypatch.setattr(nodes, "START_BYTES", 1)
    ld = make_loader(ZarrSource(datasets.url("stack.zarr"), storage_options=datasets.options), batch_size=4,
                     shuffle=False, concurrency=4, min_read_bytes=1, return_index=True)  # 24 reads of 1 row
    fetch = ld._batcher.source
    in_flight: list[int] = []  # other fetches running while one is waited for
    result = fetch._result

    def spy(group, fut):
        in_flight.append(len(fetch._pending))
        return result(group, fut)

    monkeypatch.setattr(fetch, "_result", spy)
    assert sorted(i for b in ld for i in b["index"].tolist()) == list(range(24))
    assert in_flight[0] == 0, "the first fetch shared the link with others"
    assert max(in_flight) == fetch._limit > 1, "after the first fetch the pipe should be full"
