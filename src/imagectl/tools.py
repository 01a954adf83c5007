"""Build tools pinned in images/matrix.toml's [build_tools], installed on first use into a cache
under build/tools/ keyed by their pin (never onto the host's PATH, never into an image)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from imagectl.matrix import REPO_ROOT, Matrix

TOOLS_DIR = REPO_ROOT / "build" / "tools"


class ToolError(RuntimeError):
    """A pinned tool could not be installed; the message says why and what to do."""


def uv_binary(matrix: Matrix, timeout: float = 600) -> Path:
    """The uv the matrix pins (build_tools.uv), installed once into build/tools/uv-<version>."""
    version = matrix.build_tools["uv"]
    target = TOOLS_DIR / f"uv-{version}"
    binary = target / "bin" / "uv"
    if binary.is_file():
        return binary
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # ours: a previous attempt of this very process id
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(tmp), f"uv=={version}"]
    print(f"imagectl: installing uv {version} into {target} (pinned in [build_tools])", file=sys.stderr)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolError(f"installing uv=={version} took more than {timeout:.0f} s: is the package index "
                        "reachable (pip's index settings apply)?") from None
    if res.returncode != 0 or not (tmp / "bin" / "uv").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ToolError(f"cannot install uv=={version}: {res.stderr.strip()[-800:] or 'no output'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return binary
