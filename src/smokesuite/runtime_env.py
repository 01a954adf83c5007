"""Where this process may write and run compiled code: user name, HOME, caches, exec mounts.

Clusters run images as a UID the image does not know, with read-only roots and ``noexec`` tmpfs
mounts. This module resolves every location torch and friends write (the way those libraries resolve
them, from the environment) and reads what the filesystem allows there (writable, read-only, ``noexec``,
which mount). ``gather_runtime()`` reads the machine into ``RuntimeFacts`` (JSON round-trips, so
``doctor --facts`` replays it); the smoke checks add real probes (a file written, a page mapped
executable) with :func:`probe_writable` and :func:`probe_exec`.
"""

from __future__ import annotations

import getpass
import mmap
import os
import site
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smokesuite.buildinfo import DEFAULT_BUILD_INFO_PATH
from smokesuite.startup_env import MODULE_NAME as STARTUP_MODULE
from smokesuite.startup_env import RECORD_ENV, has_passwd_entry


@dataclass(frozen=True)
class Location:
    """One place a library writes, as that library resolves it."""

    role: str  # e.g. "TORCHINDUCTOR_CACHE_DIR"
    path: str | None  # None when it cannot be resolved (``error`` says why)
    source: str  # how it was resolved: "$TORCHINDUCTOR_CACHE_DIR" or "default: <tmp>/torchinductor_<user>"
    needs_exec: bool  # shared objects compiled into it are loaded from it (dlopen needs an exec mount)
    what: str  # who writes it, for messages
    error: str | None = None
    env_var: str | None = None  # the variable that moves it (the role, unless named otherwise)


@dataclass
class Mount:
    mount_point: str
    fs_type: str
    options: list[str]


@dataclass
class PathState:
    """What the filesystem allows at a location (or at its nearest existing ancestor, where it is created)."""

    role: str
    path: str | None
    source: str
    needs_exec: bool
    what: str
    error: str | None = None  # could not be resolved
    env_var: str | None = None
    exists: bool = False
    is_dir: bool = False
    existing: str | None = None  # the path, or the ancestor it would be created in
    writable: bool = False
    read_only_fs: bool = False
    noexec: bool = False
    mount: Mount | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PathState:
        data = dict(data)
        mount = data.pop("mount", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, mount=Mount(**mount) if mount else None)


@dataclass
class RuntimeFacts:
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)
    passwd_entry: bool = True
    user_env: dict[str, str] = field(default_factory=dict)  # LOGNAME/USER/... as set
    getuser: str | None = None
    getuser_error: str | None = None
    home: str | None = None
    startup_hook: bool = False  # the images' pytorch_cuda_startup hook ran in this interpreter
    fallback: str | None = None  # what it changed ($PYTORCH_CUDA_ENV_FALLBACK)
    read_only_root: bool = False
    user_site_enabled: bool = False
    locations: list[PathState] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuntimeFacts:
        data = dict(data)
        locs = [PathState.from_json(x) for x in data.pop("locations", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, locations=locs)

    def location(self, role: str) -> PathState | None:
        return next((p for p in self.locations if p.role == role), None)


def in_image(build_info_path: str = DEFAULT_BUILD_INFO_PATH) -> bool:
    """Inside a pytorch-cuda image (its own build record at the image path), not a host pointed at a record
    with $PYTORCH_CUDA_BUILD_INFO: image features (start-up hook, RDMA userspace) are required only there."""
    return Path(build_info_path).is_file()


# ------------------------------------------------------------------------------------------------
# resolution: pure functions of the environment


def _home(env: dict[str, str]) -> str | None:
    return env.get("HOME") or None


def _under_home(env: dict[str, str], *parts: str) -> str | None:
    home = _home(env)
    return os.path.join(home, *parts) if home else None


def _xdg(env: dict[str, str], var: str, default: tuple[str, ...]) -> tuple[str | None, str]:
    if env.get(var):
        return env[var], f"${var}"
    return _under_home(env, *default), f"default: $HOME/{'/'.join(default)}"


def resolve_locations(env: dict[str, str], user: str | None, user_error: str | None, tmpdir: str,
                      user_site: str | None) -> list[Location]:
    """Every cache/user location as torch 2.6, Triton 3.x, CUDA, matplotlib and pip resolve them."""
    out: list[Location] = []

    def add(role: str, value: str | None, source: str, needs_exec: bool, what: str, error: str | None = None,
            env_var: str | None = None) -> None:
        err = error or (None if value else "HOME is not set")
        out.append(Location(role, value if not error else None, source, needs_exec, what, err, env_var or role))

    add("HOME", _home(env), "$HOME", False, "pip --user, ~/.config, ~/.cache and every tool writing ~",
        None if _home(env) else "HOME is not set")
    add("TMPDIR", tmpdir, "tempfile.gettempdir()", True, "temporary files; Inductor's default cache lives here")
    cache, src = _xdg(env, "XDG_CACHE_HOME", (".cache",))
    add("XDG_CACHE_HOME", cache, src, False, "torch hub, torch_extensions, pip, huggingface")
    if env.get("TORCHINDUCTOR_CACHE_DIR"):
        add("TORCHINDUCTOR_CACHE_DIR", env["TORCHINDUCTOR_CACHE_DIR"], "$TORCHINDUCTOR_CACHE_DIR", True,
            "torch.compile (Inductor) kernels, loaded as shared objects")
    elif user:
        add("TORCHINDUCTOR_CACHE_DIR", os.path.join(tmpdir, "torchinductor_" + user),
            "default: <tmp>/torchinductor_<user>", True, "torch.compile (Inductor) kernels, loaded as shared objects")
    else:
        add("TORCHINDUCTOR_CACHE_DIR", None, "default: <tmp>/torchinductor_<user>", True,
            "torch.compile (Inductor) kernels, loaded as shared objects",
            f"torch 2.6 names it after getpass.getuser(), which fails: {user_error}")
    if env.get("TRITON_CACHE_DIR"):
        add("TRITON_CACHE_DIR", env["TRITON_CACHE_DIR"], "$TRITON_CACHE_DIR", True, "Triton kernels and launchers")
    elif env.get("TRITON_HOME"):
        add("TRITON_CACHE_DIR", os.path.join(env["TRITON_HOME"], ".triton", "cache"), "default: $TRITON_HOME/.triton/cache",
            True, "Triton kernels and launchers")
    else:
        add("TRITON_CACHE_DIR", _under_home(env, ".triton", "cache"), "default: $HOME/.triton/cache", True,
            "Triton kernels and launchers")
    if env.get("TORCH_EXTENSIONS_DIR"):
        add("TORCH_EXTENSIONS_DIR", env["TORCH_EXTENSIONS_DIR"], "$TORCH_EXTENSIONS_DIR", True,
            "torch.utils.cpp_extension builds")
    else:
        add("TORCH_EXTENSIONS_DIR", os.path.join(cache, "torch_extensions") if cache else None,
            f"{src}/torch_extensions", True, "torch.utils.cpp_extension builds")
    if env.get("TORCH_HOME"):
        add("TORCH_HOME", env["TORCH_HOME"], "$TORCH_HOME", False, "torch.hub downloads")
    else:
        add("TORCH_HOME", os.path.join(cache, "torch") if cache else None, f"{src}/torch", False, "torch.hub downloads")
    if env.get("CUDA_CACHE_PATH"):
        add("CUDA_CACHE_PATH", env["CUDA_CACHE_PATH"], "$CUDA_CACHE_PATH", False, "the CUDA driver's PTX JIT cache")
    else:
        add("CUDA_CACHE_PATH", _under_home(env, ".nv", "ComputeCache"), "default: $HOME/.nv/ComputeCache", False,
            "the CUDA driver's PTX JIT cache")
    if env.get("MPLCONFIGDIR"):
        add("MPLCONFIGDIR", env["MPLCONFIGDIR"], "$MPLCONFIGDIR", False, "matplotlib's config and font cache")
    else:
        cfg, csrc = _xdg(env, "XDG_CONFIG_HOME", (".config",))
        add("MPLCONFIGDIR", os.path.join(cfg, "matplotlib") if cfg else None, f"{csrc}/matplotlib", False,
            "matplotlib's config and font cache")
    if user_site:
        add("PIP_USER_SITE", user_site, "default: $HOME/.local" if not env.get("PYTHONUSERBASE") else "$PYTHONUSERBASE",
            True, "pip install --user (extension modules are loaded from here)", env_var="PYTHONUSERBASE")
    return out


# ------------------------------------------------------------------------------------------------
# the filesystem


def _unescape(field_: str) -> str:
    return field_.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def read_mounts(proc_root: str | os.PathLike[str] = "/proc") -> list[Mount]:
    """Mounts of this process from ``<proc_root>/self/mountinfo`` (later mounts shadow earlier ones)."""
    try:
        text = Path(proc_root, "self", "mountinfo").read_text()
    except OSError:
        return []
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if not sep or len(parts) < 6 or not rparts:
            continue
        opts = parts[5].split(",") + (rparts[2].split(",") if len(rparts) > 2 else [])
        mounts.append(Mount(mount_point=_unescape(parts[4]), fs_type=rparts[0], options=opts))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` lives on: the longest mount point above it, the last one mounted on a tie."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if (path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/") and (
                best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    return best


def nearest_existing(path: str) -> str:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def path_state(loc: Location, mounts: list[Mount]) -> PathState:
    st = PathState(role=loc.role, path=loc.path, source=loc.source, needs_exec=loc.needs_exec, what=loc.what,
                   error=loc.error, env_var=loc.env_var)
    if loc.path is None:
        return st
    path = os.path.abspath(loc.path)
    st.exists = os.path.exists(path)
    st.is_dir = os.path.isdir(path)
    existing = nearest_existing(path)
    st.existing = existing
    try:
        vfs = os.statvfs(existing)
        st.read_only_fs = bool(vfs.f_flag & os.ST_RDONLY)
        st.noexec = bool(vfs.f_flag & os.ST_NOEXEC)
    except OSError:
        pass
    # access() answers EROFS for a read-only mount and honours permissions for non-root users.
    st.writable = os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK) and not st.read_only_fs
    st.mount = mount_of(os.path.realpath(existing), mounts)
    return st


def _root_read_only() -> bool:
    try:
        return bool(os.statvfs("/").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def user_site_path() -> tuple[bool, str | None]:
    """(pip's user site is enabled, where it is) for this interpreter."""
    enabled = bool(site.ENABLE_USER_SITE)
    try:
        return enabled, sysconfig.get_path("purelib", f"{os.name}_user")
    except KeyError:
        return enabled, None


def gather_runtime(env: dict[str, str] | None = None, proc_root: str | os.PathLike[str] = "/proc") -> RuntimeFacts:
    env = dict(os.environ if env is None else env)
    uid = os.getuid()
    facts = RuntimeFacts(uid=uid, gid=os.getgid(), groups=sorted(os.getgroups()), passwd_entry=has_passwd_entry(uid),
                         user_env={n: env[n] for n in ("LOGNAME", "USER", "LNAME", "USERNAME") if env.get(n)},
                         home=env.get("HOME"), startup_hook=STARTUP_MODULE in sys.modules,
                         fallback=env.get(RECORD_ENV), read_only_root=_root_read_only())
    try:
        facts.getuser = getpass.getuser()
    except Exception as exc:  # KeyError (< 3.13) or OSError (3.13) without a passwd entry
        facts.getuser_error = f"{type(exc).__name__}: {exc}"
    facts.user_site_enabled, user_site = user_site_path()
    mounts = read_mounts(proc_root)
    locs = resolve_locations(env, facts.getuser, facts.getuser_error, tempfile.gettempdir(),
                             user_site if facts.user_site_enabled else None)
    facts.locations = [path_state(loc, mounts) for loc in locs]
    return facts


# ------------------------------------------------------------------------------------------------
# real probes (smoke checks): the filesystem does what the libraries will ask of it


def probe_writable(path: str) -> str | None:
    """None when a file can be created where ``path`` is (or would be created); else why not."""
    existing = nearest_existing(os.path.abspath(path))
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".smoke-probe-", dir=existing)
    except OSError as exc:
        return f"cannot create a file in {existing}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(name)
    return None


def probe_exec(path: str) -> str | None:
    """None when a file in ``path``'s filesystem can be mapped executable (what dlopen does); else why not."""
    existing = nearest_existing(os.path.abspath(path))
    try:
        fd, name = tempfile.mkstemp(prefix=".smoke-exec-", dir=existing)
    except OSError as exc:
        return f"cannot create a file in {existing}: {exc.strerror or exc}"
    try:
        os.write(fd, b"\0" * mmap.PAGESIZE)
        try:
            m = mmap.mmap(fd, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        except OSError as exc:
            return f"{existing} refuses executable mappings ({exc.strerror or exc}): mounted noexec"
        m.close()
        return None
    finally:
        os.close(fd)
        os.unlink(name)


def describe_mount(st: PathState) -> str:
    if st.mount is None:
        return ""
    flags = [o for o in st.mount.options if o in ("ro", "noexec")]
    return f" ({st.mount.fs_type} at {st.mount.mount_point}{', ' + ','.join(flags) if flags else ''})"
