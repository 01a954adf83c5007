"""Version, arch-coverage and tolerance helpers the checks rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smokesuite.arch import coverage, parse_sm
from smokesuite.buildinfo import BUILD_INFO_ENV, BuildInfoError, load_build_info
from smokesuite.numerics import within_tolerance
from smokesuite.versions import (
    cuda_driver_int_to_str,
    cudnn_int_to_tuple,
    parse_require_cuda,
    public_version,
    same_release,
    version_at_least,
)


def test_versions() -> None:
    assert public_version("2.6.0+cu124") == "2.6.0"
    assert same_release("2.6.0+cu124", "2.6.0") and not same_release("2.6.1", "2.6.0")
    assert same_release("9.1.0", "9.1.0.70", parts=3) and not same_release("9.5.1", "9.1.0.70", parts=3)
    assert cudnn_int_to_tuple(90100) == (9, 1, 0) and cudnn_int_to_tuple(91900) == (9, 19, 0)
    assert cudnn_int_to_tuple(8902) == (8, 9, 2)
    assert cuda_driver_int_to_str(12040) == "12.4" and cuda_driver_int_to_str(13000) == "13.0"
    assert version_at_least("525.60.13", "525.60.13") and not version_at_least("525.60.11", "525.60.13")
    assert version_at_least("550.54", "525.60.13") and not version_at_least("11.8", "12.0")
    assert parse_require_cuda("cuda>=12.0") == "12.0" and parse_require_cuda("") is None


@pytest.mark.parametrize(("sm", "archs", "covered"), [
    ("sm_90", ["sm_80", "sm_90"], True),
    ("sm_89", ["sm_80", "sm_86"], True),          # same major, lower minor: binary compatible
    ("sm_120", ["sm_80", "sm_90", "compute_90"], True),  # PTX JIT
    ("sm_120", ["sm_50", "sm_90"], False),
    ("sm_90", ["sm_90a"], True),
    ("sm_100", ["sm_90a", "sm_100a"], True),
    ("sm_75", ["sm_80", "compute_80"], False),     # PTX newer than the device does not run
    ("sm_86", ["sm_80a"], False),                  # arch-specific SASS is not portable
])
def test_arch_coverage(sm: str, archs: list[str], covered: bool) -> None:
    assert (coverage(parse_sm(sm), archs) is not None) is covered


def test_tolerances_reject_nan_and_large_errors() -> None:
    assert within_tolerance(1e-6, "float32") and not within_tolerance(1e-2, "float32")
    assert not within_tolerance(float("nan"), "bfloat16")


def test_build_info_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUILD_INFO_ENV, str(tmp_path / "none.json"))
    assert load_build_info() is None
    path = tmp_path / "bi.json"
    path.write_text(json.dumps({"variant": "cu124", "torch": "2.6.0", "wheels": {"nvidia-nccl-cu12": "2.21.5"}}))
    monkeypatch.setenv(BUILD_INFO_ENV, str(path))
    info = load_build_info()
    assert info is not None and info.variant == "cu124" and info.wheels == {"nvidia-nccl-cu12": "2.21.5"}
    with pytest.raises(BuildInfoError, match="cudnn"):
        info.require("cudnn")
    path.write_text("[1, 2]")
    with pytest.raises(BuildInfoError):
        load_build_info()
