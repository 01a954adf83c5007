from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    ok = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    return ok and subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def need_docker() -> None:
    if not docker_available():
        pytest.skip("no Docker engine with buildx answers (scripts/install-docker-engine.sh installs one)")
