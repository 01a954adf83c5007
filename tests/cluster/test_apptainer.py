"""The Apptainer recipe: build a SIF from the local Docker daemon and pass the suite in it (CPU mode),
read-only and as the caller's UID, as Apptainer always runs. Apptainer/Singularity are not in Debian's
archive: on these machines this skips with that reason; it runs wherever an `apptainer` binary exists."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from smokesuite.report import SmokeReport

REPO = Path(__file__).resolve().parents[2]
DEF_FILE = REPO / "deploy" / "apptainer" / "pytorch-cuda.def"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_definition_file_bootstraps_from_the_default_image() -> None:
    from imagectl.matrix import load_matrix

    m = load_matrix()
    default_image = m.image_refs(m.variant(), "data")[0]
    header = dict(line.split(":", 1) for line in DEF_FILE.read_text().splitlines()
                  if line and not line.startswith(("#", " ", "%")) and ":" in line)
    assert header["Bootstrap"].strip() == "docker-daemon"
    assert header["From"].strip() == default_image
    assert "%test" in DEF_FILE.read_text()


def test_suite_passes_in_a_sif(built_image: str) -> None:
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if apptainer is None:
        pytest.skip("no apptainer/singularity binary (not installable from Debian's archive on these machines)")
    work = Path(tempfile.mkdtemp(prefix="apptainer-"))
    try:
        sif = work / "pytorch-cuda.sif"
        proc = subprocess.run([apptainer, "build", str(sif), f"docker-daemon://{built_image}"], capture_output=True,
                              text=True, timeout=3600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = work / "report.json"
        proc = subprocess.run([apptainer, "exec", "--bind", f"{work}:{work}", str(sif), "smoke", "--expect", "cpu",
                               "--report", str(report), "-q"], capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
        assert SmokeReport.load(report).passed
    finally:
        shutil.rmtree(work, ignore_errors=True)
