"""Fixtures of the cluster tests: the built data image, a container engine, and a report folder any UID can write.

The image tests run the in-image suite (`smoke --expect cpu`) the way clusters start containers: as a UID
the image does not know, with a read-only root, under podman. A missing image is a skip, or a failure
when REQUIRE_BUILT_IMAGE is set (CI after its build, where a skip would hide a failure).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagectl.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]
_M = load_matrix()
BUILT_IMAGE = os.environ.get("CLUSTER_TEST_IMAGE") or _M.image_refs(_M.variant(), "data")[0]


def _engine_answers(engine: str) -> bool:
    if shutil.which(engine) is None:
        return False
    try:
        return subprocess.run([engine, "info"], capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def missing_image(msg: str) -> None:
    if os.environ.get("REQUIRE_BUILT_IMAGE"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def built_image() -> str:
    """The default data image as `make build` makes it (CLUSTER_TEST_IMAGE overrides)."""
    if not _engine_answers("docker"):
        missing_image("no Docker engine answers (scripts/install-docker-engine.sh installs and starts one)")
    if subprocess.run(["docker", "image", "inspect", BUILT_IMAGE], capture_output=True).returncode != 0:
        missing_image(f"{BUILT_IMAGE} is not built: `make build` builds it")
    return BUILT_IMAGE


@pytest.fixture
def out_dir() -> Iterator[Path]:
    """A host folder for the report, writable by whatever UID the container runs as; removed at the end."""
    d = Path(tempfile.mkdtemp(prefix="cluster-smoke-"))
    try:
        d.chmod(0o1777)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
