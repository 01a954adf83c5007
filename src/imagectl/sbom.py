"""SBOM of one image, from the image itself: CycloneDX JSON made by maintained tools, never by hand.

- Debian packages: `debsbom generate` (Siemens' SBOM tool for Debian systems) over the image's own
  dpkg status, copied out of a stopped container (`docker cp`); nothing in the image runs.
- Python packages: `cyclonedx-py environment` run *inside* the image with the image's interpreter
  (/opt/venv/bin/python), so it lists exactly what that environment imports, system site included.
  The tool is pip-installed for the image's Python version into build/sbom-tool/py3.X (cached) and
  mounted read-only; it is put on sys.path only in the tool's own process, so the interpreter it
  inspects (a child process) sees a clean path and the tool's packages are not listed.

    imagectl's push calls generate_sbom(); by hand: python -m imagectl.sbom IMAGE OUT_DIR
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from imagectl.matrix import REPO_ROOT, load_matrix

TOOL_CACHE = REPO_ROOT / "build" / "sbom-tool"
_IN_IMAGE = "/opt/imagectl-sbom-tool"
# The launcher: tool on sys.path for this process only; the inspected interpreter is a child.
_LAUNCHER = (
    f"import runpy,sys; sys.path.insert(0, {_IN_IMAGE!r}); "
    "sys.argv=['cyclonedx-py','environment','--output-reproducible','--no-validate','-o','-',sys.argv[1]]; "
    "runpy.run_module('cyclonedx_py', run_name='__main__')"
)
_FIND_PYTHON = ("for p in /opt/venv/bin/python /usr/local/bin/python3 /usr/bin/python3; do "
                "[ -x \"$p\" ] && { \"$p\" -c 'import sys; print(sys.executable, \"%d.%d\" % sys.version_info[:2])'; "
                "exit 0; }; done; exit 3")


class SbomError(RuntimeError):
    """An SBOM could not be made; the message says which part and why."""


@dataclass(frozen=True)
class SbomResult:
    files: dict[str, Path]  # "debian" / "python" -> CycloneDX JSON file
    notes: list[str] = field(default_factory=list)


def _run(cmd: list[str], timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise SbomError(f"`{cmd[0]}` not found (install the dev extra: pip install -e '.[dev]')") from exc


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise SbomError(f"`{name}` is not installed: `pip install -e '.[dev]'` (it brings debsbom and cyclonedx-bom)")
    return found


_DPKG_ARCH = {"arm": "armhf", "ppc64le": "ppc64el", "386": "i386"}  # Docker/Go names -> dpkg names


def _dpkg_arch(image: str, docker: str) -> str:
    arch = _run([docker, "image", "inspect", "-f", "{{.Architecture}}", image]).stdout.strip() or "amd64"
    return _DPKG_ARCH.get(arch, arch)


def debian_sbom(image: str, out: Path, docker: str = "docker") -> Path | None:
    """CycloneDX of the image's dpkg status via debsbom; None when the image has no dpkg database."""
    cid = _run([docker, "create", image, "true"]).stdout.strip()
    if not cid:
        raise SbomError(f"docker create {image} failed")
    try:
        with tempfile.TemporaryDirectory(prefix="sbom-root-") as tmp:
            root = Path(tmp)
            (root / "var/lib/dpkg").mkdir(parents=True)
            (root / "etc").mkdir()
            res = _run([docker, "cp", f"{cid}:/var/lib/dpkg/status", str(root / "var/lib/dpkg/status")])
            if res.returncode != 0:
                return None
            _run([docker, "cp", "-L", f"{cid}:/etc/os-release", str(root / "etc/os-release")])
            target = out / "debian.cdx.json"
            res = _run([_tool("debsbom"), "generate", "-t", "cdx", "-r", str(root), "-o", str(out / "debian"),
                        "--distro-arch", _dpkg_arch(image, docker), "--distro-name", f"image {image[:19]}"])
            produced = out / "debian.cdx.json"
            if res.returncode != 0 or not produced.is_file():
                raise SbomError(f"debsbom failed: {res.stderr.strip()[-800:] or res.stdout[-800:]}")
            return target
    finally:
        _run([docker, "rm", "-f", cid])


def tool_dir(python_version: str) -> Path:
    """cyclonedx-bom installed for the image's Python (pure wheels + one compiled), cached by version."""
    requirement = f"cyclonedx-bom=={load_matrix().build_tools['cyclonedx-bom']}"  # pinned in images/matrix.toml
    target = TOOL_CACHE / f"py{python_version}-{requirement.replace('==', '-')}"
    if (target / "cyclonedx_py").is_dir():
        target.chmod(0o755)
        return target
    tmp = Path(tempfile.mkdtemp(prefix="sbom-tool-", dir=TOOL_CACHE.parent if TOOL_CACHE.parent.is_dir() else None))
    res = _run([sys.executable, "-m", "pip", "install", "-q", "--no-warn-conflicts", "--disable-pip-version-check",
                "--target", str(tmp), "--only-binary=:all:", "--implementation", "cp", "--python-version",
                python_version, "--platform", "manylinux2014_x86_64", "--platform", "any", requirement],
               timeout=600)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SbomError(f"cannot install {requirement} for Python {python_version}: {res.stderr.strip()[-800:]}")
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the image's non-root user must read it
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def python_sbom(image: str, out: Path, docker: str = "docker") -> Path | None:
    """CycloneDX of the image's Python environment, made inside the image; None when it has no Python."""
    base = [docker, "run", "--rm", "--network", "none", "--entrypoint", ""]
    res = _run([*base, image, "sh", "-c", _FIND_PYTHON], timeout=120)
    if res.returncode != 0 or not res.stdout.strip():
        return None
    python, version = res.stdout.split()[-2:]
    tools = tool_dir(version)
    res = _run([*base, "-v", f"{tools}:{_IN_IMAGE}:ro", image, python, "-c", _LAUNCHER, python], timeout=300)
    if res.returncode != 0:
        raise SbomError(f"cyclonedx-py in {image[:19]} failed: {res.stderr.strip()[-800:]}")
    try:
        bom = json.loads(res.stdout)
    except json.JSONDecodeError as exc:
        raise SbomError(f"cyclonedx-py printed no JSON: {res.stdout[:300]!r}") from exc
    target = out / "python.cdx.json"
    target.write_text(json.dumps(bom, indent=2) + "\n")
    return target


def generate_sbom(image: str, out: Path, docker: str = "docker") -> SbomResult:
    """Both SBOMs of `image` (ref or ID) into `out`; an image with neither dpkg nor Python is an error."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    notes: list[str] = []
    for kind, make in (("debian", debian_sbom), ("python", python_sbom)):
        path = make(image, out, docker)
        if path is None:
            notes.append(f"no {kind} packages: the image has no {'dpkg status' if kind == 'debian' else 'Python'}")
        else:
            files[kind] = path
    if not files:
        raise SbomError(f"{image}: found neither a dpkg status nor a Python interpreter to describe")
    return SbomResult(files, notes)


def components(path: Path) -> list[dict[str, str]]:
    """name/version/purl of every component of a CycloneDX JSON file (for checks and summaries)."""
    bom = json.loads(path.read_text())
    return [{"name": c.get("name", ""), "version": c.get("version", ""), "purl": c.get("purl", "")}
            for c in bom.get("components") or []]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m imagectl.sbom IMAGE OUT_DIR")
    result = generate_sbom(sys.argv[1], Path(sys.argv[2]))
    for kind, p in result.files.items():
        print(f"{kind}: {p} ({len(components(p))} components)")
    for n in result.notes:
        print(n)
