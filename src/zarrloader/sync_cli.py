"""``zarrloader sync SRC DST``: the argparse layer over :func:`zarrloader.subset.sync_subset`."""

from __future__ import annotations

import argparse

from .cli_common import MiB, options, positive_int, storage_args


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--select", help="START:STOP along the sample dimension (default: everything); "
                   "a range past the end is refused, not clipped")
    s.add_argument("--sample-dim", help="dimension to select along (default: the one most arrays share on axis 0; "
                   "axis 0 for stores without dimension names)")
    s.add_argument("--arrays", nargs="+", help="arrays of a group to copy (default: all, coordinates included)")
    s.add_argument("--concurrency", type=positive_int, default=16, help="objects copied at once (default 16)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing DST, only if it is a Zarr store (or a partial sync of one)")
    s.add_argument("--restart", action="store_true", help="discard an unfinished sync staged for DST")
    s.add_argument("--no-verify", dest="verify", action="store_false",
                   help="copy objects without decoding them first (default: every object is decoded before it is written)")
    s.add_argument("--no-progress", dest="progress", action="store_false")
    storage_args(s, "src-")
    storage_args(s, "dst-")


def run(ns: argparse.Namespace) -> int:
    from .subset import sync_subset

    r = sync_subset(ns.src, ns.dst, ns.select, arrays=ns.arrays, sample_dim=ns.sample_dim,
                    src_options=options(ns, "src_"), dst_options=options(ns, "dst_"), concurrency=ns.concurrency,
                    overwrite=ns.overwrite, restart=ns.restart, verify=ns.verify, progress=ns.progress)
    along = f"{r.sample_dim!r}" if r.sample_dim else "axis 0"
    static = f"; copied whole: {', '.join(r.static)}" if r.static else ""
    print(f"synced {along} {r.rows[0]}:{r.rows[1]} of {', '.join(a or '(array)' for a in r.arrays)}{static} -> {r.dst}: "
          f"{r.copied_raw} objects copied as is, {r.reencoded} re-encoded, {r.missing} not stored in the source, "
          f"{r.skipped_done} already done, {r.bytes_written / MiB:.2f} MiB written"
          + ("" if r.verified else " (not verified: --no-verify)"))
    return 0
