"""`imagectl smoke`: docker-run failure classification on recorded docker/nvidia-container-cli
output, the docker command line, and (when an image is present) a real run."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

import pytest

from imagectl import smoke

DRIVER_TOO_OLD = (
    "docker: Error response from daemon: failed to create task for container: failed to create shim task: OCI "
    "runtime create failed: runc create failed: unable to start container process: error during container init: "
    "error running hook #0: error running hook: exit status 1, stdout: , stderr: Auto-detected mode as 'legacy'\n"
    "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.0, please update your driver to a "
    "newer version, or use an earlier cuda container: unknown.\n")
NO_TOOLKIT = 'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].\n'
NO_DRIVER = ("nvidia-container-cli: initialization error: load library failed: libnvidia-ml.so.1: cannot open "
             "shared object file: no such file or directory: unknown.\n")


@pytest.mark.parametrize(("output", "code", "kind"), [
    (DRIVER_TOO_OLD, 125, "driver_too_old"),
    (NO_TOOLKIT, 125, "no_gpu_runtime"),
    (NO_DRIVER, 125, "no_driver"),
    ("docker: Error response from daemon: unknown or invalid runtime name: nvidia.\n", 125, "runtime_not_configured"),
    ("Unable to find image 'nope:1' locally\n", 125, "image_not_found"),
    ('exec: "smoke": executable file not found in $PATH\n', 127, "no_smoke_command"),
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n", 125, "docker_unavailable"),
    ("something else entirely\n", 125, "docker_run_failed"),
    ("", 137, "killed"),
])
def test_classify_docker_failure(output: str, code: int, kind: str) -> None:
    failure = smoke.classify_docker_failure(code, output)
    assert failure is not None and failure.kind == kind
    assert failure.cause and failure.fix


def test_driver_too_old_names_the_requirement() -> None:
    failure = smoke.classify_docker_failure(125, DRIVER_TOO_OLD)
    assert failure is not None and "CUDA >= 12.0" in failure.cause and "driver" in failure.fix


def test_unknown_exit_of_the_suite_itself_is_not_classified() -> None:
    assert smoke.classify_docker_failure(1, "3 failed, 10 passed") is None


def test_docker_command_line() -> None:
    cmd = smoke.docker_run_command("img:1", out_dir="/tmp/o", expect="gpu", gpus=True, env_names=("AWS_REGION",))
    joined = " ".join(cmd)
    assert "--gpus all" in joined and "--shm-size 8g" in joined and "--network host" in joined
    assert "-e SMOKE_EXPECT=gpu" in joined and "-e AWS_REGION" in joined and "AWS_REGION=" not in joined
    assert cmd[cmd.index("img:1") + 1:][:3] == ["smoke", "--report", "/smoke-out/report.json"]
    cpu = smoke.docker_run_command("img:1", out_dir="/tmp/o", expect="cpu", gpus=False, ipc_host=True)
    assert "--gpus" not in cpu and "--ipc" in cpu and "--shm-size" not in cpu


def test_cli_interface() -> None:
    parser = argparse.ArgumentParser()
    smoke.add_arguments(parser)
    args = parser.parse_args(["pytorch-cuda:v2.6-cu124", "--expect", "cpu", "--report", "r.json"])
    assert args.image == "pytorch-cuda:v2.6-cu124" and args.expect == "cpu" and args.gpus is None
    assert smoke.__doc__ and smoke.__doc__.splitlines()[0]


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.docker
def test_missing_image_is_a_clear_error() -> None:
    if not _docker_ok():
        pytest.skip("no docker engine answers")
    with pytest.raises(smoke.SmokeError, match="not found"):
        smoke.run_smoke_in_container("pytorch-cuda-does-not-exist:0", expect="cpu")


OS_IMAGE = "pytorch-cuda-os:trixie"  # `make base-os`: a real image with no suite in it


def _plain_image() -> str:
    # Not any local image: one known to hold no `smoke` (a developer's own images may well hold one).
    probe = subprocess.run(["docker", "image", "inspect", OS_IMAGE], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no {OS_IMAGE} (make base-os) to try an image without the suite")
    return OS_IMAGE


@pytest.mark.docker
def test_real_docker_run_failures_are_classified() -> None:
    """Real `docker run`s that cannot start the suite: an image without it, and --gpus all on this host."""
    if not _docker_ok():
        pytest.skip("no docker engine answers")
    image = _plain_image()
    result = smoke.run_smoke_in_container(image, expect="cpu", stream=False, timeout_s=120)
    assert result.report is None and result.failure is not None and not result.passed
    assert result.failure.kind in ("no_smoke_command", "docker_run_failed"), result.output_tail
    assert "--gpus" not in result.command
    gpu = smoke.run_smoke_in_container(image, expect="gpu", stream=False, timeout_s=120)
    assert gpu.failure is not None and "--gpus" in gpu.command
    # no NVIDIA runtime: docker refuses --gpus; with one, the image still lacks `smoke`
    assert gpu.failure.kind in ("no_gpu_runtime", "driver_too_old", "no_smoke_command"), gpu.output_tail


@pytest.mark.docker
def test_a_silent_hang_is_killed_at_the_deadline_container_included(tmp_path) -> None:
    """A suite that prints nothing and never ends (a hang in NCCL or on storage) still ends at the deadline,
    and the container is killed with the client (it would otherwise keep running on the host)."""
    if not _docker_ok():
        pytest.skip("no docker engine answers")
    base = _plain_image()
    tag = f"imagectl-smoke-hang:{os.getpid()}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {base}\nRUN printf '#!/bin/sh\\nexec sleep 600\\n' > /usr/local/bin/smoke && chmod 755 /usr/local/bin/smoke\n")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True, capture_output=True, timeout=300)
    try:
        t0 = time.monotonic()
        result = smoke.run_smoke_in_container(tag, expect="cpu", stream=False, timeout_s=8)
        waited = time.monotonic() - t0
        assert result.report is None and not result.passed
        assert "killed after 8 s" in result.output_tail
        assert waited < 120, f"the deadline of 8 s did not hold: {waited:.0f} s"
        running = subprocess.run(["docker", "ps", "-q", "--filter", f"ancestor={tag}"], capture_output=True,
                                 text=True, timeout=30).stdout.split()
        assert not running, f"the container outlived the deadline: {running}"
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
