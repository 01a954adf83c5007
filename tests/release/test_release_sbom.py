"""SBOM of the real image, made from the image's own Python environment and dpkg status (read-only)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from imagectl.sbom import components, generate_sbom

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def real_image(built_image: str) -> str:
    return built_image


def test_sbom_of_the_real_image(real_image: str, tmp_path: Path) -> None:
    # Compare with what the image says it was built with (its build-info.json), not today's matrix:
    # this tests the SBOM, while `imagectl verify` checks the image against the matrix.
    info = json.loads(subprocess.run(["docker", "run", "--rm", "--entrypoint", "cat", real_image,
                                      "/opt/pytorch-cuda/build-info.json"],
                                     capture_output=True, text=True, check=True).stdout)
    result = generate_sbom(real_image, tmp_path)
    assert set(result.files) == {"debian", "python"}, result.notes
    py = {c["name"].lower(): c for c in components(result.files["python"])}
    pins = {k: info[k] for k in ("torch", "torchvision", "torchaudio")} | info["data_stack"]
    for pkg, version in pins.items():
        assert py[pkg]["version"].split("+")[0] == version, pkg
        assert py[pkg]["purl"].startswith("pkg:pypi/")
    assert "cyclonedx-bom" not in py  # the tool did not list itself
    deb = {c["name"] for c in components(result.files["debian"])}
    assert {"python3", "tini", "ca-certificates"} <= deb
