"""``zarrloader`` command line: a thin argparse layer over inspect_store, sync_subset and run_benchmark."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ZarrLoaderError
from .storage import BACKENDS, StorageOptions

KiB = 1 << 10
MiB = 1 << 20


def _size(text: str) -> int:
    """'256k', '4m', '4MiB', '1048576' -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": KiB, "m": MiB, "g": 1 << 30}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in "kmg" else t) * mult)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256k, 4m)") from exc


def _storage_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group(f"{prefix or 'storage'} options (credentials come from the standard chains)")
    d = prefix.replace("-", "_")
    g.add_argument(f"--{prefix}anon", dest=f"{d}anon", action="store_true", help="unsigned requests (public data)")
    g.add_argument(f"--{prefix}profile", dest=f"{d}profile", help="AWS profile name")
    g.add_argument(f"--{prefix}endpoint-url", dest=f"{d}endpoint_url", help="S3-compatible endpoint (MinIO, Ceph, R2...)")
    g.add_argument(f"--{prefix}region", dest=f"{d}region")
    g.add_argument(f"--{prefix}requester-pays", dest=f"{d}requester_pays", action="store_true")
    g.add_argument(f"--{prefix}checksum", dest=f"{d}checksum", default="when_required",
                   choices=["when_required", "when_supported"], help="botocore checksum mode (default when_required)")


def _options(ns: argparse.Namespace, prefix: str = "") -> StorageOptions:
    get = lambda k: getattr(ns, f"{prefix}{k}")  # noqa: E731
    return StorageOptions(anon=get("anon"), profile=get("profile"), endpoint_url=get("endpoint_url"),
                          region=get("region"), requester_pays=get("requester_pays"), checksum=get("checksum"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zarrloader", description="Zarr on object storage -> PyTorch, fast.")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("inspect", help="shape, chunks, codecs, object count and read-cost advice for a store")
    i.add_argument("url")
    i.add_argument("--arrays", nargs="+", help="arrays of a group to inspect (default: all)")
    i.add_argument("--price-per-1000", type=float, default=0.0004, help="USD per 1,000 GET requests (default 0.0004)")
    i.add_argument("--target-mib-s", type=float, default=1000.0, help="bandwidth to plan for (default 1000 MiB/s)")
    i.add_argument("--latency-ms", type=float, help="time to first byte; default: measured on a few objects")
    i.add_argument("--stream-mib-s", type=float, default=80.0, help="bandwidth of one HTTP stream (default 80)")
    i.add_argument("--epochs", type=int, default=1)
    i.add_argument("--list", dest="list_objects", action=argparse.BooleanOptionalAction, default=None,
                   help="count stored objects by listing (default: when at most 20,000)")
    i.add_argument("--json", dest="json_out", action="store_true", help="print JSON instead of text")
    _storage_args(i)

    s = sub.add_parser("sync", help="copy a subset of samples (only the chunks it touches), atomically, resumably")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--select", help="START:STOP on the sample axis (default: everything)")
    s.add_argument("--arrays", nargs="+", help="arrays of a group to copy (default: all)")
    s.add_argument("--concurrency", type=int, default=16)
    s.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    s.add_argument("--restart", action="store_true", help="discard an unfinished sync staged for DST")
    s.add_argument("--no-progress", dest="progress", action="store_false")
    _storage_args(s, "src-")
    _storage_args(s, "dst-")

    b = sub.add_parser("bench", help="raw GET vs per-sample vs zarr default vs our loader, same server, same run")
    b.add_argument("url", nargs="?", help="base URL to write the bench datasets under (default: embedded S3 server)")
    b.add_argument("--quick", action="store_true", help="3 chunk sizes x 64 MiB: under a minute on 2 cores")
    b.add_argument("--chunk-sizes", nargs="+", type=_size, help="e.g. 256k 1m 4m 16m")
    b.add_argument("--concurrency", nargs="+", type=int, help="levels to try (default 16)")
    b.add_argument("--total", type=_size, help="bytes per dataset (default 256m, quick 64m)")
    b.add_argument("--sample-bytes", type=_size, default=64 * KiB)
    b.add_argument("--readers", nargs="+", help="subset of raw naive zarr_default loader_sequential loader_shuffled")
    b.add_argument("--repeats", type=int, help="runs per reader, interleaved; the median run is reported (default 5)")
    b.add_argument("--codec", choices=["zstd", "blosc"], help="compress the bench data (default: none)")
    b.add_argument("--backend", choices=list(BACKENDS),
                   help="storage stack of raw, zarr_default and the loaders (default fsspec; obstore: s3:// only)")
    b.add_argument("--naive-seconds", type=float, help="time cap of the per-sample reader (default 3, quick 1)")
    b.add_argument("--naive-samples", type=int, help="sample cap of the per-sample reader (default 200, quick 60)")
    b.add_argument("--json", dest="json_file", help="write results as JSON to this file")
    b.add_argument("--plot", dest="plot_file", help="draw throughput vs chunk size to this PNG")
    _storage_args(b)
    return p


def _cmd_inspect(ns: argparse.Namespace) -> int:
    from .advice import CostModel, format_report, inspect_store

    model = CostModel(price_per_1000_gets=ns.price_per_1000, target_mib_s=ns.target_mib_s,
                      latency_s=ns.latency_ms / 1000 if ns.latency_ms is not None else None,
                      per_stream_mib_s=ns.stream_mib_s, epochs=ns.epochs)
    rep = inspect_store(ns.url, _options(ns), arrays=ns.arrays, model=model, list_objects=ns.list_objects)
    print(json.dumps(rep.to_dict(), indent=2, default=str) if ns.json_out else format_report(rep))
    return 0


def _cmd_sync(ns: argparse.Namespace) -> int:
    from .subset import sync_subset

    r = sync_subset(ns.src, ns.dst, ns.select, arrays=ns.arrays, src_options=_options(ns, "src_"),
                    dst_options=_options(ns, "dst_"), concurrency=ns.concurrency, overwrite=ns.overwrite,
                    restart=ns.restart, progress=ns.progress)
    print(f"synced rows {r.rows[0]}:{r.rows[1]} of {', '.join(a or '(array)' for a in r.arrays)} -> {r.dst}: "
          f"{r.copied_raw} object rows copied as is, {r.reencoded} re-encoded, {r.skipped_done} already done, "
          f"{r.bytes_written / MiB:.1f} MiB written")
    return 0


def _cmd_bench(ns: argparse.Namespace) -> int:
    from .bench import BenchConfig, format_table, plot, run_benchmark, write_json

    kw: dict[str, Any] = {}
    if ns.chunk_sizes:
        kw["chunk_sizes"] = tuple(ns.chunk_sizes)
    if ns.concurrency:
        kw["concurrency"] = tuple(ns.concurrency)
    if ns.total:
        kw["total_bytes"] = ns.total
    if ns.readers:
        kw["readers"] = tuple(ns.readers)
    if ns.repeats:
        kw["repeats"] = ns.repeats
    if ns.naive_seconds is not None:
        kw["naive_max_seconds"] = ns.naive_seconds
    if ns.naive_samples is not None:
        kw["naive_max_samples"] = ns.naive_samples
    kw.update(sample_bytes=ns.sample_bytes, codec=ns.codec, url=ns.url, backend=ns.backend,
              storage_options=_options(ns) if ns.url else None)
    cfg = BenchConfig.quick(**kw) if ns.quick else BenchConfig(**kw)
    if ns.plot_file and importlib.util.find_spec("matplotlib") is None:  # say so before minutes of work
        raise ValueError("--plot needs matplotlib, which is not installed in this environment. Fix: drop --plot "
                         "and plot the --json file elsewhere, or install matplotlib (pip install matplotlib; in "
                         "the image, in a derived image: FROM pytorch-cuda:v2.6 + RUN pip install matplotlib)")
    for flag, path in (("--json", ns.json_file), ("--plot", ns.plot_file)):
        if path:
            _check_writable(flag, path)
    report = run_benchmark(cfg, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"server: {report.server}")
    print(format_table(report))
    if ns.json_file:
        write_json(report, ns.json_file)
    if ns.plot_file:
        plot(report, ns.plot_file)
    return 0


def _check_writable(flag: str, path: str) -> None:
    """Fail before minutes of measuring when the result could not be written."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise ValueError(f"{flag} {path} is a folder. Fix: name a file in it, e.g. {target / ('bench.json' if flag == '--json' else 'bench.png')}")
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: folder {folder} does not exist. Fix: create it, or name a file in an existing folder")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise ValueError(
            f"{flag} {path}: permission denied for uid {os.getuid()}. Fix: name a file in a folder this user can "
            f"write (the image runs as a non-root user: docker run --user $(id -u) -v $PWD:/out ..., or make "
            f"the mounted folder writable for uid {os.getuid()})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return {"inspect": _cmd_inspect, "sync": _cmd_sync, "bench": _cmd_bench}[ns.command](ns)
    except (ZarrLoaderError, ValueError) as exc:
        print(f"zarrloader {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zarrloader {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
