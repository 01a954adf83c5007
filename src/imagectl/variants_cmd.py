"""List the variants of images/matrix.toml (a table, or the whole matrix with --json)."""

from __future__ import annotations

import argparse
import json

from imagectl.matrix import Matrix, load_matrix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the whole validated matrix as JSON")


def format_table(matrix: Matrix) -> str:
    header = ("variant", "cuda", "torch", "cudnn", "nccl", "driver >=", "wheel index", "tags")
    rows = [header]
    for v in matrix.variants.values():
        tags = ", ".join(t for layer in matrix.layers_of(v) for t in matrix.tags_for(v, layer))
        mark = " *" if v.name == matrix.default_variant else ""
        rows.append((v.name + mark, v.cuda, matrix.torch_requirements(v)[0].split("==")[1], v.cudnn, v.nccl,
                     v.driver_min, v.index_url or "(default index)", tags))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"* default variant; Python {matrix.image.python} on {matrix.image.os_image}; "
                 f"not built: {', '.join(matrix.unsupported) or 'none'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    matrix = load_matrix(args.matrix)
    print(json.dumps(matrix.to_json(), indent=2) if args.json else format_table(matrix))
    return 0
