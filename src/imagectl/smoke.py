"""Run the smoke suite inside an image and collect its JSON report, keyed by the image ID.

    imagectl smoke IMAGE [--expect cpu|gpu] [--report FILE]

Runs ``smoke`` in a throw-away container with the flags the checks need (``--gpus all`` when
the host has an NVIDIA runtime, a large /dev/shm or ``--ipc=host``, host networking so a
loopback S3 endpoint is reachable), copies the report out and fills in ``image_id``. A
``docker run`` that fails before the suite starts is classified (driver too old, no GPU runtime...).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smokesuite.report import ReportFormatError, SmokeReport, check_writable, write_report

CONTAINER_OUT = "/smoke-out"
PASSTHROUGH_ENV = ("SMOKE_S3_URL", "SMOKE_S3_ANON", "SMOKE_S3_ENDPOINT_URL", "SMOKE_S3_MIN_RATIO",
                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                   "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "NCCL_DEBUG", "NCCL_P2P_DISABLE")
EXIT_PASSED, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 2


class SmokeError(RuntimeError):
    """The suite could not be run at all (no docker, unknown image)."""


@dataclass(frozen=True)
class DockerFailure:
    """Why ``docker run`` failed before (or instead of) the suite producing a report."""

    kind: str
    cause: str
    fix: str


@dataclass
class SmokeResult:
    image: str
    image_id: str | None
    command: list[str]
    exit_code: int
    passed: bool
    report: SmokeReport | None = None
    report_path: str | None = None
    failure: DockerFailure | None = None
    duration_s: float = 0.0
    output_tail: str = ""
    flags: dict[str, Any] = field(default_factory=dict)


# (kind, pattern, cause, fix): first match wins; patterns are docker / nvidia-container-cli texts.
_FAILURES: list[tuple[str, str, str, str]] = [
    ("driver_too_old", r"unsatisfied condition: cuda\s*>=\s*([\d.]+)",
     "the host's NVIDIA driver is too old for this image: nvidia-container-cli requires a driver that "
     "supports CUDA >= {0} (NVIDIA_REQUIRE_CUDA)",
     "upgrade the host driver (nvidia-smi shows the CUDA version it supports), or use an image variant for an "
     "older CUDA (`imagectl variants` lists each variant's driver floor)"),
    ("no_gpu_runtime", r'could not select device driver "[^"]*" with capabilities: \[\[gpu\]\]',
     "docker has no GPU device driver: the NVIDIA Container Toolkit is not installed or not configured",
     "install nvidia-container-toolkit, run `sudo nvidia-ctk runtime configure --runtime=docker`, restart docker; "
     "or run the CPU suite with --expect cpu"),
    ("runtime_not_configured", r"unknown or invalid runtime name: nvidia",
     "docker does not know the 'nvidia' runtime", "run `sudo nvidia-ctk runtime configure --runtime=docker` and restart docker"),
    ("no_driver", r"(load library failed: libnvidia-ml\.so\.1|nvml error: driver not loaded|driver not loaded)",
     "nvidia-container-cli found no NVIDIA driver on the host", "install the NVIDIA driver on the host (nvidia-smi must work)"),
    ("gpu_device_error", r"nvidia-container-cli: (device error|initialization error)[^\n]*",
     "nvidia-container-cli could not set up the GPUs: {m}", "check `nvidia-smi` on the host and the --gpus value"),
    ("image_not_found", r"(No such image|Unable to find image|pull access denied|manifest unknown)",
     "the image is not present locally", "build it first (`make build`) or check the tag"),
    ("no_smoke_command", r'exec: "smoke": executable file not found|"smoke": executable file not found',
     "the image has no `smoke` command", "run against the data image (pytorch-cuda:<series>-<variant>), which "
     "carries the suite"),
    ("docker_unavailable", r"(Cannot connect to the Docker daemon|permission denied while trying to connect to the Docker daemon)",
     "the docker daemon is not reachable", "start dockerd, or add your user to the docker group"),
]


def classify_docker_failure(exit_code: int, output: str) -> DockerFailure | None:
    """Classify a ``docker run`` that ended without a report; None when the output names no known cause."""
    for kind, pattern, cause, fix in _FAILURES:
        m = re.search(pattern, output, flags=re.IGNORECASE)
        if m:
            groups = [g for g in m.groups() if g] or [""]
            return DockerFailure(kind, cause.format(*groups, m=m.group(0)), fix)
    if exit_code in (125, 126, 127):
        return DockerFailure("docker_run_failed", f"docker run failed before the suite started (exit {exit_code})",
                             "read the docker error above; `doctor` inside the image explains GPU setups")
    if exit_code in (137, -9):
        return DockerFailure("killed", "the container was killed (out of memory, or a timeout)",
                             "give the container more memory; rerun with NCCL_DEBUG=INFO if it hung in NCCL")
    return None


def _docker(docker: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout)


def inspect_image_id(image: str, docker: str = "docker") -> str:
    try:
        proc = _docker(docker, "image", "inspect", "--format", "{{.Id}}", image)
    except FileNotFoundError as exc:
        raise SmokeError(f"no docker client ({docker}): install docker") from exc
    if proc.returncode != 0:
        failure = classify_docker_failure(proc.returncode, proc.stderr)
        hint = failure.fix if failure and failure.kind != "docker_run_failed" else "build it first (`make build`)"
        raise SmokeError(f"image {image!r} not found: {proc.stderr.strip()} ({hint})")
    return proc.stdout.strip()


def host_has_nvidia_runtime(docker: str = "docker") -> bool:
    """True when docker can give containers GPUs: an nvidia runtime, CDI specs, or the toolkit's CLI."""
    try:
        proc = _docker(docker, "info", "--format", "{{json .Runtimes}}")
        if proc.returncode == 0 and "nvidia" in proc.stdout:
            return True
    except (OSError, subprocess.TimeoutExpired):
        pass
    if any(Path(d).is_dir() and any(Path(d).glob("nvidia*")) for d in ("/etc/cdi", "/var/run/cdi")):
        return True
    return shutil.which("nvidia-container-cli") is not None and shutil.which("nvidia-smi") is not None


def docker_run_command(image: str, *, out_dir: str, expect: str | None, gpus: bool, shm_size: str = "8g",
                       ipc_host: bool = False, env_names: tuple[str, ...] = (), docker: str = "docker",
                       pytest_args: list[str] | None = None, user: str | None = None,
                       read_only: bool = False, run_image: str | None = None,
                       cidfile: str | None = None) -> list[str]:
    """``run_image``: what to start (the image ID, so a tag moved meanwhile cannot swap the image under
    the report); ``image`` is what the report names. ``cidfile``: where docker writes the container ID."""
    cmd = [docker, "run", "--rm", "--network", "host", "-v", f"{out_dir}:{CONTAINER_OUT}"]
    if cidfile:
        cmd += ["--cidfile", cidfile]
    if user:  # as Kubernetes runAsUser / OpenShift / Apptainer do: a UID with no passwd entry
        cmd += ["--user", user]
    if read_only:  # a read-only root; /tmp a tmpfs that allows exec (compiled kernels load from it)
        cmd += ["--read-only", "--tmpfs", "/tmp:exec,mode=1777"]
    if gpus:
        cmd += ["--gpus", "all"]
    cmd += ["--ipc", "host"] if ipc_host else ["--shm-size", shm_size]
    if expect:
        cmd += ["-e", f"SMOKE_EXPECT={expect}"]
    for name in env_names:  # by name only: values (credentials) never appear on a command line
        cmd += ["-e", name]
    cmd += [run_image or image, "smoke", "--report", f"{CONTAINER_OUT}/report.json", "--image-ref", image]
    if expect:
        cmd += ["--expect", expect]
    if pytest_args:
        cmd += ["--", *pytest_args]
    return cmd


def _pump(proc: subprocess.Popen[str], lines: list[str], stream: bool) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if stream:
            sys.stdout.write(line)
            sys.stdout.flush()


def _kill_container(docker: str, cidfile: str) -> None:
    try:
        cid = Path(cidfile).read_text().strip()
    except OSError:
        return  # docker never created it: killing the client is all there is to do
    if cid:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _docker(docker, "kill", cid, timeout=30)


def run_smoke_in_container(image: str, expect: str | None = None, report_path: str | os.PathLike[str] | None = None,
                           *, docker: str = "docker", gpus: bool | None = None, shm_size: str = "8g",
                           ipc_host: bool = False, timeout_s: float = 1800, stream: bool = True,
                           pytest_args: list[str] | None = None, user: str | None = None,
                           read_only: bool = False) -> SmokeResult:
    """Run the suite in ``image``; the report (with image_id filled) goes to ``report_path`` if given."""
    image_id = inspect_image_id(image, docker)
    use_gpus = (expect != "cpu") and (expect == "gpu" or host_has_nvidia_runtime(docker)) if gpus is None else gpus
    env_names = tuple(n for n in PASSTHROUGH_ENV if n in os.environ)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagectl-smoke-") as out_dir:
        os.chmod(out_dir, 0o777)  # the image's non-root user (uid 1000) writes the report here
        cidfile = os.path.join(out_dir, ".container-id")
        cmd = docker_run_command(image, out_dir=out_dir, expect=expect, gpus=use_gpus, shm_size=shm_size,
                                 ipc_host=ipc_host, env_names=env_names, docker=docker, pytest_args=pytest_args,
                                 user=user, read_only=read_only, run_image=image_id, cidfile=cidfile)
        if stream:
            print("+ " + " ".join(cmd), flush=True)
        lines: list[str] = []
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError as exc:
            raise SmokeError(f"no docker client ({docker}): install docker") from exc
        # The deadline holds even when the suite prints nothing (a hang in NCCL or on storage): output
        # is read by a thread, and the container itself is killed, not only the docker client.
        reader = threading.Thread(target=_pump, args=(proc, lines, stream), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=max(1.0, t0 + timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_container(docker, cidfile)
            proc.kill()
            code = proc.wait(timeout=60)
            lines.append(f"imagectl smoke: killed after {timeout_s:.0f} s (container and client)\n")
        reader.join(timeout=10)
        output = "".join(lines)
        report_file = Path(out_dir) / "report.json"
        report, bad = None, None
        if report_file.is_file():
            try:
                report = SmokeReport.load(report_file)
            except ReportFormatError as exc:
                bad = str(exc)
    result = SmokeResult(image=image, image_id=image_id, command=cmd, exit_code=code, passed=False,
                         duration_s=time.monotonic() - t0, output_tail=output[-4000:],
                         flags={"gpus": use_gpus, "ipc_host": ipc_host, "shm_size": None if ipc_host else shm_size,
                                "user": user, "read_only": read_only})
    if report is None:
        result.failure = (DockerFailure("bad_report", f"the suite wrote an unusable report: {bad}",
                                        "rebuild the image; its suite and this imagectl disagree on the schema")
                          if bad else classify_docker_failure(code, output) or DockerFailure(
            "suite_crashed", f"the container exited with {code} and wrote no report",
            "read the output above; run `docker run --rm IMAGE smoke` by hand"))
        return result
    report.image_id = image_id  # the ID docker reported for what ran, not what the file says
    report.image_ref = report.image_ref or image
    result.report, result.passed = report, report.passed and code == 0
    if report_path is not None:
        result.report_path = str(write_report(report, report_path))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image reference or ID, e.g. pytorch-cuda:v2.6-cu124")
    parser.add_argument("--expect", choices=("cpu", "gpu"), default=None,
                        help="gpu: GPU skips fail (and --gpus all is always passed); cpu: CPU mode, no GPUs")
    parser.add_argument("--report", default=None, help="write the JSON report here (default: smoke-report-<id>.json)")
    parser.add_argument("--gpus", dest="gpus", action="store_true", default=None, help="force --gpus all")
    parser.add_argument("--no-gpus", dest="gpus", action="store_false", help="never pass --gpus")
    parser.add_argument("--shm-size", default="8g", help="container /dev/shm size (default 8g)")
    parser.add_argument("--ipc-host", action="store_true", help="share the host's IPC namespace instead of --shm-size")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the container is killed")
    parser.add_argument("--docker", default=os.environ.get("DOCKER", "docker"), help="docker client to use")
    parser.add_argument("--user", default=None, metavar="UID[:GID]",
                        help="run the suite as this user (e.g. 12345:0, as Kubernetes runAsUser or OpenShift do)")
    parser.add_argument("--read-only", action="store_true",
                        help="read-only root filesystem, /tmp as an exec-allowed tmpfs (as hardened clusters run it)")


def run(args: argparse.Namespace) -> int:
    if args.report and (why := check_writable(args.report)):  # before minutes of checks
        print(f"imagectl smoke: error: cannot write the report to {args.report}: {why}", file=sys.stderr)
        return EXIT_NOT_RUN
    try:
        image_id = inspect_image_id(args.image, args.docker)
        report_path = args.report or f"smoke-report-{image_id.split(':')[-1][:12]}.json"
        result = run_smoke_in_container(args.image, args.expect, report_path, docker=args.docker, gpus=args.gpus,
                                        shm_size=args.shm_size, ipc_host=args.ipc_host, timeout_s=args.timeout,
                                        user=args.user, read_only=args.read_only)
    except SmokeError as exc:
        print(f"imagectl smoke: error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    if result.failure is not None:
        print(f"imagectl smoke: the suite did not run in {args.image} ({result.failure.kind})", file=sys.stderr)
        print(f"  cause: {result.failure.cause}", file=sys.stderr)
        print(f"  fix:   {result.failure.fix}", file=sys.stderr)
        return EXIT_NOT_RUN
    print(f"imagectl smoke: {args.image} ({result.image_id}) {'PASSED' if result.passed else 'FAILED'}; "
          f"report: {result.report_path}")
    return EXIT_PASSED if result.passed else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagectl smoke", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
