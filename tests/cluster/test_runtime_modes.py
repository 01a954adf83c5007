"""The data image passes its own suite as clusters run it: an unknown UID (gid 0, the OpenShift/Kubernetes
runAsUser case), a read-only root with an exec tmpfs at /tmp (readOnlyRootFilesystem + emptyDir), and
both at once with a non-zero GID. doctor agrees: no problem in any of these modes.

Before the Dockerfile change of issue 13 (start-up hook, /home/ml 0755, rdma-core userspace) these fail:
as 12345:0 the suite crashes in chdir('/home/ml') and getuser()/HOME fail; read-only, HOME is not writable.
"""

from __future__ import annotations

import pytest
from cluster_helpers import run_doctor, run_suite

MODES = {
    "uid-12345-gid-0": ["--user", "12345:0"],
    "read-only-root": ["--read-only", "--tmpfs", "/tmp:exec"],
    "uid-12345-gid-12345-read-only": ["--user", "12345:12345", "--read-only", "--tmpfs", "/tmp:exec"],
}
RUNTIME_CHECKS = ("User name", "HOME", "Cache locations", "Compiled-code locations", "RDMA libraries")

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.mark.parametrize("mode", list(MODES))
def test_suite_passes_in_mode(built_image: str, out_dir, mode: str, record_property) -> None:
    run = run_suite("docker", built_image, MODES[mode], out_dir)
    record_property("wall_s", round(run.wall_s, 1))
    print(f"{mode}: exit {run.exit_code} in {run.wall_s:.0f} s: {' '.join(run.command)}")
    failures = run.failures()
    assert run.exit_code == 0 and not failures, f"{mode}: " + "; ".join(failures)
    assert run.report and run.report.passed and run.report.mode == "cpu"


@pytest.mark.parametrize("mode", list(MODES))
def test_doctor_finds_nothing_wrong_in_mode(built_image: str, mode: str) -> None:
    code, data, err = run_doctor("docker", built_image, MODES[mode])
    assert data is not None, f"doctor printed no JSON: {err[-1500:]}"
    problems = {d["check"]: d for d in data["diagnoses"] if d["status"] == "problem"}
    assert not problems, f"{mode}: " + "; ".join(f"{k}: {v['summary']} (fix: {v['fix']})" for k, v in problems.items())
    statuses = {d["check"]: d["status"] for d in data["diagnoses"]}
    for check in RUNTIME_CHECKS:
        assert statuses.get(check) == "ok", f"{mode}: doctor's {check} is {statuses.get(check)}"
    assert code == 0
