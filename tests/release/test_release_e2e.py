"""`imagectl release` end to end on the real default image: the suite runs inside it, the gate holds
the run against the image's own recorded check list, and the image goes to a real loopback registry
(CPU mode here: --allow-cpu-only, so every tag says -gpu-unverified)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagectl.docker import inspect_image
from imagectl.registry import LocalRegistry, manifest_info

pytestmark = pytest.mark.docker


def test_release_smokes_gates_and_pushes_the_real_image(built_image: str, registry: LocalRegistry,
                                                        tmp_path: Path) -> None:
    image_id = inspect_image(built_image).id
    cmd = [sys.executable, "-m", "imagectl.cli", "release", "--registry", registry.address, "--allow-cpu-only",
           "--layers", "data", "--no-sbom", "--out", str(tmp_path / "out")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "smoke PASSED" in res.stdout and "gate ok" in res.stdout
    record = json.loads((tmp_path / "out/pushes.jsonl").read_text().splitlines()[0])
    assert record["image_id"] == image_id and record["gpu_verified"] is False
    ref = next(r for r in record["refs"] if r.endswith(":v2.6-cu124-gpu-unverified"))
    info = manifest_info(ref)
    assert info is not None and info.config_digest == image_id  # the registry holds what passed
    kept = json.loads((Path(record["record_dir"]) / "smoke-report.json").read_text())
    assert kept["image_id"] == image_id and kept["mode"] == "cpu"
