"""Print the resolved buildx bake plan; render it (targets per variant x layer, groups) from the matrix."""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagectl.matrix import LAYERS, REPO_ROOT, Matrix, Variant, load_matrix

BAKE_HCL = REPO_ROOT / "docker" / "docker-bake.hcl"
# Relative: generated files go under the current directory's build/, whichever matrix is used
GENERATED = Path("build") / "bake" / "matrix.bake.json"
LABEL_NS = "io.pytorch-cuda"


@dataclass(frozen=True)
class BuildContext:
    """Per-build facts that are not pins: where the OS comes from, the commit, the date."""

    os_image: str
    python: str
    git_sha: str
    created: str
    registry: str = ""
    # variants whose locks are current for every platform: they build from them; the others are
    # rendered unlocked (io.pytorch-cuda.locked=false), which `imagectl build` refuses without --unlocked
    locked: frozenset[str] = frozenset()
    platform: str | None = None  # the platform an unlocked build resolves for (locked: the lock's)

    @classmethod
    def detect(cls, matrix: Matrix, os_image: str | None = None, python: str | None = None,
               registry: str = "", unlocked: bool = False, platform: str | None = None) -> BuildContext:
        python = python or matrix.image.python
        return cls(
            platform=platform,
            os_image=os_image or matrix.image.os_image,
            python=python,
            git_sha=git_sha(),
            created=commit_date(),
            registry=registry,
            locked=frozenset() if unlocked or python != matrix.image.python else lockable(matrix),
        )


def lockable(matrix: Matrix) -> frozenset[str]:
    """Variants with a current lock for every layer and platform."""
    from imagectl.locks import check_tools_lock, variant_locked

    return frozenset(v.name for v in matrix.variants.values()
                     if all(s.state == "ok" for p in v.platforms for s in variant_locked(matrix, v, p))
                     and all(check_tools_lock(matrix, p).state == "ok" for p in v.platforms))


def commit_date() -> str:
    """The HEAD commit's date: a rebuild of the same commit from cache gives the same image ID."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%ct"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return datetime.fromtimestamp(int(out), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OSError, ValueError, subprocess.CalledProcessError):
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_sha(short: bool = False) -> str:
    cmd = ["git", "-C", str(REPO_ROOT), "rev-parse", *(["--short=7"] if short else []), "HEAD"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def target_name(variant: Variant, layer: str) -> str:
    return f"{variant.name}-{layer}"


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def build_args(matrix: Matrix, variant: Variant, ctx: BuildContext) -> dict[str, str]:
    """Every build arg of every stage. Each stage declares only the ones it uses."""
    stamp = {"git_sha": ctx.git_sha, "build_date": ctx.created, "python": ctx.python, "os_image": ctx.os_image}
    data_info = matrix.build_info(variant, "data") | stamp
    devel = {}
    if "devel" in matrix.layers_of(variant):
        devel = {"DEVEL_REQUIREMENTS": " ".join(variant.devel_requirements()),
                 "DEVEL_DEBS": " ".join(variant.devel_packages()), "DEVEL_ARCH_LIST": variant.devel_arch_list,
                 "BUILD_INFO_DEVEL": _json(matrix.build_info(variant, "devel") | stamp)}
    return devel | {
        "OS_IMAGE": ctx.os_image,
        "PYTHON_VERSION": ctx.python,
        "USER_NAME": matrix.image.user,
        "USER_UID": str(matrix.image.uid),
        "NVIDIA_REQUIRE_CUDA": variant.nvidia_require_cuda,
        "TORCH_INDEX_URL": variant.index_url,
        "CUDA_WHEELS": " ".join(variant.wheel_requirements()),
        "TORCH_REQUIREMENTS": " ".join(matrix.torch_requirements(variant, ctx.platform)),
        "DATA_REQUIREMENTS": " ".join(matrix.data_requirements()),
        # locked builds install images/locks/<variant>/<layer>.<os>-<arch>.txt (--require-hashes,
        # --no-deps); unlocked ones resolve the pins above at build time
        "LOCKED": "true" if variant.name in ctx.locked else "false",
        "LOCK_VARIANT": variant.name if variant.name in ctx.locked else ".",
        "BUILD_INFO_BASE": _json(matrix.build_info(variant, "base") | {"python": ctx.python}),
        "BUILD_INFO_TORCH": _json(matrix.build_info(variant, "torch") | {"python": ctx.python}),
        "BUILD_INFO_DATA": _json(data_info),
    }


def labels(matrix: Matrix, variant: Variant, layer: str, ctx: BuildContext) -> dict[str, str]:
    titles = {"base": "CUDA runtime + Python", "torch": "CUDA runtime + PyTorch",
              "data": "CUDA runtime + PyTorch + Zarr/object-storage data stack",
              "devel": "CUDA compiler and headers + PyTorch + data stack (builds CUDA extensions)"}
    out = {
        "org.opencontainers.image.title": f"{matrix.image.name} {variant.name} {layer}",
        "org.opencontainers.image.description": f"{titles[layer]} (CUDA {variant.cuda})",
        "org.opencontainers.image.source": matrix.image.source,
        "org.opencontainers.image.licenses": matrix.image.licenses,
        "org.opencontainers.image.revision": ctx.git_sha,
        "org.opencontainers.image.created": ctx.created,
        "org.opencontainers.image.version": matrix.tags_for(variant, layer)[0],
        "org.opencontainers.image.base.name": ctx.os_image,
        f"{LABEL_NS}.variant": variant.name,
        f"{LABEL_NS}.layer": layer,
        f"{LABEL_NS}.python": ctx.python,
        f"{LABEL_NS}.cuda": variant.cuda,
        f"{LABEL_NS}.cudnn": variant.cudnn,
        f"{LABEL_NS}.nccl": variant.nccl,
        f"{LABEL_NS}.driver-min": variant.driver_min,
        f"{LABEL_NS}.locked": "true" if variant.name in ctx.locked else "false",
    }
    if layer in ("torch", "data", "devel"):
        out.update({f"{LABEL_NS}.{pkg}": ver for pkg, ver in matrix.torch.items()})
    return out


def render(matrix: Matrix, ctx: BuildContext) -> dict[str, Any]:
    """The generated half of the bake definition (JSON), merged with docker/docker-bake.hcl."""
    targets: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for v in matrix.variants.values():
        args = build_args(matrix, v, ctx)
        for layer in matrix.layers_of(v):
            targets[target_name(v, layer)] = {
                "inherits": [f"_{layer}"],
                "platforms": list(v.platforms),
                "args": args,
                "tags": matrix.image_refs(v, layer, ctx.registry),
                "labels": labels(matrix, v, layer, ctx),
            }
        groups[v.name] = {"targets": [target_name(v, layer) for layer in matrix.layers_of(v)]}
    groups["default"] = {"targets": [target_name(matrix.variant(), "data")]}
    groups["all"] = {"targets": list(targets)}
    return {"group": groups, "target": targets}


GENERATED_NOTE = ("GENERATED by `imagectl bake-plan` from images/matrix.toml; do not edit (it is rewritten on "
                  "every build)")


def write_plan(matrix: Matrix, ctx: BuildContext, path: Path = GENERATED) -> Path:
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    # bake reads only "group"/"target"/"variable": the note is a key of its own that bake ignores
    plan = {"//": GENERATED_NOTE, **render(matrix, ctx)}
    path.write_text(json.dumps(plan, indent=2) + "\n")
    return path


def check_targets(matrix: Matrix, plan: dict[str, Any], targets: list[str]) -> None:
    """Every name must be a target or group of the plan; otherwise the matrix's own advice
    (an unsupported variant such as cu121 says why and what to use) instead of buildx's raw error."""
    import difflib

    from imagectl.matrix import MatrixError

    known = set(plan["target"]) | set(plan["group"])
    for t in targets:
        if t in known:
            continue
        name, _, layer = t.rpartition("-")
        if not layer or layer in LAYERS or t in matrix.unsupported:
            matrix.variant(name if layer in LAYERS else t)  # unknown/unsupported variant: the matrix's advice
        hint = difflib.get_close_matches(t, sorted(known), n=1)
        raise MatrixError(f"unknown bake target {t!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}: targets are "
                          f"VARIANT-LAYER (e.g. {matrix.default_variant}-data), groups are all, default and the "
                          "variant names")


def bake_command(plan: Path, targets: list[str], *extra: str) -> list[str]:
    return ["docker", "buildx", "bake", "-f", str(BAKE_HCL), "-f", str(plan), *extra, *targets]


# -- CLI: imagectl bake-plan -----------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", default=["all"], help="bake targets/groups (default: all)")
    parser.add_argument("--write", type=Path, default=GENERATED, help="where to write the generated part")
    parser.add_argument("--os-image", default=None, help="override the matrix's OS image")
    parser.add_argument("--registry", default="", help="prefix tags with this registry")
    parser.add_argument("--generated-only", action="store_true",
                        help="print the generated JSON instead of `docker buildx bake --print`")


def run(args: argparse.Namespace) -> int:
    """Print the resolved bake plan (what `docker buildx bake --print all` gives)."""
    matrix = load_matrix(args.matrix)
    ctx = BuildContext.detect(matrix, os_image=args.os_image, registry=args.registry)
    check_targets(matrix, render(matrix, ctx), args.targets)
    plan = write_plan(matrix, ctx, args.write)
    if args.generated_only:
        print(plan.read_text(), end="")
        return 0
    from imagectl.docker import require_buildx

    require_buildx()
    return subprocess.run(bake_command(plan, args.targets, "--print"), cwd=REPO_ROOT).returncode
