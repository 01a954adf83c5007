"""``zarrloader convert SRC DST``: the argparse layer over :func:`zarrloader.convert.convert`.

Wiring into the ``zarrloader`` CLI is two lines::

    c = sub.add_parser("convert", help="NetCDF4/HDF5 -> Zarr v3, streamed, atomic, resumable")
    convert_cli.add_arguments(c)          # then dispatch: "convert": convert_cli.run

``run`` raises ZarrLoaderError / ValueError for the CLI's usual error handling (exit 2, one line);
``main`` does that handling itself for ``python -m zarrloader.convert_cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import ZarrLoaderError
from .storage import StorageOptions

MiB = 1 << 20


def _size(text: str) -> int:
    """'256k', '16m', '2g', '1048576' -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": 1 << 10, "m": MiB, "g": 1 << 30}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in "kmg" else t) * mult)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512m, 2g)") from exc


def _storage_args(p: argparse.ArgumentParser, prefix: str) -> None:
    # the same flags as `zarrloader sync` (--src-*/--dst-*)
    d = prefix.replace("-", "_")
    g = p.add_argument_group(f"{prefix.rstrip('-')} storage (credentials come from the standard chains)")
    g.add_argument(f"--{prefix}anon", dest=f"{d}anon", action="store_true", help="unsigned requests")
    g.add_argument(f"--{prefix}profile", dest=f"{d}profile", help="AWS profile name")
    g.add_argument(f"--{prefix}endpoint-url", dest=f"{d}endpoint_url", help="S3-compatible endpoint")
    g.add_argument(f"--{prefix}region", dest=f"{d}region")
    g.add_argument(f"--{prefix}requester-pays", dest=f"{d}requester_pays", action="store_true")
    g.add_argument(f"--{prefix}checksum", dest=f"{d}checksum", default="when_required",
                   choices=["when_required", "when_supported"])


def _options(ns: argparse.Namespace, prefix: str) -> StorageOptions:
    def get(k: str) -> object:
        return getattr(ns, f"{prefix}{k}")

    def opt(k: str) -> str | None:
        v = get(k)
        return None if v is None else str(v)

    return StorageOptions(anon=bool(get("anon")), profile=opt("profile"), endpoint_url=opt("endpoint_url"),
                          region=opt("region"), requester_pays=bool(get("requester_pays")),
                          checksum=str(get("checksum")))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``convert`` arguments, on a (sub)parser."""
    from .convert import CODECS, DEFAULT_CHUNK_MB, DEFAULT_MAX_MEMORY, DEFAULT_SHARD_MB

    p.add_argument("src", help="NetCDF4/HDF5 file: a path, s3://, gs:// or https:// URL")
    p.add_argument("dst", help="Zarr v3 store to create: a path, s3:// or gs:// URL")
    p.add_argument("--sample-dim", help="dimension to chunk along (default per group: the one most variables "
                                        "share on axis 0)")
    p.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_MB,
                   help=f"target chunk size in MiB (default {DEFAULT_CHUNK_MB:g}; 1-16 MB suits object storage)")
    p.add_argument("--shard", dest="shard_mb", type=float, nargs="?", const=DEFAULT_SHARD_MB, metavar="MB",
                   help=f"put chunks into shard objects of about MB MiB (default {DEFAULT_SHARD_MB:g} when given "
                        "without a value)")
    p.add_argument("--codec", choices=list(CODECS), default="zstd", help="compression (default zstd)")
    p.add_argument("--level", type=int, help="compression level (zstd default 3, blosc-lz4 default 5)")
    p.add_argument("--max-memory", type=_size, default=DEFAULT_MAX_MEMORY,
                   help=f"bound on memory in flight (default {DEFAULT_MAX_MEMORY // MiB}m)")
    p.add_argument("--concurrency", type=int, default=4, help="encode/write threads (default 4)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="VAR", help="variables to leave out (group/name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing Zarr store at DST")
    p.add_argument("--restart", action="store_true", help="discard an unfinished convert staged for DST")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    _storage_args(p, "src-")
    _storage_args(p, "dst-")


def run(ns: argparse.Namespace) -> int:
    """Run a parsed ``convert`` command; prints a one-line summary (and notes) and returns 0."""
    from .convert import convert

    r = convert(ns.src, ns.dst, sample_dim=ns.sample_dim, chunk_mb=ns.chunk_mb, shard_mb=ns.shard_mb,
                codec=ns.codec, level=ns.level, max_memory=ns.max_memory, concurrency=ns.concurrency,
                exclude=ns.exclude, overwrite=ns.overwrite, restart=ns.restart, progress=ns.progress,
                src_options=_options(ns, "src_"), dst_options=_options(ns, "dst_"))
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    dims = ", ".join(f"{g or '/'}: {d}" for g, d in r.sample_dims.items() if d) or "none"
    resumed = f", {r.units_resumed} of {r.units_total} units already done" if r.units_resumed else ""
    print(f"converted {r.src} -> {r.dst}: {r.arrays} arrays in {r.groups} groups, sample dims {dims}; "
          f"{r.bytes_read / MiB:.1f} MiB read, {r.bytes_written / MiB:.1f} MiB written in {r.objects_written} "
          f"objects, {r.seconds:.1f} s ({r.mib_per_s:.1f} MiB/s){resumed}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zarrloader convert", description="NetCDF4/HDF5 -> Zarr v3")
    add_arguments(p)
    ns = p.parse_args(argv)
    try:
        return run(ns)
    except (ZarrLoaderError, ValueError) as exc:
        print(f"zarrloader convert: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zarrloader convert: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
