"""Write or check the hash-locked requirements of every variant, layer and platform (images/locks/).

    imagectl lock                       # lock every variant whose wheel index answers from here
    imagectl lock --variant cu124       # just one (an unreachable index is then an error)
    imagectl lock --check               # exit 1 naming every stale or malformed lock; missing ones listed
    imagectl lock --check --strict      # missing locks fail too (CI where every index is reachable)

Layers are locked bottom-up (base, torch, data): each is resolved by uv for the image's Python and
platform with the locks below as constraints, and the file lists only what the layer adds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from imagectl.locks import (
    LOCK_ROOT,
    UV_PLATFORM,
    LockError,
    LockStatus,
    check_lock,
    check_tools_lock,
    inputs_for,
    layer_requirements,
    lock_path,
    normalize,
    parse,
    render,
    tools_inputs,
    tools_lock_path,
    upper_pins,
)
from imagectl.matrix import LAYERS, REPO_ROOT, Matrix, Variant, load_matrix
from imagectl.tools import ToolError, uv_binary

UV_TIMEOUT = 900  # one resolution; torch's CUDA wheels are large, but uv only reads their metadata


@dataclass(frozen=True)
class Unreachable:
    variant: str
    index_url: str
    why: str


def index_reachable(url: str, timeout: float = 15) -> str | None:
    """None when ``url`` (a PEP 503 simple index) answers, else why not."""
    if not url:
        return None
    probe = url.rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as resp:
            return None if resp.status < 400 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 and exc.code != 403 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return str(getattr(exc, "reason", exc))


def _uv_compile(uv: Path, reqs: list[str], constraints: list[Path], extra_constraints: list[str], index_url: str,
                python: str, platform: str) -> str:
    with tempfile.TemporaryDirectory(prefix="imagectl-lock-") as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(reqs) + "\n")
        cmd = [str(uv), "pip", "compile", str(src), "--quiet", "--no-header", "--generate-hashes", "--no-build",
               "--python-version", python, "--python-platform", UV_PLATFORM[platform],
               "--custom-compile-command", "imagectl lock"]
        for c in constraints:
            cmd += ["--constraint", str(c)]
        if extra_constraints:
            extra = Path(tmp) / "upper.txt"
            extra.write_text("\n".join(extra_constraints) + "\n")
            cmd += ["--constraint", str(extra)]
        if index_url:
            # the variant's index next to uv's default one; the best match across both (the variant's
            # index also mirrors common packages, often older ones the pins would not allow)
            cmd += ["--index", index_url, "--index-strategy", "unsafe-best-match"]
        env = {**os.environ, "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never", "UV_SYSTEM_CERTS": "1"}
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=UV_TIMEOUT, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise LockError(f"uv did not finish resolving within {UV_TIMEOUT} s (index {index_url or 'default'} "
                            "slow or unreachable?)") from None
        if res.returncode != 0:
            raise LockError(f"uv could not resolve {', '.join(reqs[:4])}{', ...' if len(reqs) > 4 else ''}:\n"
                            f"{res.stderr.strip()[-3000:]}")
        # uv's `# via` notes name our temporary files (relative to cwd): name what they stand for
        return (res.stdout.replace("-r requirements.in", "images/matrix.toml")
                .replace("-c upper.txt", "an upper layer's pin in images/matrix.toml"))


def _strip(body: str, drop: set[str]) -> str:
    """uv's output without the entries (and their notes) of packages locked by a lower layer."""
    out: list[str] = []
    skipping = False
    for line in body.splitlines():
        if line and not line.startswith((" ", "#")):
            name = normalize(line.split("==")[0].strip())
            skipping = name in drop
        if not skipping:
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"


def lock_variant(matrix: Matrix, variant: Variant, platform: str, uv: Path, root: Path = LOCK_ROOT,
                 log: object = print) -> list[Path]:
    """Lock base, torch, data of one variant for one platform; returns the files written."""
    written = []
    for layer in matrix.layers_of(variant):
        t0 = time.monotonic()
        reqs, index = layer_requirements(matrix, variant, layer, platform)
        lowers = [lock_path(variant.name, lo, platform, root) for lo in LAYERS[: LAYERS.index(layer)]]  # all exist: bottom up
        lower_names = {n for p in lowers for n in parse(p).pins}
        ups = upper_pins(matrix, variant, layer, platform)
        applied: list[str] = []
        # Fixed point: an upper layer's pin applies where this layer's resolution holds the package.
        for _ in range(4):
            body = _uv_compile(uv, reqs, lowers, applied, index, matrix.image.python, platform)
            names = {normalize(ln.split("==")[0]) for ln in body.splitlines() if ln and not ln.startswith((" ", "#"))}
            want = sorted(ups[n] for n in names if n in ups)
            if want == applied:
                break
            applied = want
        else:
            raise LockError(f"{variant.name}/{layer}: the upper layers' pins did not settle (uv keeps changing its "
                            "resolution); report this")
        body = _strip(body, lower_names)
        path = lock_path(variant.name, layer, platform, root)
        present = {normalize(ln.split("==")[0]) for ln in body.splitlines() if ln and not ln.startswith((" ", "#"))}
        inputs = inputs_for(matrix, variant, layer, platform, root, present=present)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render(inputs, body))
        os.replace(tmp, path)
        written.append(path)
        n = len(parse(path).pins)
        log(f"locked {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}: "  # type: ignore[operator]
            f"{n} distributions in {time.monotonic() - t0:.1f} s")
    return written


def lock_tools(matrix: Matrix, platform: str, uv: Path, root: Path = LOCK_ROOT, log: object = print) -> Path:
    """The build's own uv (the Dockerfile's `tools` stage), hash-locked like a layer."""
    inputs = tools_inputs(matrix, platform)
    body = _uv_compile(uv, list(inputs.requirements), [], [], "", matrix.image.python, platform)
    path = tools_lock_path(platform, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(inputs, body))
    log(f"locked {_rel(path)}")  # type: ignore[operator]
    return path


def platforms_of(variants: list[Variant]) -> list[str]:
    return list(dict.fromkeys(p for v in variants for p in v.platforms))


def check_all(matrix: Matrix, variants: list[Variant], root: Path = LOCK_ROOT,
              platforms: list[str] | None = None) -> list[LockStatus]:
    """Every lock of ``variants`` (only on ``platforms`` when given: a runner checks its own platform)."""
    def wanted(p: str) -> bool:
        return platforms is None or p in platforms

    return ([check_tools_lock(matrix, p, root) for p in platforms_of(variants) if wanted(p)]
            + [check_lock(matrix, v, layer, p, root) for v in variants for p in v.platforms if wanted(p)
               for layer in matrix.layers_of(v)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", action="append", default=None, help="variant to lock (repeatable; default: all)")
    parser.add_argument("--platform", action="append", default=None,
                        help="platform to lock (repeatable; default: the variant's platforms from the matrix)")
    parser.add_argument("--check", action="store_true",
                        help="resolve nothing: exit 1 if a lock is stale or malformed (missing ones are listed)")
    parser.add_argument("--strict", action="store_true", help="with --check: a missing lock fails too")
    parser.add_argument("--locks-dir", type=Path, default=LOCK_ROOT, help=argparse.SUPPRESS)


def _rel(p: Path) -> str:
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def run(args: argparse.Namespace) -> int:
    """Write (or check) hash-locked requirements per variant, layer and platform from the matrix."""
    matrix = load_matrix(args.matrix)
    explicit = bool(args.variant)
    variants = [matrix.variant(n) for arg in (args.variant or list(matrix.variants)) for n in arg.split(",") if n]
    if args.check:
        return _check(matrix, variants, args)
    try:
        uv = uv_binary(matrix)
    except ToolError as exc:
        print(f"imagectl lock: error: {exc}", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    failed = 0
    skipped: list[Unreachable] = []
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    for platform in args.platform or platforms_of(variants):
        try:
            lock_tools(matrix, platform, uv, args.locks_dir, log=log)
        except LockError as exc:
            print(f"imagectl lock: error: build tools ({platform}): {exc}", file=sys.stderr)
            failed += 1
    for v in variants:
        why = index_reachable(v.index_url)
        if why is not None:
            skipped.append(Unreachable(v.name, v.index_url, why))
            continue
        for platform in args.platform or list(v.platforms):
            if platform not in v.platforms:
                print(f"imagectl lock: error: {v.name} is not built for {platform} (its platforms: "
                      f"{', '.join(v.platforms)})", file=sys.stderr)
                return 2
            try:
                lock_variant(matrix, v, platform, uv, args.locks_dir, log=log)
            except LockError as exc:
                print(f"imagectl lock: error: {v.name} ({platform}): {exc}", file=sys.stderr)
                failed += 1
    for s in skipped:
        print(f"imagectl lock: {s.variant} not locked here: its wheel index {s.index_url} does not answer ({s.why}). "
              f"Lock it where the index is reachable: imagectl lock --variant {s.variant} (the workflow's build job "
              "does, before it builds)", file=sys.stderr)
    print(f"imagectl lock: done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    if failed or (explicit and skipped):
        return 1
    return 0


def _check(matrix: Matrix, variants: list[Variant], args: argparse.Namespace) -> int:
    statuses = check_all(matrix, variants, args.locks_dir, args.platform)
    bad = [s for s in statuses if s.state in ("stale", "malformed")]
    missing = [s for s in statuses if s.state == "missing"]
    for s in statuses:
        detail = f": {s.detail}" if s.detail else ""
        if s.state == "missing" and s.variant != "build-tools":
            v = matrix.variant(s.variant)
            detail = (f": not locked (its wheel index {v.index_url} is only reachable where the workflow runs; "
                      f"there: imagectl lock --variant {s.variant}; a build without a lock needs --unlocked)"
                      if v.index_url else f": run `imagectl lock --variant {s.variant}`")
        print(f"{s.state:9} {_rel(s.path)}{detail}")
    for s in bad:
        print(f"imagectl lock --check: {_rel(s.path)} is {s.state}: {s.detail}. Fix: `make lock` "
              f"(imagectl lock --variant {s.variant}) and commit the result", file=sys.stderr)
    if bad or (args.strict and missing):
        return 1
    ok = len(statuses) - len(bad) - len(missing)
    print(f"imagectl lock --check: {ok} lock(s) current, {len(missing)} missing", file=sys.stderr)
    return 0
