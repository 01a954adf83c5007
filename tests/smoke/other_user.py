"""Run Python as another UID with no passwd entry, as clusters do (imported by the host-side tests).

The host venv's interpreter lives under /root (unreadable for other users), so the other user gets a
venv of the system Python (/usr/bin/python3) that sees this checkout's ``src`` through a path ``.pth``
line; everything lives in a 0755 directory under /tmp that the fixture creates and removes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
OTHER_UID = 12345  # no passwd entry on these hosts (checked)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class OtherUser:
    root: Path  # 0755, removed at the end
    python: Path
    site: Path
    tmp: Path  # 1777, the other user's TMPDIR

    def run(self, code: str, env: dict[str, str] | None = None, *, uid: int = OTHER_UID, gid: int = 0,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full = {"PATH": "/usr/bin:/bin", "HOME": "/", "TMPDIR": str(self.tmp), "LANG": "C.UTF-8"}
        full.update(env or {})
        return subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, env=full, user=uid,
                              group=gid, extra_groups=[], timeout=timeout, cwd=str(self.root))


def _no_passwd_entry(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


@contextmanager
def make_other_user() -> Iterator[OtherUser]:
    """An OtherUser (skips the test where this host cannot switch users); define a fixture over it."""
    if os.getuid() != 0:
        pytest.skip("switching to another UID needs root")
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.skip(f"no {SYSTEM_PYTHON} to run as another user")
    if not _no_passwd_entry(OTHER_UID):
        pytest.skip(f"uid {OTHER_UID} has a passwd entry here")
    root = Path(tempfile.mkdtemp(prefix="other-user-"))
    try:
        root.chmod(0o755)
        venv = root / "venv"
        proc = subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.skip(f"{SYSTEM_PYTHON} cannot make a venv: {proc.stderr.strip()[-300:]}")
        python = venv / "bin" / "python"
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True, timeout=60).stdout.strip())
        (site / "00-checkout-src.pth").write_text(str(REPO / "src") + "\n")
        tmp = root / "tmp"
        tmp.mkdir()
        tmp.chmod(0o1777)
        yield OtherUser(root=root, python=python, site=site, tmp=tmp)
    finally:
        shutil.rmtree(root, ignore_errors=True)

