"""Fixtures shared by the smoke checks: build info (the pins), figures, and the visible GPUs."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from smokesuite.buildinfo import BuildInfo, load_build_info, missing_reason
from smokesuite.expect import expected_mode, gpu_skip
from smokesuite.plugin import Figures


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = load_build_info()
    where = f"{info.path} (variant {info.variant})" if info else "none (plain host: pin checks skip)"
    return [f"smoke: SMOKE_EXPECT={expected_mode() or 'unset'}; build info: {where}"]


@pytest.fixture(scope="session")
def build_info() -> BuildInfo | None:
    return load_build_info()


@pytest.fixture
def pins(build_info: BuildInfo | None) -> BuildInfo:
    """The variant's pins, recorded at build time; a plain (non-GPU) skip on a host without them."""
    if build_info is None:
        pytest.skip(missing_reason())
    return build_info


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node)


@pytest.fixture(scope="session")
def torch() -> ModuleType:
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        pytest.fail(f"torch cannot be imported: {exc}", pytrace=False)


def _cuda_build(torch: ModuleType) -> None:
    if torch.version.cuda is None:
        gpu_skip(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")


@pytest.fixture
def cuda_build(torch: ModuleType) -> ModuleType:
    """torch, when it is a CUDA build (a GPU may still be absent)."""
    _cuda_build(torch)
    return torch


@pytest.fixture
def cuda_devices(torch: ModuleType) -> list[Any]:
    """Every visible CUDA device; a GPU skip (a failure under SMOKE_EXPECT=gpu) when there is none."""
    _cuda_build(torch)
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        gpu_skip("no CUDA device is visible (in a container: run with --gpus all; `doctor` tells why)")
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
