"""Build images with docker buildx bake from the matrix (a variant, a layer, or everything)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imagectl.bake import GENERATED, BuildContext, bake_command, target_name, write_plan
from imagectl.docker import DockerError, image_exists, inspect_image, require_buildx, try_pull
from imagectl.matrix import LAYERS, REPO_ROOT, Matrix, load_matrix

LOCAL_OS_IMAGE = "pytorch-cuda-os:trixie"  # what `make base-os` creates


@dataclass(frozen=True)
class BuildRequest:
    variants: tuple[str, ...]  # empty: the default variant; ("all",): every variant
    layer: str = "data"
    os_image: str | None = None
    python: str | None = None
    ca_bundle: Path | None = None
    registry: str = ""
    progress: str = "plain"
    dry_run: bool = False
    unlocked: bool = False  # resolve at build time instead of installing the locks (labelled locked=false)
    platform: str | None = None  # None: this machine's (the docker driver builds and loads one platform)
    no_cache: bool = False  # rebuild every step (reproducibility checks: two such builds, then `imagectl diff`)


@dataclass(frozen=True)
class BuildResult:
    targets: tuple[str, ...]
    images: dict[str, str]  # tag -> image id
    seconds: float


def resolve_targets(matrix: Matrix, req: BuildRequest) -> list[str]:
    """Bake targets for the request. Unknown variants fail here, before any Docker work."""
    if req.layer not in (*LAYERS, "all"):
        raise SystemExit(f"imagectl: error: unknown TARGET '{req.layer}': choose one of {', '.join(LAYERS)}, all")
    names = list(matrix.variants) if req.variants == ("all",) else list(req.variants or (matrix.default_variant,))
    targets = []
    for name in names:
        v = matrix.variant(name)
        if req.layer != "all":
            matrix.require_layer(v, req.layer)  # e.g. TARGET=devel of cu118: says why there is none
        targets += [target_name(v, layer) for layer in (matrix.layers_of(v) if req.layer == "all" else (req.layer,))]
    return targets


def ensure_os_image(ref: str) -> None:
    """The OS base must be local or pullable; otherwise say how to make one without a registry."""
    if image_exists(ref):
        return
    print(f"imagectl: OS image {ref} is not local; trying to pull it ...", file=sys.stderr)
    ok, err = try_pull(ref)
    if not ok:
        raise DockerError(
            f"cannot pull the OS image '{ref}' ({err.splitlines()[-1] if err else 'unknown error'}). "
            f"On a machine without registry access, build a local base with `make base-os` "
            f"(debootstrap + docker import, creates {LOCAL_OS_IMAGE}) and then "
            f"`make build OS_IMAGE={LOCAL_OS_IMAGE}`."
        )


def native_platform() -> str:
    import platform

    return {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64",
            "arm64": "linux/arm64"}.get(platform.machine().lower(), f"linux/{platform.machine().lower()}")


def _can_emulate(platform: str) -> bool:
    arch = {"linux/arm64": "aarch64", "linux/amd64": "x86_64"}.get(platform, platform.split("/")[-1])
    return any(Path("/proc/sys/fs/binfmt_misc").glob(f"qemu-{arch}*"))


def require_locks(matrix: Matrix, targets: list[str], ctx: BuildContext) -> None:
    """A locked build needs a current lock for every layer it builds; say which and how to fix it."""
    from imagectl.locks import variant_locked

    for name in dict.fromkeys(t.rsplit("-", 1)[0] for t in targets):
        if name in ctx.locked:
            continue
        v = matrix.variant(name)
        if ctx.python != matrix.image.python:
            raise DockerError(f"the locks are for Python {matrix.image.python}, this build asks for {ctx.python}: "
                              "build with --unlocked (labelled io.pytorch-cuda.locked=false)")
        bad = [s for p in v.platforms for s in variant_locked(matrix, v, p) if s.state != "ok"]
        states = "; ".join(f"{s.path.name} {s.state}{': ' + s.detail if s.detail else ''}" for s in bad)
        how = (f"lock it where its wheel index {v.index_url} is reachable (imagectl lock --variant {name})"
               if v.index_url else f"run `make lock VARIANT={name}` (imagectl lock --variant {name})")
        raise DockerError(f"variant {name} has no current lock ({states}). Fix: {how} and commit "
                          "images/locks/, or build without locks with --unlocked (make build UNLOCKED=1; the "
                          "image is labelled io.pytorch-cuda.locked=false)")


def build(matrix: Matrix, req: BuildRequest) -> BuildResult:
    targets = resolve_targets(matrix, req)
    ctx = BuildContext.detect(matrix, os_image=req.os_image, python=req.python, registry=req.registry,
                              unlocked=req.unlocked, platform=req.platform or native_platform())
    if not req.unlocked:
        require_locks(matrix, targets, ctx)
    platform = req.platform or native_platform()
    for name in dict.fromkeys(t.rsplit("-", 1)[0] for t in targets):
        v = matrix.variant(name)
        if platform not in v.platforms:
            raise DockerError(f"variant {name} is built for {', '.join(v.platforms)}, not {platform} (this machine's "
                              f"platform unless --platform says otherwise); build it on such a machine")
    if platform != native_platform() and not req.dry_run and not _can_emulate(platform):
        raise DockerError(f"cannot build {platform} on this {native_platform()} machine: the engine has no emulator "
                          f"for it (binfmt_misc/qemu). Build it on a {platform} machine (the workflow uses an "
                          f"arm64 runner), or see the plan with --dry-run / `imagectl bake-plan`")
    plan = write_plan(matrix, ctx, GENERATED)
    # the engine's own driver builds and loads one platform at a time: this one
    cmd = bake_command(plan, targets, "--progress", req.progress, "--set", f"*.platform={platform}",
                       *(["--no-cache"] if req.no_cache else []))
    env = dict(os.environ)
    if req.ca_bundle:
        if not req.ca_bundle.is_file():
            raise DockerError(f"CA bundle {req.ca_bundle} does not exist (pass the proxy's CA file)")
        env["CA_BUNDLE"] = str(req.ca_bundle.resolve())
    if req.dry_run:
        print(" ".join(cmd))
        return BuildResult(tuple(targets), {}, 0.0)
    require_buildx()
    ensure_os_image(ctx.os_image)
    how = "UNLOCKED: resolved at build time" if req.unlocked else "from images/locks"
    print(f"imagectl: building {', '.join(targets)} (OS {ctx.os_image}, Python {ctx.python}, {how})", file=sys.stderr)
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env)
    seconds = time.monotonic() - start
    if res.returncode != 0:
        raise DockerError(f"docker buildx bake failed (exit {res.returncode}) after {seconds:.0f} s; "
                          "the build log above names the failing step")
    images: dict[str, str] = {}
    for t in targets:
        variant, layer = t.rsplit("-", 1)
        for ref in matrix.image_refs(matrix.variant(variant), layer, req.registry):
            images[ref] = inspect_image(ref).id
    return BuildResult(tuple(targets), images, seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", action="append", default=[],
                        help="variant to build (repeatable; 'all' for every variant; default: the matrix default)")
    parser.add_argument("--target", default="data", choices=[*LAYERS, "all"],
                        help="layer to build (default: data; all = every layer of the variant, devel included, in one bake run)")
    parser.add_argument("--os-image", default=os.environ.get("OS_IMAGE") or None,
                        help=f"OS base image (default: the matrix's; {LOCAL_OS_IMAGE} after `make base-os`)")
    parser.add_argument("--python", default=None, help="override the matrix's Python version (must match the OS)")
    parser.add_argument("--ca-bundle", type=Path, default=os.environ.get("CA_BUNDLE") or None,
                        help="CA bundle of a TLS-inspecting proxy, passed as a BuildKit secret (never a layer)")
    parser.add_argument("--registry", default="", help="prefix the tags with this registry")
    parser.add_argument("--progress", default="plain", choices=["plain", "tty", "auto", "quiet"])
    parser.add_argument("--dry-run", action="store_true", help="print the bake command and exit")
    parser.add_argument("--platform", default=None, help="linux/amd64 or linux/arm64 (default: this machine's)")
    parser.add_argument("--unlocked", action="store_true",
                        help="resolve the matrix's pins at build time instead of installing the hash locks "
                             "(for variants that cannot be locked here; labelled io.pytorch-cuda.locked=false)")
    parser.add_argument("--no-cache", action="store_true",
                        help="rebuild every step, no build cache (reproducibility: build twice, then imagectl diff)")


def run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    variants = tuple(v for arg in args.variant for v in arg.split(",") if v)
    req = BuildRequest(variants=variants, layer=args.target, os_image=args.os_image, python=args.python,
                       ca_bundle=args.ca_bundle, registry=args.registry, progress=args.progress,
                       dry_run=args.dry_run, unlocked=args.unlocked, platform=args.platform,
                       no_cache=args.no_cache)
    try:
        result = build(matrix, req)
    except DockerError as exc:
        print(f"imagectl: error: {exc}", file=sys.stderr)
        return 1
    for ref, image_id in result.images.items():
        print(f"{ref}  {image_id}")
    if not req.dry_run:
        print(f"imagectl: built {len(result.targets)} target(s) in {result.seconds:.0f} s", file=sys.stderr)
    return 0
