"""imagectl under bad input and a dead engine: a clear error naming cause and fix, the documented
exit code, no traceback, nothing written where it should not be."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imagectl(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagectl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr


@pytest.mark.parametrize(("make", "msg"), [
    (lambda d: d, "is a folder: pass the matrix file itself"),
    (lambda d: Path(sys.executable).resolve(), "is not a text file"),
    (lambda d: d / "missing.toml", "no such file"),
])
def test_bad_matrix_paths(tmp_path: Path, make: object, msg: str) -> None:
    res = imagectl("--matrix", str(make(tmp_path)), "variants")  # type: ignore[operator]
    assert res.returncode == 2 and msg in res.stderr
    no_traceback(res)


def test_matrix_refuses_root_and_a_missing_promised_package(tmp_path: Path) -> None:
    text = (REPO / "images/matrix.toml").read_text()
    bad = tmp_path / "m.toml"
    bad.write_text(text.replace('user = "ml"', 'user = "root"'))
    res = imagectl("--matrix", str(bad), "variants")
    assert res.returncode == 2 and "'root' is refused" in res.stderr
    bad.write_text("\n".join(line for line in text.splitlines() if not line.startswith("gcsfs = ")))
    res = imagectl("--matrix", str(bad), "variants")
    assert res.returncode == 2 and "data_stack: missing gcsfs" in res.stderr


def test_unsupported_variant_as_bake_target_gets_the_matrix_advice() -> None:
    res = imagectl("bake-plan", "cu121")
    assert res.returncode == 2 and "PyTorch 2.6 ships no CUDA 12.1 build" in res.stderr and "Use cu124" in res.stderr
    res = imagectl("bake-plan", "cu124-dat")
    assert res.returncode == 2 and "did you mean 'cu124-data'" in res.stderr
    no_traceback(res)


def test_bake_plan_with_another_matrix_writes_under_the_current_directory(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text((REPO / "images/matrix.toml").read_text())
    before = (REPO / "build/bake/matrix.bake.json").stat().st_mtime if (REPO / "build/bake/matrix.bake.json").exists() else None
    res = imagectl("--matrix", str(other), "bake-plan", "--generated-only", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "build/bake/matrix.bake.json").is_file()
    after = (REPO / "build/bake/matrix.bake.json").stat().st_mtime if (REPO / "build/bake/matrix.bake.json").exists() else None
    assert before == after  # the checkout's own plan was not touched


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_dead_docker_host_is_named_not_a_missing_image() -> None:
    res = imagectl("verify", "pytorch-cuda:v2.6-cu124", env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert res.returncode == 1
    assert "does not answer" in res.stderr and "DOCKER_HOST" in res.stderr and "build it first" not in res.stderr
    no_traceback(res)


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
@pytest.mark.parametrize("where", ["/proc/nope/r.json", "FOLDER"])
def test_smoke_report_path_is_checked_before_the_suite_runs(tmp_path: Path, where: str) -> None:
    target = str(tmp_path) if where == "FOLDER" else where
    # a dead engine too: the path check must come first, before Docker is even asked
    res = imagectl("smoke", "pytorch-cuda:v2.6-cu124", "--report", target, env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert res.returncode == 2 and "cannot write the report" in res.stderr
    no_traceback(res)


def test_registry_reference_with_scheme_fails_before_docker() -> None:
    res = imagectl("push", "--registry", "http://127.0.0.1:5000", "--dry-run", env={"DOCKER_HOST": "tcp://127.0.0.1:1"})
    assert res.returncode == 3 and "has a scheme (http://)" in res.stderr and "--registry 127.0.0.1:5000" in res.stderr
    no_traceback(res)
