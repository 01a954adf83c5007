"""The real pin checks of smoke_tests/ against a build record: they pass on a matching one and
fail on a mismatching one (so they can fail)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def write_build_info(tmp_path: Path, **over: object) -> Path:
    torch_version = metadata.version("torch").split("+")[0]
    info = {"image": "pytorch-cuda", "variant": "cu124", "layer": "data", "torch": torch_version,
            "data_stack": {"zarr": metadata.version("zarr"), "pytest": metadata.version("pytest")}}
    info.update(over)
    path = tmp_path / "build-info.json"
    path.write_text(json.dumps(info))
    return path


def test_pins_pass_and_fail(tmp_path: Path, run_smoke) -> None:
    good = write_build_info(tmp_path)
    select = "test_torch_matches_pin or test_data_stack_matches_pins"
    code, report, out = run_smoke(REPO / "smoke_tests", "--expect", "cpu", "-k", select,
                                  env={"PYTORCH_CUDA_BUILD_INFO": str(good)})
    assert code == 0, out
    assert report["variant"] == "cu124" and report["build_info"]["torch"]
    assert report["summary"]["passed"] == 2

    bad = write_build_info(tmp_path, torch="1.0.0", data_stack={"zarr": "0.0.1"})
    code, report, out = run_smoke(REPO / "smoke_tests", "--expect", "cpu", "-k", select,
                                  env={"PYTORCH_CUDA_BUILD_INFO": str(bad)})
    assert code == 1
    reasons = " ".join(c["reason"] or "" for c in report["checks"])
    assert "pins 1.0.0" in reasons and "zarr" in reasons
