"""What an image holds, read from the image itself: its Python distributions, its Debian packages,
and the files of every layer (from `docker save`, hashed as they stream by).

Nothing of the image runs except one `python -c` probe for the Python distributions (the image's own
interpreter answers what its environment contains); Debian packages come from the dpkg status file
copied out of a created, never started container.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from imagectl.docker import DockerError

_PY_PROBE = """
import importlib.metadata as md, json
print(json.dumps({d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}))
"""
_PYTHONS = ("/opt/venv/bin/python", "/usr/local/bin/python3", "/usr/bin/python3")


def _docker(docker: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise DockerError(f"`{docker}` not found: install the Docker CLI") from exc
    except subprocess.TimeoutExpired:
        raise DockerError(f"`{docker} {' '.join(args[:2])}` did not finish within {timeout:.0f} s") from None


def python_distributions(image: str, docker: str = "docker") -> dict[str, str]:
    """Distribution name (normalised lower case) -> version, as the image's interpreter sees them."""
    errors = []
    for py in _PYTHONS:
        res = _docker(docker, "run", "--rm", "--network", "none", "--entrypoint", py, image, "-c", _PY_PROBE)
        if res.returncode == 0:
            raw = json.loads(res.stdout.strip().splitlines()[-1])
            return {k.lower().replace("_", "-"): v for k, v in raw.items()}
        errors.append(f"{py}: {res.stderr.strip()[-200:]}")
    raise DockerError(f"no Python answered in {image}: {'; '.join(errors)}")


def debian_packages(image: str, docker: str = "docker") -> dict[str, str]:
    """Package (with :arch for foreign ones) -> version from the image's dpkg status; {} without dpkg."""
    created = _docker(docker, "create", image, "true")
    if created.returncode != 0:
        raise DockerError(f"docker create {image} failed: {created.stderr.strip()}")
    cid = created.stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="imagectl-dpkg-") as tmp:
            out = Path(tmp) / "status"
            res = _docker(docker, "cp", f"{cid}:/var/lib/dpkg/status", str(out))
            if res.returncode != 0:
                return {}
            return parse_dpkg_status(out.read_text(errors="replace"))
    finally:
        _docker(docker, "rm", cid)


def parse_dpkg_status(text: str) -> dict[str, str]:
    pkgs: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        if "installed" not in fields.get("Status", "").split():
            continue
        name = fields.get("Package")
        if name:
            arch = fields.get("Architecture", "")
            pkgs[name if arch in ("all", "", "amd64", "arm64") else f"{name}:{arch}"] = fields.get("Version", "")
    return pkgs


@dataclass(frozen=True)
class FileEntry:
    kind: str  # "f" file, "d" dir, "l" symlink, "h" hardlink, "o" other
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int
    digest: str  # sha256 of a file's bytes, the target of a link, "" otherwise


@dataclass
class Layer:
    diff_id: str  # sha256 of the uncompressed layer tar = what RootFS.Layers lists
    files: dict[str, FileEntry] = field(default_factory=dict)


class _Tee:
    """A read-only file object that hashes everything read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _entries(tar: tarfile.TarFile) -> Iterator[tuple[str, FileEntry]]:
    for m in tar:
        kind = "f" if m.isfile() else "d" if m.isdir() else "l" if m.issym() else "h" if m.islnk() else "o"
        digest = ""
        if m.isfile():
            f = tar.extractfile(m)
            h = hashlib.sha256()
            if f is not None:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
            digest = h.hexdigest()
        elif m.issym() or m.islnk():
            digest = m.linkname
        yield m.name.removeprefix("./"), FileEntry(kind, m.size, m.mode, m.uid, m.gid, int(m.mtime), digest)


@dataclass
class SavedImage:
    layers: dict[str, Layer]  # diff_id -> Layer
    steps: list[str]  # the build step (history `created_by`) of every filesystem layer, oldest first


def saved_image(image: str, docker: str = "docker", progress: Callable[[str], Any] | None = None) -> SavedImage:
    """Every layer's files (metadata and content hash) and the step that made it, from `docker save`."""
    proc = subprocess.Popen([docker, "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    out: dict[str, Layer] = {}
    steps: list[str] = []
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
            for member in outer:
                if member.isfile() and member.name.endswith(".json") and "/" not in member.name \
                        and member.name != "manifest.json":
                    f = outer.extractfile(member)
                    config = json.loads(f.read()) if f else {}
                    steps = [h.get("created_by", "") for h in config.get("history") or [] if not h.get("empty_layer")]
                    continue
                if not member.name.endswith("layer.tar") or not member.isfile():
                    continue
                raw = outer.extractfile(member)
                if raw is None:
                    continue
                tee = _Tee(raw)
                layer = Layer("")
                with tarfile.open(fileobj=tee, mode="r|") as inner:  # type: ignore[call-overload]
                    for name, entry in _entries(inner):
                        layer.files[name] = entry
                tee.drain()  # tar end padding: the digest covers the whole layer tar
                layer.diff_id = "sha256:" + tee.sha.hexdigest()
                out[layer.diff_id] = layer
                if progress:
                    progress(f"  read layer {layer.diff_id[:19]} ({len(layer.files)} entries)")
    finally:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        code = proc.wait()
    if code != 0:
        raise DockerError(f"docker save {image} failed: {err.strip()[-500:]}")
    return SavedImage(out, steps)
