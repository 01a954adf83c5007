"""Thin, typed helpers over the docker CLI: engine checks, image inspection, pulls."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "run `sudo scripts/install-docker-engine.sh` (Debian) or install Docker Engine with buildx"


class DockerError(RuntimeError):
    """The Docker engine or buildx is missing or failed; the message says what to do."""


def _run(cmd: list[str], timeout: float | None = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise DockerError(f"`{cmd[0]}` not found: {INSTALL_HINT}") from exc
    except subprocess.TimeoutExpired:
        raise DockerError(f"`{' '.join(cmd[:3])}` got no answer within {timeout:.0f} s (engine at "
                          f"{os.environ.get('DOCKER_HOST') or 'the default socket'}): is dockerd running?") from None


def require_engine() -> None:
    if shutil.which("docker") is None:
        raise DockerError(f"no docker CLI on PATH: {INSTALL_HINT}")
    res = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    if res.returncode != 0:
        raise DockerError(f"the Docker engine does not answer ({res.stderr.strip() or 'no output'}): "
                          f"start dockerd or fix DOCKER_HOST, or {INSTALL_HINT}")


def require_buildx() -> None:
    require_engine()
    if _run(["docker", "buildx", "version"]).returncode != 0:
        raise DockerError(f"docker buildx is not installed: {INSTALL_HINT}")


def image_exists(ref: str) -> bool:
    return _run(["docker", "image", "inspect", ref]).returncode == 0


def try_pull(ref: str, timeout: float = 90) -> tuple[bool, str]:
    """Pull `ref`; (ok, error text). A registry that cannot be reached fails within `timeout`."""
    try:
        res = _run(["docker", "pull", "-q", ref], timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"no answer from the registry within {timeout:.0f} s"
    return res.returncode == 0, res.stderr.strip()


@dataclass(frozen=True)
class ImageInfo:
    id: str
    size: int
    tags: tuple[str, ...]
    labels: dict[str, str]
    user: str
    raw: dict[str, Any]


_NO_ENGINE = ("Cannot connect to the Docker daemon", "error during connect", "permission denied while trying to connect",
              "Is the docker daemon running")


def engine_unreachable(stderr: str) -> bool:
    """The docker CLI's own words for "no engine answers" (a dead DOCKER_HOST, a stopped dockerd)."""
    return any(s.lower() in stderr.lower() for s in _NO_ENGINE)


def inspect_image(ref: str) -> ImageInfo:
    res = _run(["docker", "image", "inspect", ref])
    if res.returncode != 0:
        if engine_unreachable(res.stderr):
            host = os.environ.get("DOCKER_HOST") or "the default socket"
            raise DockerError(f"the Docker engine does not answer at {host} ({res.stderr.strip().splitlines()[-1]}): "
                              f"start dockerd or fix DOCKER_HOST, or {INSTALL_HINT}")
        raise DockerError(f"no local image '{ref}': build it first (make build) or check the name")
    raw = json.loads(res.stdout)[0]
    cfg = raw.get("Config") or {}
    return ImageInfo(id=raw["Id"], size=int(raw.get("Size") or 0), tags=tuple(raw.get("RepoTags") or ()),
                     labels=dict(cfg.get("Labels") or {}), user=cfg.get("User") or "", raw=raw)
