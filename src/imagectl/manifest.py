"""Join the per-architecture releases of a multi-platform variant into multi-platform tags.

    imagectl manifest --variant cu126 --registry ghcr.io/ORG [--dry-run]

Each architecture is released on its own machine with `imagectl release --tag-suffix -<arch>`
(gated there, on the image that passed there). This command then points every tag at a manifest
list of exactly those per-architecture digests; it refuses when any architecture's tag is missing
or is not the platform it claims to be, so a multi-platform tag never covers an unreleased image.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass

from imagectl.docker import DockerError, require_engine
from imagectl.matrix import load_matrix
from imagectl.push import EXIT_REFUSED, check_destination
from imagectl.refs import image_ref
from imagectl.registry import is_insecure_loopback
from imagectl.release_tags import GPU_UNVERIFIED


@dataclass(frozen=True)
class Member:
    ref: str  # REGISTRY/REPO:TAG-arch
    digest: str
    platform: str


def _inspect(ref: str, docker: str) -> dict[str, object] | None:
    cmd = [docker, "manifest", "inspect", "--verbose", *(["--insecure"] if is_insecure_loopback(ref) else []), ref]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        return None
    data = json.loads(res.stdout)
    return data if isinstance(data, dict) else None


def member(ref: str, platform: str, docker: str = "docker") -> Member:
    data = _inspect(ref, docker)
    if data is None:
        raise DockerError(f"{ref} is not in the registry: release that architecture first "
                          f"(imagectl release --tag-suffix -{platform.split('/')[1]} on a {platform} machine)")
    desc = data.get("Descriptor") or {}
    got = desc.get("platform") or {}
    have = f"{got.get('os', '?')}/{got.get('architecture', '?')}"
    if got and have != platform:
        raise DockerError(f"{ref} is a {have} image, not {platform}")
    return Member(ref, str(desc.get("digest", "")), platform)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True)
    parser.add_argument("--registry", required=True, help="HOST[:PORT][/NAMESPACE] (no scheme)")
    parser.add_argument("--repository", default=None)
    parser.add_argument("--gpu-unverified", action="store_true", help="join the -gpu-unverified tags")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--docker", default="docker")


def run(args: argparse.Namespace) -> int:
    """Multi-platform tags from the per-architecture releases of one variant."""
    matrix = load_matrix(args.matrix)
    v = matrix.variant(args.variant)
    repo = args.repository or matrix.image.name
    try:
        reg = check_destination(args.registry, repo)
    except Exception as exc:  # GateRefused: a bad reference
        print(f"imagectl manifest: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if len(v.platforms) < 2:
        print(f"imagectl manifest: {v.name} is built for {v.platforms[0]} only: nothing to join", file=sys.stderr)
        return 0
    suffix = GPU_UNVERIFIED if args.gpu_unverified else ""
    try:
        require_engine()
        for layer in matrix.layers_of(v):
            for tag in matrix.tags_for(v, layer):
                target = image_ref(reg, repo, tag + suffix)
                parts = [member(image_ref(reg, repo, f"{tag}{suffix}-{p.split('/')[1]}"), p, args.docker)
                         for p in v.platforms]
                cmd = [args.docker, "buildx", "imagetools", "create", "-t", target, *(m.ref for m in parts)]
                print(f"{target} <- {', '.join(f'{m.platform} {m.digest[:19]}' for m in parts)}")
                if not args.dry_run:
                    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                    if res.returncode != 0:
                        raise DockerError(f"{' '.join(cmd)} failed: {res.stderr.strip()[-500:]}")
    except DockerError as exc:
        print(f"imagectl manifest: error: {exc}", file=sys.stderr)
        return 1
    return 0
