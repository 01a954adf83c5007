"""``zarrloader`` command line: a thin dispatcher; each subcommand is a module of its own
(``<command>_cli``: ``add_arguments(parser)`` and ``run(namespace) -> exit code``).

Exit codes (documented in docs/zarrloader.md, "Failure behaviour"):

    0    success
    1    internal error (a bug): one line, the traceback with --debug
    2    bad arguments, or an error with its cause and fix (storage unreachable or timed out, access
         denied, not found, destination refused, corrupt chunk, disk full)
    130  interrupted (Ctrl-C / SIGINT): what was finished is kept, a rerun of sync/convert resumes

No traceback is printed unless ``--debug`` is given (anywhere on the command line).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings
from collections.abc import Sequence

from .errors import ZarrLoaderError

COMMANDS = {
    "inspect": ("inspect_cli", "shape, chunks, codecs, object count and read-cost advice for a store"),
    "sync": ("sync_cli", "copy a subset of samples (only the chunks it touches), verified, atomically, resumably"),
    "convert": ("convert_cli", "NetCDF4/HDF5 -> Zarr v3, streamed with bounded memory, atomic, resumable"),
    "bench": ("bench_cli", "raw GET clients vs per-sample vs zarr default vs our loader, same server, same run"),
}

EXIT_OK, EXIT_INTERNAL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zarrloader", description="Zarr on object storage -> PyTorch, fast.",
                                epilog="exit codes: 0 ok, 1 internal error, 2 error with cause and fix (or bad "
                                       "arguments), 130 interrupted")
    p.add_argument("--debug", action="store_true", help="print tracebacks (anywhere on the command line)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __package__)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(cmd)
        cmd.set_defaults(_run=mod.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    ns = build_parser().parse_args(args)
    name = f"zarrloader {ns.command}"
    # zarr warns on every open of a v3 store with consolidated metadata (which xarray writes): nothing
    # a user of the command can act on
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    try:
        return int(ns._run(ns) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{name}: interrupted; finished work is kept (rerun the same command to resume a sync or convert)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ZarrLoaderError, ValueError, OSError) as exc:
        if debug:
            traceback.print_exc()
        text = str(exc) if isinstance(exc, ZarrLoaderError | ValueError) else f"{type(exc).__name__}: {exc}"
        print(f"{name}: error: {text}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{name}: internal error: {type(exc).__name__}: {exc}. Fix: rerun with --debug for the traceback "
              "and report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
