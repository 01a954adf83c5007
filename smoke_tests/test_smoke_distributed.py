"""All-reduce across processes: NCCL over every visible GPU; gloo on CPU runs the same harness
(launcher, rendezvous, timeout, correctness) on hosts without GPUs."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest

from smokesuite.allreduce import (
    DEFAULT_TIMEOUT_S,
    GLOO_SIZES,
    NCCL_SINGLE,
    NCCL_SWEEP,
    classify_failure,
    run_allreduce,
)
from smokesuite.plugin import Figures


def gloo_world_size() -> int:
    return max(2, min(4, os.cpu_count() or 2))


def test_allreduce_gloo_cpu(torch: ModuleType, figures: Figures) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail(f"torch {torch.__version__} has no gloo backend", pytrace=False)
    result = run_allreduce("gloo", gloo_world_size(), GLOO_SIZES, timeout_s=DEFAULT_TIMEOUT_S)
    figures.update(result.figures())
    assert result.ok, f"gloo all-reduce failed: {result.summary()}"


@pytest.mark.gpu
def test_allreduce_nccl_all_gpus(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    if not torch.distributed.is_nccl_available():
        pytest.fail(f"torch {torch.__version__} was built without NCCL", pytrace=False)
    n = len(cuda_devices)
    sizes, measure = (NCCL_SWEEP, True) if n >= 2 else (NCCL_SINGLE, False)  # n == 1: correctness only
    first = run_allreduce("nccl", n, sizes, timeout_s=DEFAULT_TIMEOUT_S, measure=measure)
    figures.update(first.figures())
    if first.ok:
        return
    retry = run_allreduce("nccl", n, sizes, timeout_s=DEFAULT_TIMEOUT_S, measure=False,
                          env_overrides={"NCCL_P2P_DISABLE": "1"})
    kind = classify_failure(first, retry)
    figures["failure_class"] = kind
    if kind == "p2p":
        pytest.fail(f"NCCL all-reduce over {n} GPUs fails with peer-to-peer and works with NCCL_P2P_DISABLE=1: "
                    f"GPU P2P is broken here (IOMMU/ACS, virtualisation, or a container without --ipc=host). "
                    f"Fix the host or set NCCL_P2P_DISABLE=1. First error: {first.summary()}", pytrace=False)
    pytest.fail(f"NCCL all-reduce over {n} GPUs failed ({kind}), also with NCCL_P2P_DISABLE=1: "
                f"{first.summary()} | retry: {retry.summary()} (run `doctor`; check /dev/shm size)", pytrace=False)
