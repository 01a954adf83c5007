"""The images' start-up hook (smokesuite.startup_env installed as pytorch_cuda_startup + .pth), for real:
a venv with the hook, Python started as a UID without passwd entry and with HOME=/ (what docker/
Kubernetes give an unknown UID), and as a user whose HOME works (left alone)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from other_user import OTHER_UID, OtherUser, make_other_user

from smokesuite import startup_env
from smokesuite.startup_env import PTH_LINE, RECORD_ENV, fallback_user_name, private_dir

REPORT = f"""
RECORD_ENV = {RECORD_ENV!r}
import getpass, json, os, site, sys
from pathlib import Path
print(json.dumps({{"home": os.environ.get("HOME"), "user": getpass.getuser(), "record": os.environ.get(RECORD_ENV),
                  "path_home": str(Path.home()), "user_site": site.getusersitepackages(), "sys_path": sys.path,
                  "PATH": os.environ.get("PATH"), "hook": "pytorch_cuda_startup" in sys.modules}}))
"""


@pytest.fixture
def hooked() -> Iterator[OtherUser]:
    with make_other_user() as u:
        # the way the image installs it: the file run as a script by the venv's Python (no smokesuite in base)
        proc = subprocess.run([str(u.python), startup_env.__file__, "--install", str(u.site)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert (u.site / "pytorch_cuda_startup.py").is_file()
        assert (u.site / "pytorch-cuda-startup.pth").read_text() == PTH_LINE
        yield u


def _report(u: OtherUser, env: dict[str, str] | None = None, **kw: int) -> dict:
    proc = u.run(REPORT, env, **kw)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_unknown_uid_gets_a_private_home_and_a_name(hooked: OtherUser) -> None:
    r = _report(hooked)
    home = hooked.tmp / f"home-{OTHER_UID}"
    assert r["hook"] and r["home"] == str(home) and r["path_home"] == str(home)
    assert r["user"] == fallback_user_name(OTHER_UID) == f"uid_{OTHER_UID}"
    st = home.stat()
    assert st.st_uid == OTHER_UID and st.st_mode & 0o777 == 0o700
    assert r["record"] == f"HOME={home} (was /); LOGNAME=USER=uid_{OTHER_UID} (no passwd entry)"
    assert r["user_site"].startswith(str(home) + "/.local/")
    assert r["PATH"].split(":")[0] == f"{home}/.local/bin"


def test_without_the_hook_the_same_process_is_broken(hooked: OtherUser) -> None:
    """The failure the hook fixes, shown on the same interpreter (it can fail: the hook is what differs)."""
    proc = hooked.run("import getpass; getpass.getuser()", {startup_env.OPT_OUT_ENV: "1"})
    assert proc.returncode != 0 and "getpwuid(): uid not found" in proc.stderr


def test_user_site_packages_follow_the_new_home(hooked: OtherUser) -> None:
    first = _report(hooked)
    make = f"import os; os.makedirs({first['user_site']!r}, exist_ok=True); " \
           f"open(os.path.join({first['user_site']!r}, 'hookprobe_mod.py'), 'w').write('VALUE = 42')"
    assert hooked.run(make).returncode == 0
    proc = hooked.run("import hookprobe_mod; print(hookprobe_mod.VALUE, hookprobe_mod.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("42 " + first["user_site"])


def test_a_working_home_and_name_are_left_alone(hooked: OtherUser) -> None:
    home = hooked.root / "realhome"
    home.mkdir()
    os.chown(home, OTHER_UID, 0)
    r = _report(hooked, {"HOME": str(home), "USER": "alice"})
    assert r["home"] == str(home) and r["user"] == "alice" and r["record"] is None
    assert not (hooked.tmp / f"home-{OTHER_UID}").exists()


def test_opt_out_changes_nothing(hooked: OtherUser) -> None:
    proc = hooked.run("import os; print(os.environ['HOME'], os.environ.get('USER'))", {startup_env.OPT_OUT_ENV: "1"})
    assert proc.stdout.split() == ["/", "None"]


def test_group_does_not_matter(hooked: OtherUser) -> None:
    r = _report(hooked, gid=OTHER_UID)  # Kubernetes runAsGroup without the gid-0 convention
    assert r["home"] == str(hooked.tmp / f"home-{OTHER_UID}") and r["user"] == f"uid_{OTHER_UID}"


def test_a_foreign_or_linked_dir_on_shared_tmp_is_never_used(tmp_path: Path) -> None:
    taken = tmp_path / f"home-{OTHER_UID}"
    taken.mkdir(mode=0o755)  # made by another user (root here) first
    assert private_dir(str(tmp_path), OTHER_UID) is None
    mine = tmp_path / f"home-{os.getuid()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    mine.symlink_to(elsewhere)  # a link planted under my name: never followed
    assert private_dir(str(tmp_path), os.getuid()) is None
    mine.unlink()
    made = private_dir(str(tmp_path), os.getuid())
    assert made == str(mine) and mine.is_dir() and not mine.is_symlink() and mine.stat().st_mode & 0o777 == 0o700


def test_apply_on_a_given_environment_never_raises() -> None:
    class Broken(dict):
        def get(self, *a: object) -> str:
            raise RuntimeError("boom")

    assert startup_env.apply(Broken()) == startup_env.Applied()  # type: ignore[arg-type]
