"""The Slurm recipes in deploy/slurm: shell syntax (bash -n, shellcheck when installed), then
`sbatch --test-only` against a real local Slurm (Debian's slurmctld + two slurmd with 8 file-backed GPU
GRES each, munge for auth; installed when missing), which parses every #SBATCH line and decides whether
the job fits a 2-node x 8-GPU cluster. enroot/pyxis and Apptainer are not installable here, so the
srun --container-image / apptainer steps themselves are not run (docs/clusters.md says so)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "deploy" / "slurm").glob("*.sbatch"))
BINARIES = ("slurmctld", "slurmd", "sbatch", "sinfo", "munged")
START_DEADLINE_S = 60


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    shellcheck = shutil.which("shellcheck") or str(REPO / ".venv" / "bin" / "shellcheck")
    if Path(shellcheck).exists():
        proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout
    text = script.read_text()
    assert "--rdzv-backend=c10d" in text and "torchrun" in text and "#SBATCH --nodes=2" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_slurm() -> None:
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.getuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and cannot be installed here (needs root and apt-get)")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurmctld", "slurmd",
                           "slurm-client", "munge"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or not all(shutil.which(b) for b in BINARIES):
        pytest.fail(f"cannot install Slurm: {proc.stderr.strip()[-800:]}", pytrace=False)


SLURM_CONF = """\
ClusterName=recipecheck
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
CredType=cred/munge
SlurmUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
GresTypes=gpu
MpiDefault=none
ReturnToService=2
NodeName=gpu1 NodeAddr=127.0.0.1 Port={d1} CPUs=128 RealMemory=1000 Gres=gpu:8 State=UNKNOWN
NodeName=gpu2 NodeAddr=127.0.0.1 Port={d2} CPUs=128 RealMemory=1000 Gres=gpu:8 State=UNKNOWN
PartitionName=batch Nodes=gpu[1-2] Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def local_slurm() -> Iterator[dict[str, str]]:
    """A 2-node x 8-GPU Slurm on loopback, in a temp dir; only the daemons it started are stopped."""
    if os.getuid() != 0:
        pytest.skip("a local slurmctld/slurmd needs root")
    _ensure_slurm()
    d = Path(tempfile.mkdtemp(prefix="slurm-recipes-"))
    pids: list[Path] = []
    try:
        for sub in ("state", "spool/gpu1", "spool/gpu2", "dev"):
            (d / sub).mkdir(parents=True)
        key = d / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        for i in range(8):  # GRES files: slurmd only needs the paths (no GPU here)
            (d / "dev" / f"nvidia{i}").write_text("")
        (d / "slurm.conf").write_text(SLURM_CONF.format(d=d, ctld_port=_free_port(), d1=_free_port(), d2=_free_port()))
        (d / "gres.conf").write_text(f"NodeName=gpu[1-2] Name=gpu File={d}/dev/nvidia[0-7]\n")
        env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={d}/munge.socket",
                        f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed"],
                       check=True, capture_output=True, timeout=30)
        pids.append(d / "munged.pid")
        subprocess.run(["slurmctld", "-i", "-c"], check=True, capture_output=True, timeout=30, env=env)
        pids.append(d / "slurmctld.pid")
        for n in ("gpu1", "gpu2"):
            subprocess.run(["slurmd", "-N", n], check=True, capture_output=True, timeout=30, env=env)
            pids.append(d / f"slurmd-{n}.pid")
        deadline = time.monotonic() + START_DEADLINE_S
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T %D"], capture_output=True, text=True, timeout=30,
                                   env=env).stdout.strip()
            if state == "idle 2":
                break
            time.sleep(1)
        else:
            log = (d / "slurmctld.log").read_text()[-1500:] if (d / "slurmctld.log").exists() else ""
            pytest.fail(f"the local Slurm did not come up within {START_DEADLINE_S} s (sinfo: {state!r}): {log}",
                        pytrace=False)
        yield env
    finally:
        for pidfile in reversed(pids):
            with contextlib.suppress(OSError, ValueError):  # a daemon that never started left no pid file
                os.kill(int(pidfile.read_text().strip()), 15)
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)


def _test_only(env: dict[str, str], script: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbatch", "--test-only", *extra, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(REPO))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sbatch_accepts_the_recipe(local_slurm: dict[str, str], script: Path) -> None:
    proc = _test_only(local_slurm, script)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "to start at" in out and "gpu[1-2]" in out, out


def test_sbatch_refuses_what_the_cluster_cannot_run(local_slurm: dict[str, str]) -> None:
    """The check above can fail: three nodes, or 16 GPUs per node, do not fit this cluster."""
    for extra in (("--nodes=3",), ("--gpus-per-node=16",)):
        proc = _test_only(local_slurm, SCRIPTS[0], *extra)
        assert proc.returncode != 0 and "not available" in proc.stderr, (extra, proc.stdout, proc.stderr)
