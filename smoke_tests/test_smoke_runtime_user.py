"""Any UID, any GID, read-only roots: as whatever user runs the suite, HOME, the user name, pip's user
site and every cache torch and friends write are usable, and compiled code loads from where it lands.

Run by CI as the image's default user, as ``--user 12345:0`` and with ``--read-only --tmpfs /tmp:exec``
(docs/clusters.md). ``doctor`` gives the cause and the fix of any failure here.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from smokesuite.buildinfo import BuildInfo
from smokesuite.plugin import Figures
from smokesuite.runtime_env import RuntimeFacts, gather_runtime, in_image, probe_exec, probe_writable
from smokesuite.startup_env import MODULE_NAME as STARTUP_MODULE
from smokesuite.startup_env import RECORD_ENV

# Layers that install a C compiler for torch.compile (docker/Dockerfile); base has none.
COMPILER_LAYERS = ("torch", "data", "devel")


@pytest.fixture(scope="module")
def runtime() -> RuntimeFacts:
    return gather_runtime()


def _who(r: RuntimeFacts) -> str:
    return f"uid {r.uid} gid {r.gid}" + ("" if r.passwd_entry else " (no passwd entry)")


def test_startup_hook_installed_in_image(runtime: RuntimeFacts, figures: Figures) -> None:
    if not in_image():
        pytest.skip("not a pytorch-cuda image: the start-up hook is an image feature (plain hosts have passwd "
                    "entries and a HOME)")
    figures.update({"hook_loaded": runtime.startup_hook, "fallback": runtime.fallback or "none"})
    assert runtime.startup_hook, (
        f"the image's Python does not run the {STARTUP_MODULE} start-up hook (no {STARTUP_MODULE}.py + .pth in the "
        "venv's site-packages): as an unknown UID or with a read-only root, HOME and the user name stay unusable; "
        "rebuild the image")


def test_user_name_resolves(runtime: RuntimeFacts, figures: Figures) -> None:
    figures.update({"uid": runtime.uid, "gid": runtime.gid, "passwd_entry": runtime.passwd_entry})
    assert runtime.getuser_error is None, (
        f"getpass.getuser() fails as {_who(runtime)}: {runtime.getuser_error}; torch.compile needs it "
        "(Inductor's cache dir). Set LOGNAME/USER; `doctor` explains")
    assert getpass.getuser() == runtime.getuser
    figures["user"] = runtime.getuser


def test_home_is_set_and_writable(runtime: RuntimeFacts, figures: Figures) -> None:
    home = os.environ.get("HOME")
    assert home, f"HOME is not set ({_who(runtime)})"
    figures["home"] = home
    if runtime.fallback:
        figures["fallback"] = runtime.fallback
    assert os.path.isdir(home), f"HOME={home} is not a directory ({_who(runtime)})"
    err = probe_writable(home)
    assert err is None, f"HOME={home} is not writable as {_who(runtime)}: {err}; `doctor` gives the fix"
    assert Path.home() == Path(home), "Path.home() disagrees with $HOME"


def test_pip_user_site_is_writable(runtime: RuntimeFacts, figures: Figures) -> None:
    user_site = sysconfig.get_path("purelib", f"{os.name}_user")
    figures.update({"enabled": runtime.user_site_enabled, "user_site": user_site})
    if not runtime.user_site_enabled:
        if in_image():
            pytest.fail("pip's user site is disabled in the image's venv (include-system-site-packages must be true "
                        "for `pip install --user`)", pytrace=False)
        pytest.skip(f"pip's user site is disabled for {sys.prefix} (a venv without system site packages)")
    err = probe_writable(user_site)
    assert err is None, f"pip install --user would fail as {_who(runtime)}: {user_site}: {err}"
    err = probe_exec(user_site)
    assert err is None, f"extension modules installed with pip --user could not load: {err}"


def test_cache_locations_are_writable(runtime: RuntimeFacts, figures: Figures) -> None:
    failures = []
    for st in runtime.locations:
        if st.role in ("HOME", "PIP_USER_SITE"):
            continue  # their own checks
        if st.path is None:
            failures.append(f"{st.role}: cannot be resolved ({st.error})")
            continue
        figures[st.role] = st.path
        err = probe_writable(st.path)
        if err:
            failures.append(f"{st.role}={st.path} ({st.source}): {err}")
    assert not failures, f"as {_who(runtime)}, caches cannot be written: " + "; ".join(failures) + \
        " (`doctor` gives the fix)"


def test_compiled_code_locations_allow_exec(runtime: RuntimeFacts, figures: Figures) -> None:
    failures = []
    for st in runtime.locations:
        if not st.needs_exec or st.path is None or st.role == "PIP_USER_SITE":
            continue
        err = probe_writable(st.path) or probe_exec(st.path)
        figures[st.role] = "ok" if err is None else err
        if err:
            failures.append(f"{st.role}={st.path}: {err}")
    assert not failures, ("compiled kernels cannot be loaded from where they are written: " + "; ".join(failures)
                          + " (Docker/Podman: --tmpfs /tmp:exec; or point the variable at an exec mount)")


CPU_COMPILE = textwrap.dedent("""
    import os, sys, torch
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    def f(x):
        return torch.sin(x) * x + torch.relu(x) / (1 + x * x)
    x = torch.randn(1024)
    err = float((torch.compile(f, fullgraph=True)(x) - f(x)).abs().max())
    print("CACHE", cache_dir())
    print("ERR", err)
    sys.exit(0 if err <= 1e-5 else 3)
""")


def test_torch_compile_cpu_as_this_user(build_info: BuildInfo | None, runtime: RuntimeFacts,
                                        figures: Figures) -> None:
    """torch.compile's CPU path in a fresh process: the user name, cache dir and exec mount it needs.

    The GPU check (test_smoke_cuda) compiles through Triton on each GPU; this one runs everywhere, so
    CI without GPUs catches an image that cannot compile as an unknown UID or on a read-only root.
    """
    pytest.importorskip("torch", reason="torch is not installed (base image)")
    have_cc = shutil.which(os.environ.get("CC") or "") or shutil.which("g++") or shutil.which("c++")
    if not have_cc or not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        layer = build_info.get("layer") if build_info else None
        if layer in COMPILER_LAYERS:
            pytest.fail(f"the {layer} image has no C++ compiler or Python headers: torch.compile cannot run; "
                        "rebuild the image", pytrace=False)
        pytest.skip("no C++ compiler or Python headers here: Inductor's CPU backend cannot build (a toolchain gap)")
    proc = subprocess.run([sys.executable, "-c", CPU_COMPILE], capture_output=True, text=True, timeout=280)
    out = (proc.stdout + proc.stderr).strip()
    lines = dict(ln.split(" ", 1) for ln in proc.stdout.splitlines() if ln.startswith(("CACHE ", "ERR ")))
    figures.update({"cache_dir": lines.get("CACHE", "?"), "max_abs_err": lines.get("ERR", "?"),
                    "fallback": os.environ.get(RECORD_ENV) or "none"})
    assert proc.returncode == 0, f"torch.compile (CPU) fails as {_who(runtime)}: {out[-1500:]}"
