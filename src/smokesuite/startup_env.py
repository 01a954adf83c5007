"""Give every Python process a usable HOME and user name, whatever UID the container runs as.

Clusters start containers as a UID the image does not know (Kubernetes ``runAsUser``, OpenShift's
random UIDs, ``docker run --user 12345``): there is no passwd entry, so ``getpass.getuser()`` raises
(torch 2.6's Inductor names its cache dir after the user, so ``torch.compile`` fails), and ``HOME`` is
``/`` — or, under a read-only root, the image's ``/home/ml`` is not writable either. Every cache torch
and friends write (``~/.cache``, ``~/.triton``, ``~/.nv``, ``~/.config``) and pip's user site derive
from ``HOME``.

The images install this file as the standalone module ``pytorch_cuda_startup`` plus a ``.pth`` line in
the venv (``import pytorch_cuda_startup; pytorch_cuda_startup.apply()``), so it runs at the start of
every interpreter: ``docker exec``, ``kubectl exec``, ``apptainer exec`` and ``srun --container-image``
included, none of which runs an image ENTRYPOINT. It changes nothing when things already work:

- ``HOME`` unset, not a directory, or not writable -> ``$TMPDIR/home-<uid>`` (else ``/tmp/home-<uid>``),
  created 0700 and used only when it is a real directory owned by this UID (a shared /tmp is safe);
  pip's user site of this process moves with it, and its ``bin`` goes on ``PATH`` for child processes.
- no passwd entry and none of ``LOGNAME``/``USER``/``LNAME``/``USERNAME`` set -> ``LOGNAME`` and
  ``USER`` become ``uid_<uid>`` (the name torch >= 2.7 falls back to itself).

What it did is recorded in ``PYTORCH_CUDA_ENV_FALLBACK`` (inherited by child processes; ``doctor``
reports it). ``PYTORCH_CUDA_NO_ENV_FALLBACK=1`` turns it off. Standard library only, and it never
raises: a startup hook must not be able to break the interpreter.
"""

from __future__ import annotations

import os
import stat
import sys

# Nothing heavy at start-up (dataclasses alone costs ~50 ms per interpreter): the standard idiom for
# type-only imports without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import MutableMapping

MODULE_NAME = "pytorch_cuda_startup"  # the name the images install this file under
PTH_NAME = "pytorch-cuda-startup.pth"
PTH_LINE = f"import {MODULE_NAME}; {MODULE_NAME}.apply()\n"
OPT_OUT_ENV = "PYTORCH_CUDA_NO_ENV_FALLBACK"
RECORD_ENV = "PYTORCH_CUDA_ENV_FALLBACK"
USER_ENV_NAMES = ("LOGNAME", "USER", "LNAME", "USERNAME")  # getpass.getuser()'s order


class Applied:
    """What :func:`apply` changed (all None: nothing). A plain class: see the imports."""

    __slots__ = ("home", "previous_home", "user")

    def __init__(self, home: str | None = None, previous_home: str | None = None, user: str | None = None):
        self.home, self.previous_home, self.user = home, previous_home, user

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Applied) and (self.home, self.previous_home, self.user) == (
            other.home, other.previous_home, other.user)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Applied(home={self.home!r}, previous_home={self.previous_home!r}, user={self.user!r})"

    def describe(self) -> str:
        parts = []
        if self.home:
            parts.append(f"HOME={self.home} (was {self.previous_home or 'unset'})")
        if self.user:
            parts.append(f"LOGNAME=USER={self.user} (no passwd entry)")
        return "; ".join(parts)


def home_usable(path: str | None) -> bool:
    """A HOME that caches and ``pip install --user`` can write into."""
    return bool(path) and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def fallback_user_name(uid: int) -> str:
    return f"uid_{uid}"


def has_passwd_entry(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def private_dir(parent: str, uid: int) -> str | None:
    """``parent/home-<uid>``, created 0700; None unless it is a real directory of ``uid`` that only it can write.

    On a shared /tmp another user may have created that name first (or a symlink to elsewhere):
    such a path is never used.
    """
    path = os.path.join(parent, f"home-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


def fallback_home(environ: MutableMapping[str, str], uid: int) -> str | None:
    for parent in (environ.get("TMPDIR"), "/tmp", "/var/tmp"):
        if parent and os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
            path = private_dir(parent, uid)
            if path:
                return path
    return None


def _user_base(environ: MutableMapping[str, str], home: str) -> str:
    return environ.get("PYTHONUSERBASE") or os.path.join(home, ".local")


def _put_user_bin_on_path(environ: MutableMapping[str, str], home: str) -> None:
    """Scripts of ``pip install --user`` land in <user base>/bin; child processes must find them."""
    bin_dir = os.path.join(_user_base(environ, home), "bin")
    parts = environ.get("PATH", "").split(os.pathsep)
    if bin_dir not in parts:
        environ["PATH"] = os.pathsep.join([bin_dir, *filter(None, parts)])


def _refresh_user_site() -> None:
    """Move this interpreter's user site to the new HOME, when site.py computed it before the .pth ran.

    In a venv (the images) the venv's .pth files run before site.py computes the user site, so the
    new HOME is simply used; outside a venv the user site is computed first and is redone here.
    """
    site = sys.modules.get("site")
    if site is None or getattr(site, "USER_SITE", None) is None or not getattr(site, "ENABLE_USER_SITE", False):
        return
    old_site = site.USER_SITE
    site.USER_BASE = None
    site.USER_SITE = None
    new_site = site.getusersitepackages()  # recomputed from the new HOME
    if old_site in sys.path:
        sys.path.remove(old_site)
    if not os.path.isdir(new_site) or new_site in sys.path:
        return
    # The user site goes before the site-packages (as site.py orders them outside a venv), so a
    # `pip install --user` upgrade wins over the installed copy, exactly as with a normal HOME.
    before = list(sys.path)
    site.addsitedir(new_site)
    added = [p for p in sys.path if p not in before]
    kept = [p for p in sys.path if p in before]
    first = next((i for i, p in enumerate(kept) if p.rstrip("/").endswith(("site-packages", "dist-packages"))),
                 len(kept))
    sys.path[:] = kept[:first] + added + kept[first:]


def apply(environ: MutableMapping[str, str] | None = None, uid: int | None = None) -> Applied:
    """Fix HOME and the user name in ``environ`` (default: this process) when they are unusable."""
    env = os.environ if environ is None else environ
    try:
        if env.get(OPT_OUT_ENV, "").strip() not in ("", "0"):
            return Applied()
        uid = os.getuid() if uid is None else uid
        user = None
        if not any(env.get(n) for n in USER_ENV_NAMES) and not has_passwd_entry(uid):
            user = fallback_user_name(uid)
            env["LOGNAME"] = env["USER"] = user
        home = previous = None
        if not home_usable(env.get("HOME")):
            previous = env.get("HOME")
            home = fallback_home(env, uid)
            if home:
                env["HOME"] = home
                _put_user_bin_on_path(env, home)
                if environ is None:
                    _refresh_user_site()
        applied = Applied(home=home, previous_home=previous if home else None, user=user)
        if applied.home or applied.user:
            env[RECORD_ENV] = applied.describe()
        return applied
    except Exception:  # never break interpreter start-up; `doctor` reports what is still wrong
        return Applied()


def install(site_dir: str) -> tuple[str, str]:
    """Install this file as ``pytorch_cuda_startup`` plus its ``.pth`` into ``site_dir`` (image builds, tests)."""
    import shutil

    module = os.path.join(site_dir, f"{MODULE_NAME}.py")
    pth = os.path.join(site_dir, PTH_NAME)
    shutil.copyfile(__file__, module)
    with open(pth, "w") as fh:
        fh.write(PTH_LINE)
    return module, pth


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sysconfig

    p = argparse.ArgumentParser(prog="python -m smokesuite.startup_env", description=__doc__.splitlines()[0])
    p.add_argument("--install", metavar="SITE_DIR", nargs="?", const=sysconfig.get_paths()["purelib"],
                   help="install the start-up hook into SITE_DIR (default: this interpreter's site-packages)")
    args = p.parse_args(argv)
    if args.install is None:
        p.print_help()
        return 2
    if not os.path.isdir(args.install):
        print(f"startup_env: error: {args.install} is not a directory (give the venv's site-packages)",
              file=sys.stderr)
        return 2
    for path in install(args.install):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
