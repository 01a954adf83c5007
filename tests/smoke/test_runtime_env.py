"""runtime_env and its doctor diagnoses on real filesystems: another UID without passwd entry, a real
noexec tmpfs and a real read-only bind mount (in a private mount namespace: nothing leaks to the host)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from other_user import OTHER_UID, OtherUser, make_other_user

from smokesuite import startup_env
from smokesuite.doctor import (
    Facts,
    diagnose_cache_dirs,
    diagnose_exec_mounts,
    diagnose_home,
    diagnose_user_name,
)
from smokesuite.runtime_env import RuntimeFacts, mount_of, read_mounts, resolve_locations

GATHER = """
import dataclasses, json
from smokesuite.runtime_env import gather_runtime, probe_exec, probe_writable
import os
f = gather_runtime()
probe = os.environ.get("PROBE")
print(json.dumps({"facts": dataclasses.asdict(f), "writable": probe_writable(probe) if probe else None,
                  "exec": probe_exec(probe) if probe else None}))
"""


@pytest.fixture
def other_user() -> Iterator[OtherUser]:
    with make_other_user() as u:
        yield u


def _facts(out: str) -> tuple[RuntimeFacts, dict]:
    data = json.loads(out)
    return RuntimeFacts.from_json(data["facts"]), data


def test_unknown_uid_is_diagnosed(other_user: OtherUser) -> None:
    proc = other_user.run(GATHER)
    assert proc.returncode == 0, proc.stderr
    r, _ = _facts(proc.stdout)
    assert r.uid == OTHER_UID and not r.passwd_entry and r.getuser_error and "getpwuid" in r.getuser_error
    assert r.location("TORCHINDUCTOR_CACHE_DIR").path is None  # type: ignore[union-attr]
    f = Facts(runtime=r)
    assert diagnose_user_name(f).status == "problem"
    home = diagnose_home(f)
    assert home.status == "problem" and "no passwd entry" in (home.cause or "")
    assert diagnose_cache_dirs(f).status == "problem"


def test_unknown_uid_with_the_hook_is_healthy(other_user: OtherUser) -> None:
    startup_env.install(str(other_user.site))
    proc = other_user.run(GATHER)
    assert proc.returncode == 0, proc.stderr
    r, _ = _facts(proc.stdout)
    assert r.startup_hook and r.getuser == f"uid_{OTHER_UID}" and r.fallback
    f = Facts(runtime=r)
    for diag in (diagnose_user_name, diagnose_home, diagnose_cache_dirs, diagnose_exec_mounts):
        assert diag(f).status == "ok", diag(f)


def _in_private_mounts(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip("cannot create a mount namespace here (needs root / CAP_SYS_ADMIN)")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, env=env, timeout=120)


def _env(**kw: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(kw)
    return env


@pytest.mark.parametrize("exec_ok", [False, True], ids=["noexec", "exec"])
def test_noexec_tmpfs_is_found_by_facts_and_probe(tmp_path: Path, exec_ok: bool) -> None:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    opts = "size=8m" if exec_ok else "noexec,size=8m"
    proc = _in_private_mounts(f'mount -t tmpfs -o {opts} tmpfs "{mnt}"\nexec "{sys.executable}" -c \'{GATHER}\'',
                              _env(TMPDIR=str(mnt), PROBE=str(mnt / "torchinductor_x")))
    assert proc.returncode == 0, proc.stderr
    r, data = _facts(proc.stdout)
    tmp = r.location("TMPDIR")
    assert tmp is not None and tmp.path == str(mnt) and tmp.writable
    assert tmp.mount is not None and tmp.mount.fs_type == "tmpfs" and tmp.mount.mount_point == str(mnt)
    assert data["writable"] is None
    d = diagnose_exec_mounts(Facts(runtime=r))
    if exec_ok:
        assert not tmp.noexec and data["exec"] is None and d.status == "ok"
    else:
        assert tmp.noexec and "noexec" in data["exec"]
        assert d.status == "problem" and f"TMPDIR={mnt}" in d.summary and "/tmp:exec" in (d.fix or "")


def test_read_only_home_is_found_by_facts_and_probe(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    proc = _in_private_mounts(f'mount --bind "{home}" "{home}"\nmount -o remount,bind,ro "{home}"\n'
                              f'exec "{sys.executable}" -c \'{GATHER}\'', _env(HOME=str(home), PROBE=str(home)))
    assert proc.returncode == 0, proc.stderr
    r, data = _facts(proc.stdout)
    st = r.location("HOME")
    assert st is not None and st.read_only_fs and not st.writable
    assert "Read-only file system" in data["writable"]
    d = diagnose_home(Facts(runtime=r))
    assert d.status == "problem" and "read-only filesystem" in (d.cause or "") and f"--tmpfs {home}:exec" in (d.fix or "")
    caches = diagnose_cache_dirs(Facts(runtime=r))
    assert caches.status == "problem" and "XDG_CACHE_HOME" in caches.summary


def test_mountinfo_parsing_and_longest_prefix(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mountinfo").write_text(
        "22 1 0:21 / / ro,relatime shared:1 - overlay overlay rw,lowerdir=/x\n"
        "30 22 0:30 / /tmp rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,size=65536k\n"
        "31 22 0:31 / /data\\040set rw,relatime - ext4 /dev/vdb rw\n"
        "32 30 0:32 / /tmp rw,relatime - tmpfs tmpfs rw\n")
    mounts = read_mounts(tmp_path)
    assert [m.mount_point for m in mounts] == ["/", "/tmp", "/data set", "/tmp"]
    assert mount_of("/tmp/torchinductor_x", mounts) is mounts[3]  # the later mount on /tmp shadows the first
    assert mount_of("/data set/a", mounts).fs_type == "ext4"  # type: ignore[union-attr]
    assert mount_of("/tmpx", mounts) is mounts[0] and "ro" in mounts[0].options


def test_locations_resolve_as_the_libraries_do() -> None:
    env = {"HOME": "/h", "XDG_CACHE_HOME": "/c", "TRITON_HOME": "/t", "MPLCONFIGDIR": "/m"}
    locs = {loc.role: loc for loc in resolve_locations(env, "alice", None, "/tmp", "/h/.local/lib/site")}
    assert locs["TORCHINDUCTOR_CACHE_DIR"].path == "/tmp/torchinductor_alice"
    assert locs["TRITON_CACHE_DIR"].path == "/t/.triton/cache" and locs["TRITON_CACHE_DIR"].needs_exec
    assert locs["TORCH_EXTENSIONS_DIR"].path == "/c/torch_extensions"
    assert locs["TORCH_HOME"].path == "/c/torch" and locs["MPLCONFIGDIR"].path == "/m"
    assert locs["CUDA_CACHE_PATH"].path == "/h/.nv/ComputeCache"
    assert locs["PIP_USER_SITE"].env_var == "PYTHONUSERBASE"
    nouser = {loc.role: loc for loc in resolve_locations({"HOME": "/h"}, None, "KeyError: x", "/tmp", None)}
    assert nouser["TORCHINDUCTOR_CACHE_DIR"].path is None and "getuser" in (nouser["TORCHINDUCTOR_CACHE_DIR"].error or "")
    assert "PIP_USER_SITE" not in nouser
