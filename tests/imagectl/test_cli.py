"""imagectl / make: variants listing, and unknown variants failing before any Docker work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagectl.matrix import load_matrix


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def docker_spy(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a `docker` that only records that it was called (to prove nothing reached Docker)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "docker-was-called"
    spy = bindir / "docker"
    spy.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    spy.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return env, marker


def test_variants_table_and_json(repo: Path) -> None:
    res = run([sys.executable, "-m", "imagectl.cli", "variants"], repo)
    assert res.returncode == 0
    assert "cu124 *" in res.stdout and "cu118" in res.stdout and "cu126" in res.stdout
    data = json.loads(run([sys.executable, "-m", "imagectl.cli", "variants", "--json"], repo).stdout)
    assert data["variants"]["cu126"]["cudnn"] == load_matrix().variant("cu126").cudnn
    assert data["variants"]["cu124"]["tags"]["data"][-1] == data["image"]["series"]


@pytest.mark.parametrize("variant", ["cu121", "cu999"])
def test_imagectl_build_unknown_variant_fails_before_docker(repo: Path, docker_spy, variant: str) -> None:
    env, marker = docker_spy
    res = run([sys.executable, "-m", "imagectl.cli", "build", "--variant", variant], repo, env)
    assert res.returncode == 2
    assert "cu118, cu124, cu126" in res.stderr
    if variant == "cu121":
        assert "no CUDA 12.1 build" in res.stderr and ">= 525" in res.stderr
    assert not marker.exists(), "docker was invoked for a variant that does not exist"


def test_make_build_unknown_variant_fails_before_docker(repo: Path, docker_spy) -> None:
    env, marker = docker_spy
    venv = Path(sys.executable).parent.parent
    res = run(["make", "--no-print-directory", "build", "VARIANT=cu121", f"VENV={venv}"], repo, env)
    assert res.returncode != 0
    assert "no CUDA 12.1 build" in res.stderr
    assert not marker.exists()


def test_malformed_matrix_is_reported_by_the_cli(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text((repo / "images" / "matrix.toml").read_text().replace('cuda = "12.4"', 'cuda = "twelve"'))
    res = run([sys.executable, "-m", "imagectl.cli", "--matrix", str(bad), "variants"], repo)
    assert res.returncode == 2
    assert "variants.cu124.cuda: 'twelve' is not a valid CUDA major.minor version" in res.stderr


@pytest.mark.docker
def test_an_os_image_that_cannot_be_pulled_points_to_make_base_os(need_docker: None) -> None:
    from imagectl.build import ensure_os_image
    from imagectl.docker import DockerError

    with pytest.raises(DockerError) as exc:
        ensure_os_image("localhost:1/pytorch-cuda-test/no-such-os:0")
    msg = str(exc.value)
    assert "cannot pull the OS image" in msg and "make base-os" in msg and "OS_IMAGE=pytorch-cuda-os:trixie" in msg


def test_a_foreign_platform_without_an_emulator_is_refused_before_buildx(capsys) -> None:
    """cu126 arm64 on an amd64 machine: a clear refusal naming the fix, not buildx's registry error."""
    from imagectl import build as build_mod

    if build_mod.native_platform() != "linux/amd64" or build_mod._can_emulate("linux/arm64"):
        pytest.skip("needs an amd64 machine without an arm64 emulator")
    from imagectl.cli import main

    assert main(["build", "--variant", "cu126", "--platform", "linux/arm64", "--unlocked"]) == 1
    err = capsys.readouterr().err
    assert "cannot build linux/arm64 on this linux/amd64 machine" in err and "arm64 runner" in err
