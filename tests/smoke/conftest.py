"""Fixtures for the host-side tests of the smoke suite's helpers, doctor and `imagectl smoke`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smokesuite.doctor import Facts

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def h200_facts() -> Facts:
    """Facts recorded by `doctor --dump-facts` on a real H200 host (driver 580, torch 2.11+cu130)."""
    return Facts.from_json(json.loads((DATA / "h200_facts.json").read_text()))


@pytest.fixture
def run_smoke(tmp_path: Path):
    """Run the `smoke` runner in a subprocess on a suite directory; returns (exit code, report, output)."""

    def _run(tests_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
        report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
        full_env = {k: v for k, v in os.environ.items() if k != "SMOKE_EXPECT"}
        full_env.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "smokesuite.runner", "--tests", str(tests_dir),
                               "--report", str(report), *args], capture_output=True, text=True, env=full_env,
                              timeout=300)
        data = json.loads(report.read_text()) if report.is_file() else {}
        return proc.returncode, data, proc.stdout + proc.stderr

    return _run
