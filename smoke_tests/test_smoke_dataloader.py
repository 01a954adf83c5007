"""DataLoader workers hand batches over through /dev/shm: too small a /dev/shm fails here, clearly."""

from __future__ import annotations

import os
import time
from types import ModuleType
from typing import Any

from smokesuite.plugin import Figures

BATCH_MIB = 16
BATCHES = 12


class _Blocks:
    """Map-style dataset of 1 MiB float32 blocks filled with their index."""

    def __len__(self) -> int:
        return BATCHES * BATCH_MIB

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.full((256 * 1024,), float(i))


def shm_mib() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_blocks * st.f_frsize // (1024 * 1024)


def test_dataloader_workers_shared_memory(torch: ModuleType, figures: Figures) -> None:
    # 2 workers x prefetch 4 x 16 MiB: ~128 MiB in flight, more than Docker's default 64 MiB /dev/shm.
    loader = torch.utils.data.DataLoader(_Blocks(), batch_size=BATCH_MIB, num_workers=2, prefetch_factor=4,
                                         timeout=60, persistent_workers=False)
    figures["shm_mib"] = shm_mib()
    seen = 0
    try:
        for b, batch in enumerate(loader):
            if b == 0:
                time.sleep(0.5)  # let the workers fill their prefetch queue
            first = b * BATCH_MIB
            assert torch.equal(batch[:, 0], torch.arange(first, first + BATCH_MIB, dtype=torch.float32)), (
                f"batch {b} holds the wrong samples")
            seen += 1
    except RuntimeError as exc:
        raise AssertionError(
            f"/dev/shm ({figures['shm_mib']} MiB) is too small for DataLoader workers, which pass batches "
            f"through shared memory: run the container with --shm-size=8g or --ipc=host "
            f"({str(exc).splitlines()[0]})") from exc
    figures["batches"] = seen
    assert seen == BATCHES
