"""Run the in-image suite (and doctor) in a container with given runtime flags; read back its report."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smokesuite.report import SmokeReport

CONTAINER_OUT = "/smoke-out"
# Big enough /dev/shm that doctor's shm check is clean; host network so the suite's loopback S3 server works.
COMMON = ("--rm", "--network", "host", "--shm-size", "2g")
# The checks these modes exist for: each must have run and passed, not skipped.
MODE_CHECKS = ("test_smoke_runtime_user.py::test_startup_hook_installed_in_image",
               "test_smoke_runtime_user.py::test_user_name_resolves",
               "test_smoke_runtime_user.py::test_home_is_set_and_writable",
               "test_smoke_runtime_user.py::test_pip_user_site_is_writable",
               "test_smoke_runtime_user.py::test_cache_locations_are_writable",
               "test_smoke_runtime_user.py::test_compiled_code_locations_allow_exec",
               "test_smoke_runtime_user.py::test_torch_compile_cpu_as_this_user",
               "test_smoke_fabric.py::test_nccl_verbs_dependency_loads")


@dataclass
class SuiteRun:
    command: list[str]
    exit_code: int
    wall_s: float
    output: str
    report: SmokeReport | None = None  # read through the schema the gate uses, never as raw keys
    outcomes: dict[str, str] = field(default_factory=dict)

    def failures(self) -> list[str]:
        if self.report is None:
            return [f"no report (exit {self.exit_code}): {self.output[-2000:]}"]
        bad = [f"{c.name}: {c.outcome}: {c.reason}" for c in self.report.failed_checks]
        for name in MODE_CHECKS:
            got = next((o for n, o in self.outcomes.items() if n.endswith(name)), "missing")
            if got != "passed":
                bad.append(f"{name}: {got} (must pass in this mode)")
        return bad


def run_suite(engine: str, image: str, flags: list[str], out_dir: Path, timeout_s: float = 1500) -> SuiteRun:
    cmd = [engine, "run", *COMMON, "-v", f"{out_dir}:{CONTAINER_OUT}", *flags, image,
           "smoke", "--expect", "cpu", "--report", f"{CONTAINER_OUT}/report.json", "--image-ref", image, "-q"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = 124, f"killed after {timeout_s:.0f} s: {exc.stdout!r}"
    run = SuiteRun(command=cmd, exit_code=code, wall_s=time.monotonic() - t0, output=output)
    report = out_dir / "report.json"
    if report.is_file():
        run.report = SmokeReport.load(report)
        run.outcomes = {c.name: c.outcome for c in run.report.checks}
    return run


def run_doctor(engine: str, image: str, flags: list[str], timeout_s: float = 300) -> tuple[int, dict[str, Any] | None, str]:
    cmd = [engine, "run", *COMMON, *flags, image, "doctor", "--expect", "cpu", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stderr
    except json.JSONDecodeError:
        return proc.returncode, None, proc.stdout + proc.stderr
