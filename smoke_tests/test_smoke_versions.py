"""The image's versions equal its variant's pins (read from build-info.json, never retyped here)."""

from __future__ import annotations

import sys
from importlib import metadata
from types import ModuleType

import pytest

from smokesuite.buildinfo import BuildInfo
from smokesuite.expect import DATA_LAYERS
from smokesuite.plugin import Figures
from smokesuite.versions import cudnn_int_to_tuple, public_version, same_release


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _mismatches(pins: dict[str, str]) -> list[str]:
    bad = []
    for name, pin in sorted(pins.items()):
        got = _dist_version(name)
        if got is None:
            bad.append(f"{name}: not installed (pinned {pin})")
        elif public_version(got) != public_version(pin):
            bad.append(f"{name}: {got} installed, {pin} pinned")
    return bad


def test_torch_matches_pin(torch: ModuleType, pins: BuildInfo, figures: Figures) -> None:
    figures.update({"torch": torch.__version__, "pin": pins.require("torch")})
    assert public_version(torch.__version__) == pins.require("torch"), (
        f"torch {torch.__version__} in the image, variant {pins.variant} pins {pins.require('torch')}: "
        f"the image was built from another matrix entry; rebuild it")
    companions = {k: pins.require(k) for k in ("torchvision", "torchaudio") if pins.get(k)}
    bad = _mismatches(companions)
    assert not bad, "torch companions differ from their pins: " + "; ".join(bad)


def test_python_matches_pin(pins: BuildInfo, figures: Figures) -> None:
    got = ".".join(map(str, sys.version_info[:2]))
    figures.update({"python": got, "pin": pins.require("python")})
    assert same_release(got, pins.require("python")), (
        f"Python {got} runs the suite, variant {pins.variant} was built for Python {pins.require('python')}")


def test_cuda_matches_pin(torch: ModuleType, pins: BuildInfo, figures: Figures) -> None:
    figures["torch_cuda"] = torch.version.cuda
    assert torch.version.cuda is not None, f"torch {torch.__version__} is a CPU build; variant {pins.variant} needs CUDA {pins.require('cuda')}"
    assert same_release(torch.version.cuda, pins.require("cuda")), (
        f"torch was built for CUDA {torch.version.cuda}, variant {pins.variant} pins CUDA {pins.require('cuda')}")


def test_cudnn_matches_pin(torch: ModuleType, pins: BuildInfo, figures: Figures) -> None:
    version = torch.backends.cudnn.version()
    assert version is not None, "cuDNN cannot be loaded (torch.backends.cudnn.version() is None); run `doctor`"
    got = ".".join(map(str, cudnn_int_to_tuple(version)))
    figures.update({"cudnn": got, "pin": pins.require("cudnn")})
    assert same_release(got, pins.require("cudnn"), parts=3), (
        f"cuDNN {got} loaded, variant {pins.variant} pins {pins.require('cudnn')} (a system cuDNN on "
        f"LD_LIBRARY_PATH shadowing the bundled one? run `doctor`)")


def test_nccl_matches_pin(torch: ModuleType, pins: BuildInfo, figures: Figures) -> None:
    if not torch.distributed.is_nccl_available():
        pytest.fail(f"this torch build has no NCCL; variant {pins.variant} pins NCCL {pins.require('nccl')}", pytrace=False)
    got = ".".join(map(str, torch.cuda.nccl.version()))
    figures.update({"nccl": got, "pin": pins.require("nccl")})
    assert same_release(got, pins.require("nccl"), parts=3), f"NCCL {got} loaded, variant pins {pins.require('nccl')}"


def test_runtime_wheels_match_pins(pins: BuildInfo, figures: Figures) -> None:
    wheels = pins.wheels
    assert wheels, f"{pins.path} lists no runtime wheels: rebuild the image"
    figures["wheels_checked"] = len(wheels)
    bad = _mismatches(wheels)
    assert not bad, "nvidia runtime wheels differ from the variant's pins: " + "; ".join(bad)


def test_data_stack_matches_pins(pins: BuildInfo, figures: Figures) -> None:
    stack = pins.data_stack
    if pins.get("layer") not in (None, *DATA_LAYERS) or not stack:
        pytest.skip(f"layer {pins.get('layer')!r} carries no data stack")
    figures["packages_checked"] = len(stack)
    bad = _mismatches(stack)
    assert not bad, "data stack differs from its pins: " + "; ".join(bad)
