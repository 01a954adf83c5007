"""A real build from the locks: a lock with one package's hashes tampered fails the build, naming
the package. Uses the real Dockerfile and the real data-layer install step; with the default image
built (make build) the layers below come from the build cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imagectl.bake import BuildContext, build_args
from imagectl.build import LOCAL_OS_IMAGE
from imagectl.locks import lock_path
from imagectl.matrix import load_matrix

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


def _context(tmp: Path) -> Path:
    """The build context as the Dockerfile sees it (the .dockerignore allow-list)."""
    ctx = tmp / "ctx"
    for part in ("src/zarrloader", "src/smokesuite", "smoke_tests", "images/locks", "docker"):
        shutil.copytree(REPO / part, ctx / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / ".dockerignore", ctx / ".dockerignore")
    return ctx


def test_a_tampered_lock_fails_the_build_naming_the_package(built_image: str, tmp_path: Path) -> None:
    m = load_matrix()
    v = m.variant()
    ctx = _context(tmp_path)
    lock = ctx / lock_path(v.name, "data", "linux/amd64").relative_to(REPO)
    text = lock.read_text()
    entry = re.search(r"^tqdm==\S+ \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M)
    assert entry, "tqdm is not in the data lock"
    tampered = re.sub(r"[0-9a-f]{64}", lambda h: h.group(0)[::-1], entry.group(1))  # every hash of tqdm
    lock.write_text(text.replace(entry.group(1), tampered))

    os_image = os.environ.get("OS_IMAGE", LOCAL_OS_IMAGE)
    ctx_info = BuildContext.detect(m, os_image=os_image)
    assert v.name in ctx_info.locked
    cmd = ["docker", "build", "--progress", "plain", "-f", str(ctx / "docker/Dockerfile"), "--target", "data",
           "-t", "pytorch-cuda-test:tampered"]
    for k, val in build_args(m, v, ctx_info).items():
        cmd += ["--build-arg", f"{k}={val}"]
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        cmd += ["--secret", f"id=ca_bundle,src={ca}"]
    res = subprocess.run([*cmd, str(ctx)], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "DOCKER_BUILDKIT": "1"})
    out = res.stdout + res.stderr
    subprocess.run(["docker", "rmi", "-f", "pytorch-cuda-test:tampered"], capture_output=True)
    assert res.returncode != 0, "the build accepted a lock with wrong hashes"
    assert "Hash mismatch for `tqdm==" in out, out[-3000:]
    assert "install-layer: data from data.linux-amd64.txt" in out
