"""make_loader: Zarr -> shuffled, batched, prefetched torch tensors on ``torchdata.nodes``.

Threads, not processes: chunk fetch is network I/O and chunk decode is C code (blosc, zstd, numpy
copies) that release the GIL, so threads keep the pipes full without pickling every batch between
processes, and no filesystem object ever has to cross a fork. If a CPU-heavy per-sample
``sample_transform`` becomes the bottleneck, run one loader per process (e.g. one per DDP rank, or
spawn workers that each build their own loader): ``ZarrSource`` and ``make_loader`` open nothing
until the first batch is requested, so they are safe to create before forking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode, Loader, Mapper, PinMemory, Prefetcher

from .nodes import Failure, PatchSpec, PlanFetch, ShuffleBatcher, patch_extents, read_setup
from .plan import PlanConfig, make_plan, read_grouping, request_budget
from .source import ZarrSource
from .storage import StorageOptions

__all__ = ["LoaderConfig", "ZarrLoader", "make_loader", "read_grouping", "request_budget"]


@dataclass(frozen=True)
class LoaderConfig:
    """Everything make_loader was asked for (see make_loader for the meaning of each field)."""

    batch_size: int
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer_chunks: int = 8
    concurrency: int = 16
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    patch: PatchSpec | None = None
    prefetch: int = 2
    pin_memory: bool = False
    return_index: bool = False
    initial_epoch: int = 0
    min_read_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {self.prefetch}")


def _to_tensors(batch: Any) -> Any:
    if isinstance(batch, Failure):
        return batch
    return {k: torch.from_numpy(_tensorable(v)) for k, v in batch.items()}


def _tensorable(v: np.ndarray) -> np.ndarray:
    """``v`` as torch.from_numpy accepts it without copying when it can: native byte order (torch has
    no other; big-endian Zarr data is common), C-contiguous, and writable (the batcher never hands
    over read-only views; the check keeps a tensor from ever aliasing read-only memory)."""
    if v.dtype.kind == "M":  # CF times decoded to datetime64: torch has no datetime type
        v = v.astype("datetime64[ns]", copy=False).view(np.int64)
    if not v.dtype.isnative:
        return v.astype(v.dtype.newbyteorder("="))
    if not v.flags.writeable:
        return v.copy()
    return np.ascontiguousarray(v)


class _PassFailures:
    """Apply ``fn`` to real batches; let Failure values through untouched."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        if isinstance(item, Failure):
            return item
        try:
            return self.fn(item)
        except Exception as exc:
            return Failure(exc)


class _SampleTransform:
    """Per-sample transform on numpy dicts, then torch's default collate."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], Any]) -> None:
        self.fn = fn

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from torch.utils.data import default_collate

        n = len(next(iter(batch.values())))
        return default_collate([self.fn({k: v[i] for k, v in batch.items()}) for i in range(n)])


class _Unwrap(Iterator[Any]):
    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it

    def __iter__(self) -> _Unwrap:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        if isinstance(item, Failure):
            raise item.exc
        return item


class ZarrLoader(Loader):  # type: ignore[type-arg]
    """A ``torchdata.nodes.Loader`` (iterate it once per epoch; ``state_dict``/``load_state_dict``
    resume mid-epoch exactly) that raises read errors as their original exceptions."""

    def __init__(self, root: BaseNode[Any], source: ZarrSource, config: LoaderConfig, batcher: ShuffleBatcher) -> None:
        super().__init__(root)
        self.source = source
        self.config = config
        self._batcher = batcher

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _Unwrap(super().__iter__())

    @property
    def epoch(self) -> int:
        return self._batcher.epoch

    def num_samples(self, epoch: int | None = None) -> int:
        """Samples this rank yields per epoch (opens metadata if not yet open)."""
        return make_plan(self._plan_config(), self.epoch if epoch is None else epoch).total

    def _plan_config(self) -> PlanConfig:
        return read_setup(self.source, self.config).plan_config

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        n = self.num_samples()
        b = self.config.batch_size
        return n // b if self.config.drop_last else math.ceil(n / b)

    def memory_bound_bytes(self) -> int:
        """Upper bound of the bytes the pipeline allocates: K buffered reads; up to 2*concurrency
        fetches (of ``group`` coalesced reads each) queued or running, the running ones with their
        encoded bytes held twice while they arrive and decode; the batches being assembled,
        transformed, pinned and prefetched (in storage order: views keeping their fetch alive)."""
        c = self.config
        src = self.source
        if c.patch is None:
            read_bytes = src.block_length * src.sample_nbytes
            sample = src.sample_nbytes
        else:
            sample = self._patch_sample_nbytes()
            read_bytes = src.block_length * sample
        group, buffered = read_grouping(c, read_bytes)
        # a batch is a copy (shuffled: from recycled memory, leased plus idle within the same count,
        # see batchpool) or a view that keeps its whole fetch alive (storage order)
        per_batch = max(c.batch_size * sample, group * read_bytes) if not c.shuffle else c.batch_size * sample
        batches = _batches_in_pipeline(c) * per_batch
        # up to 2*concurrency fetches queued or running; the `concurrency` running ones may hold their
        # bytes twice more while they arrive (HTTP body parts, then the joined object) and decode
        return (buffered + 4 * c.concurrency * group) * read_bytes + batches

    def _patch_sample_nbytes(self) -> int:
        assert self.config.patch is not None
        total = 0
        for info in self.source.infos:
            shape = list(info.sample_shape)
            axes = self.source.patch_axes(info, self.config.patch.axes)
            if axes is not None:
                for a, s in zip(axes, self.config.patch.size, strict=True):
                    shape[a - 1] = s
            total += math.prod(shape) * info.itemsize
        return total


def _batches_in_pipeline(c: LoaderConfig) -> int:
    """Batches alive at once between the batcher and the training step: prefetched, being transformed
    and pinned, the one the step holds, and the one being assembled."""
    return c.prefetch + 3 + (1 if c.pin_memory else 0)


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _patch_extents(source: ZarrSource, patch: PatchSpec) -> tuple[int, ...]:
    return patch_extents(source, patch)


def make_loader(
    source: ZarrSource | str,
    batch_size: int,
    *,
    arrays: Sequence[str] | None = None,
    storage_options: StorageOptions | Mapping[str, Any] | None = None,
    sample_dim: str | None = None,
    decode: str | None = None,
    times: str = "numeric",
    shuffle: bool = True,
    seed: int = 0,
    shuffle_buffer_chunks: int = 8,
    concurrency: int = 16,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    patch_size: Sequence[int] | None = None,
    patch_axes: Sequence[int] = (-2, -1),
    transform: Callable[[dict[str, torch.Tensor]], Any] | None = None,
    sample_transform: Callable[[dict[str, np.ndarray]], Any] | None = None,
    prefetch: int = 2,
    pin_memory: bool | None = None,
    return_index: bool = False,
    initial_epoch: int = 0,
    min_read_bytes: int = 4 << 20,
) -> ZarrLoader:
    """Build a loader over ``source`` (a ZarrSource, or a URL opened with ``arrays``/``storage_options``/
    ``sample_dim``/``decode``/``times``, see ZarrSource: arrays along the sample dimension are batched,
    sample-major; ``decode="cf"`` CF-decodes every batch as xarray would).

    Each batch is a dict ``{array name: tensor of batch_size samples}`` (name "" for a bare array),
    plus ``"index"`` (global sample rows) when ``return_index``.

    shuffle, seed: shuffle the chunk order every epoch from (seed, epoch), then samples inside a
        buffer of ``shuffle_buffer_chunks`` reads. shuffle=False reads in storage order.
    concurrency: fetches in flight (on zarr's event loop; threads in patch mode); zarr's async
        concurrency and the HTTP pool follow it.
    rank, world_size: DDP sharding (default: from torch.distributed when initialised). Each sample
        goes to exactly one rank; ranks differ by at most one sample per epoch.
    patch_size, patch_axes: patch mode: a random window per sample instead of whole samples.
    transform: called on every batch of tensors; sample_transform: on every sample (numpy dict)
        before collation (slower: per-sample Python).
    pin_memory: None = pin when CUDA is available.
    min_read_bytes: reads of smaller chunks are coalesced (shuffled: up to shuffle_buffer_chunks per call).
    """
    if isinstance(source, ZarrSource):
        if arrays is not None or storage_options is not None or sample_dim is not None or decode is not None \
                or times != "numeric":
            raise ValueError("pass arrays/storage_options/sample_dim/decode/times to ZarrSource(...), not "
                             "make_loader, when giving a ZarrSource")
    else:
        source = ZarrSource(source, arrays=arrays, storage_options=storage_options, sample_dim=sample_dim,
                            decode=decode, times=times)  # type: ignore[arg-type]
    if rank is None or world_size is None:
        d_rank, d_world = _default_rank_world()
        rank = d_rank if rank is None else rank
        world_size = d_world if world_size is None else world_size
    cuda = torch.cuda.is_available()
    if pin_memory and not cuda:
        raise ValueError("pin_memory=True needs CUDA, and torch.cuda.is_available() is False: pass pin_memory=None")
    pin = cuda if pin_memory is None else bool(pin_memory)
    patch = PatchSpec(tuple(patch_size), tuple(patch_axes)) if patch_size is not None else None
    config = LoaderConfig(
        batch_size=batch_size, shuffle=shuffle, seed=seed, shuffle_buffer_chunks=shuffle_buffer_chunks,
        concurrency=concurrency, drop_last=drop_last, rank=rank, world_size=world_size, patch=patch,
        prefetch=prefetch, pin_memory=pin, return_index=return_index, initial_epoch=initial_epoch,
        min_read_bytes=min_read_bytes,
    )
    # validate rank/world_size/buffer now, before any I/O
    PlanConfig(num_samples=0, block_length=1, rank=rank, world_size=world_size, buffer_blocks=shuffle_buffer_chunks)

    # Size the HTTP pool to the reads in flight: each of `concurrency` fetches may read one chunk of
    # every array at once; below that, requests queue for a connection and latency dominates.
    source.reserve_connections(request_budget(concurrency))
    # The fetch node owns the plan and the fetches (see nodes.PlanFetch); the batcher passes the epoch
    # and position down through reset(). Metadata opens at the first iteration, in its process.
    batcher = ShuffleBatcher(PlanFetch(source, config), batch_size=batch_size, drop_last=drop_last,
                             return_index=return_index, initial_epoch=initial_epoch,
                             decode=source.decode_batch if source.decode else None,
                             # storage order copies only batches that straddle fetches: no pool there
                             pool_batches=_batches_in_pipeline(config) if shuffle else 0)
    node: BaseNode[Any] = batcher
    if sample_transform is not None:
        node = Mapper(node, _PassFailures(_SampleTransform(sample_transform)))
    else:
        node = Mapper(node, _to_tensors)
    if transform is not None:
        node = Mapper(node, _PassFailures(transform))
    if pin:
        node = PinMemory(node)
    node = Prefetcher(node, prefetch_factor=prefetch)
    return ZarrLoader(node, source, config, batcher)
