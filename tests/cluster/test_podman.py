"""The built data image under podman (Debian's package; installed when missing): moved over with
`docker save | podman load`, then the in-image suite passes (CPU mode), as the image's default user and
as an unknown UID with podman's read-only root. Wall times are recorded (junit properties, printed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from cluster_helpers import run_suite

pytestmark = [pytest.mark.docker, pytest.mark.slow]
LOAD_TIMEOUT_S = 1800  # 6 GB through a pipe on a loaded 2-core machine took ~6 min


def _ensure_podman() -> str:
    if shutil.which("podman"):
        return "podman"
    if os.getuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("podman is not installed and cannot be installed here (needs root and apt-get)")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "podman"], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or not shutil.which("podman"):
        pytest.fail(f"cannot install podman: {proc.stderr.strip()[-800:]}", pytrace=False)
    return "podman"


def _run_flags(engine: str, image: str) -> list[str]:
    """Podman raises nofile/nproc to its own defaults; hosts that forbid raising rlimits (some sandboxes,
    tight systemd slices) refuse that ('error setting rlimit'). Then keep them within the host's limits."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    for flags in ([], ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=16384:16384"]):
        proc = subprocess.run([engine, "run", "--rm", *flags, image, "true"], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return flags
        if "rlimit" not in proc.stderr:
            pytest.fail(f"podman cannot start {image}: {proc.stderr.strip()[-800:]}", pytrace=False)
    pytest.fail(f"podman cannot start {image} even within the host's rlimits: {proc.stderr.strip()[-800:]}",
                pytrace=False)


def _podman_id(engine: str, ref: str) -> str | None:
    proc = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True,
                          timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def podman_image(built_image: str) -> Iterator[tuple[str, str, list[str]]]:
    engine = _ensure_podman()
    docker_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", built_image], capture_output=True,
                               text=True, check=True, timeout=120).stdout.strip().removeprefix("sha256:")
    ref = f"localhost/{built_image}" if "/" not in built_image.split(":")[0] else built_image
    loaded = False
    if _podman_id(engine, ref) != docker_id:
        t0 = time.monotonic()
        save = subprocess.Popen(["docker", "save", built_image], stdout=subprocess.PIPE)
        try:
            load = subprocess.run([engine, "load"], stdin=save.stdout, capture_output=True, text=True,
                                  timeout=LOAD_TIMEOUT_S)
        finally:
            if save.stdout:
                save.stdout.close()
            try:
                save.wait(timeout=60)
            except subprocess.TimeoutExpired:
                save.kill()
        assert load.returncode == 0 and save.returncode == 0, f"docker save | podman load failed: {load.stderr[-800:]}"
        loaded = True
        print(f"docker save | podman load: {time.monotonic() - t0:.0f} s")
        assert _podman_id(engine, ref) == docker_id, "podman holds another image under that name after the load"
    try:
        yield engine, ref, _run_flags(engine, ref)
    finally:
        if loaded and not os.environ.get("CLUSTER_KEEP_PODMAN_IMAGE"):
            subprocess.run([engine, "rmi", ref], capture_output=True, timeout=300)  # only what this test loaded


@pytest.mark.parametrize("mode,flags", [("default-user", []), ("uid-12345-read-only", ["--user", "12345:0", "--read-only"])],
                         ids=["default-user", "uid-12345-read-only"])
def test_suite_passes_under_podman(podman_image: tuple[str, str, list[str]], out_dir, mode: str, flags: list[str],
                                   record_property) -> None:
    engine, ref, run_flags = podman_image
    # podman's --read-only mounts /tmp, /var/tmp and /run as exec-capable tmpfs itself (--read-only-tmpfs)
    run = run_suite(engine, ref, [*run_flags, *flags], out_dir)
    record_property("podman_wall_s", round(run.wall_s, 1))
    print(f"podman {mode}: exit {run.exit_code} in {run.wall_s:.0f} s: {' '.join(run.command)}")
    failures = run.failures()
    assert run.exit_code == 0 and not failures, f"podman {mode}: " + "; ".join(failures)
