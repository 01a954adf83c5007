"""``zarrloader sync SRC DST``: the argparse layer over :func:`zarrloader.subset.sync_subset`."""

from __future__ import annotations

import argparse

from .cli_common import MiB, options, storage_args


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--select", help="START:STOP on the sample axis (default: everything)")
    s.add_argument("--arrays", nargs="+", help="arrays of a group to copy (default: all)")
    s.add_argument("--concurrency", type=int, default=16)
    s.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    s.add_argument("--restart", action="store_true", help="discard an unfinished sync staged for DST")
    s.add_argument("--no-progress", dest="progress", action="store_false")
    storage_args(s, "src-")
    storage_args(s, "dst-")


def run(ns: argparse.Namespace) -> int:
    from .subset import sync_subset

    r = sync_subset(ns.src, ns.dst, ns.select, arrays=ns.arrays, src_options=options(ns, "src_"),
                    dst_options=options(ns, "dst_"), concurrency=ns.concurrency, overwrite=ns.overwrite,
                    restart=ns.restart, progress=ns.progress)
    print(f"synced rows {r.rows[0]}:{r.rows[1]} of {', '.join(a or '(array)' for a in r.arrays)} -> {r.dst}: "
          f"{r.copied_raw} object rows copied as is, {r.reencoded} re-encoded, {r.skipped_done} already done, "
          f"{r.bytes_written / MiB:.1f} MiB written")
    return 0
