"""Fixtures for the release tests: a real registry on loopback and small layered test images.

The test images are FROM scratch (no base image, no pull) with three stages that mirror the real
base -> torch -> data chain and carry the labels `imagectl build` writes, so the gate treats them
exactly like real images. They are named pushtest/gate-<nonce> and removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from release_helpers import GateImages

from imagectl.matrix import Matrix, load_matrix
from imagectl.registry import LocalRegistry

REPO = Path(__file__).resolve().parents[2]


def docker_ok() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def need_docker() -> None:
    if not docker_ok():
        pytest.skip("no Docker engine answers (scripts/install-docker-engine.sh installs and starts one)")


@pytest.fixture(scope="session")
def registry(need_docker: None) -> Iterator[LocalRegistry]:
    """Debian's docker-registry on 127.0.0.1:<free port>, installed first if missing (root + apt)."""
    if shutil.which("docker-registry") is None:
        res = subprocess.run(["bash", str(REPO / "scripts/install-registry.sh")], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"cannot install docker-registry: {res.stderr.strip()}")
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="session")
def matrix() -> Matrix:
    return load_matrix()


@pytest.fixture
def images(need_docker: None, tmp_path: Path, matrix: Matrix) -> Iterator[GateImages]:
    imgs = GateImages(name=f"pushtest/gate-{uuid.uuid4().hex[:8]}", ctx=tmp_path / "ctx", matrix=matrix)
    try:
        yield imgs
    finally:
        imgs.remove()


_M = load_matrix()
BUILT_IMAGE = _M.image_refs(_M.variant(), "data")[0]  # the default data image, from the matrix


@pytest.fixture(scope="module")
def built_image(need_docker: None) -> str:
    """The default data image as `make build` makes it. Missing: a skip, or a failure when
    REQUIRE_BUILT_IMAGE is set (.ci/run after its build, where a skip would hide a failure)."""
    if subprocess.run(["docker", "image", "inspect", BUILT_IMAGE], capture_output=True).returncode != 0:
        msg = f"{BUILT_IMAGE} is not built: `make build` builds it"
        if os.environ.get("REQUIRE_BUILT_IMAGE"):
            pytest.fail(msg)
        pytest.skip(msg)
    return BUILT_IMAGE
