"""imagectl command line: a thin dispatcher over modules that each implement one command.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; its docstring's
first line is the command's help. Modules are imported only when their command runs, so a
broken optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from imagectl.matrix import MatrixError

COMMANDS: dict[str, str] = {
    "variants": "imagectl.variants_cmd",
    "bake-plan": "imagectl.bake",
    "lock": "imagectl.lock_cmd",
    "build": "imagectl.build",
    "smoke": "imagectl.smoke",
    "push": "imagectl.push",
    "release": "imagectl.release",
    "manifest": "imagectl.manifest",
    "diff": "imagectl.diff",
    "size": "imagectl.size",
    "verify": "imagectl.verify",
    "ci-matrix": "imagectl.ci_matrix",
}


def _help(module_name: str) -> str:
    try:
        doc = importlib.import_module(module_name).__doc__ or ""
    except ImportError:
        return "(unavailable in this installation)"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagectl", description="Build, verify and publish pytorch-cuda images.")
    parser.add_argument("--matrix", default=None, help="path of the variant matrix (default: images/matrix.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        p = sub.add_parser(name, help=_help(module_name), description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MatrixError as exc:
        print(f"imagectl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imagectl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
