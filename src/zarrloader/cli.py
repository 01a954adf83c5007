"""``zarrloader`` command line: a thin dispatcher; each subcommand is a module of its own
(``<command>_cli``: ``add_arguments(parser)`` and ``run(namespace) -> exit code``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import ZarrLoaderError

COMMANDS = {
    "inspect": ("inspect_cli", "shape, chunks, codecs, object count and read-cost advice for a store"),
    "sync": ("sync_cli", "copy a subset of samples (only the chunks it touches), atomically, resumably"),
    "convert": ("convert_cli", "NetCDF4/HDF5 -> Zarr v3, streamed with bounded memory, atomic, resumable"),
    "bench": ("bench_cli", "raw GET clients vs per-sample vs zarr default vs our loader, same server, same run"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zarrloader", description="Zarr on object storage -> PyTorch, fast.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __package__)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(cmd)
        cmd.set_defaults(_run=mod.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return int(ns._run(ns) or 0)
    except (ZarrLoaderError, ValueError) as exc:
        print(f"zarrloader {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zarrloader {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
