"""Print the CI job matrix (JSON for GitHub Actions' strategy.matrix) generated from images/matrix.toml.

    imagectl ci-matrix                      # {"include": [{"variant": "cu118", ...}, ...]}
    imagectl ci-matrix --github-output      # also appends `matrix=<json>` to $GITHUB_OUTPUT

The workflow feeds it to `strategy.matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}`, so adding a
variant to the matrix adds its CI jobs; no list of variants is written in the workflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from imagectl.matrix import Matrix, load_matrix

# Runner labels per platform: hosted runners build and smoke on CPU, self-hosted GPU runners of the
# same architecture run the GPU suite and release (an image is released from the machine it passed on).
RUNNERS = {"linux/amd64": ("ubuntu-24.04", '["self-hosted","linux","x64","gpu"]'),
           "linux/arm64": ("ubuntu-24.04-arm", '["self-hosted","linux","arm64","gpu"]')}


def build(matrix: Matrix, only: list[str] | None = None) -> dict[str, Any]:
    """One job per variant and platform."""
    include = []
    for v in (matrix.variant(n) for n in (only or list(matrix.variants))):
        refs = {layer: matrix.image_refs(v, layer)[0] for layer in ("data", "torch", "base")}
        for platform in v.platforms:
            runner, gpu_runner = RUNNERS[platform]
            include.append({
                "variant": v.name,
                "platform": platform,
                "arch": platform.split("/")[1],
                "runner": runner,
                "gpu_runner": gpu_runner,  # JSON: fromJSON() in runs-on
                "cuda": v.cuda,
                "default": v.name == matrix.default_variant,
                "image": refs["data"],
                "torch_image": refs["torch"],
                "base_image": refs["base"],
                "bake_group": v.name,  # docker buildx bake group: every target of the variant (devel included)
                # several platforms: each releases its own -<arch> tags, `imagectl manifest` joins them
                "tag_suffix": f"-{platform.split('/')[1]}" if len(v.platforms) > 1 else "",
                "multi_platform": len(v.platforms) > 1,
            })
    return {"include": include}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", action="append", default=None, help="only these variants (repeatable)")
    parser.add_argument("--github-output", action="store_true",
                        help="also append matrix=<json> to the file named by $GITHUB_OUTPUT")


def run(args: argparse.Namespace) -> int:
    """Print the CI job matrix (JSON) generated from images/matrix.toml."""
    text = json.dumps(build(load_matrix(args.matrix), args.variant), separators=(",", ":"))
    print(text)
    if args.github_output:
        target = os.environ.get("GITHUB_OUTPUT")
        if not target:
            print("imagectl ci-matrix: --github-output needs $GITHUB_OUTPUT (set by GitHub Actions)", file=sys.stderr)
            return 2
        with open(target, "a") as fh:
            fh.write(f"matrix={text}\n")
    return 0
