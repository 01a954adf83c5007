"""``zarrloader bench [URL]``: the argparse layer over :func:`zarrloader.bench.run_benchmark`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from .cli_common import KiB, options, size, storage_args
from .storage import BACKENDS


def add_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("url", nargs="?", help="base URL to write the bench datasets under (default: embedded S3 server)")
    b.add_argument("--quick", action="store_true", help="3 chunk sizes x 64 MiB: under a minute on 2 cores")
    b.add_argument("--chunk-sizes", nargs="+", type=size, help="e.g. 256k 1m 4m 16m")
    b.add_argument("--concurrency", nargs="+", type=int, help="levels to try (default 16)")
    b.add_argument("--total", type=size, help="bytes per dataset (default 256m, quick 64m)")
    b.add_argument("--sample-bytes", type=size, default=64 * KiB)
    b.add_argument("--readers", nargs="+", help="subset of raw naive zarr_default loader_sequential loader_shuffled "
                   "(and the peers: tensorstore_sequential tensorstore_shuffled torch_chunked torch_per_sample)")
    b.add_argument("--raw-clients", nargs="+", help="raw GET clients of the yardstick (default: every one installed: "
                   "s3fs obstore s5cmd tensorstore)")
    b.add_argument("--peers", action="store_true", help="add tensorstore and torch DataLoader readers (per-sample, "
                   "chunk-aligned)")
    b.add_argument("--peer-seconds", type=float, help="time cap of the per-sample peers (default 3, quick 1)")
    b.add_argument("--repeats", type=int, help="runs per reader, interleaved; the median run is reported (default 5)")
    b.add_argument("--codec", choices=["zstd", "blosc"], help="compress the bench data (default: none)")
    b.add_argument("--backend", choices=list(BACKENDS),
                   help="storage backend of zarr_default and the loaders (default: the scheme's, obstore for s3:// and gs://)")
    b.add_argument("--naive-seconds", type=float, help="time cap of the per-sample reader (default 3, quick 1)")
    b.add_argument("--naive-samples", type=int, help="sample cap of the per-sample reader (default 200, quick 60)")
    b.add_argument("--json", dest="json_file", help="write results as JSON to this file")
    b.add_argument("--plot", dest="plot_file", help="draw throughput vs chunk size to this PNG")
    storage_args(b)


def run(ns: argparse.Namespace) -> int:
    from .bench import BenchConfig, format_table, plot, run_benchmark, write_json

    kw: dict[str, Any] = {}
    # `is not None` everywhere: an explicit 0 must be refused, not replaced by the default
    if ns.chunk_sizes is not None:
        kw["chunk_sizes"] = tuple(ns.chunk_sizes)
    if ns.concurrency is not None:
        kw["concurrency"] = tuple(ns.concurrency)
    if ns.total is not None:
        kw["total_bytes"] = ns.total
    if ns.readers is not None:
        kw["readers"] = tuple(ns.readers)
    if ns.repeats is not None:
        kw["repeats"] = ns.repeats
    if ns.raw_clients is not None:
        kw["raw_clients"] = tuple(ns.raw_clients)
    if ns.peer_seconds is not None:
        kw["peer_max_seconds"] = ns.peer_seconds
    if ns.naive_seconds is not None:
        kw["naive_max_seconds"] = ns.naive_seconds
    if ns.naive_samples is not None:
        kw["naive_max_samples"] = ns.naive_samples
    kw.update(sample_bytes=ns.sample_bytes, codec=ns.codec, url=ns.url, backend=ns.backend, peers=ns.peers,
              storage_options=options(ns) if ns.url else None)
    cfg = BenchConfig.quick(**kw) if ns.quick else BenchConfig(**kw)
    validate(cfg)
    if ns.plot_file and importlib.util.find_spec("matplotlib") is None:  # say so before minutes of work
        raise ValueError("--plot needs matplotlib, which is not installed in this environment. Fix: drop --plot "
                         "and plot the --json file elsewhere, or install matplotlib (pip install matplotlib; in "
                         "the image, in a derived image: FROM pytorch-cuda:v2.6 + RUN pip install matplotlib)")
    for flag, path in (("--json", ns.json_file), ("--plot", ns.plot_file)):
        if path:
            check_writable(flag, path)
    report = run_benchmark(cfg, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"server: {report.server}")
    print(format_table(report))
    if ns.json_file:
        write_json(report, ns.json_file)
    if ns.plot_file:
        plot(report, ns.plot_file)
    return 0


#: BenchConfig field -> the flag that sets it, so that a refused setting names what the user typed
_FLAGS = {"total bytes": "--total", "concurrency": "--concurrency", "chunk sizes": "--chunk-sizes",
          "sample bytes": "--sample-bytes", "repeats": "--repeats", "unknown readers": "--readers",
          "unknown raw clients": "--raw-clients", "caps": "--naive-seconds/--naive-samples/--peer-seconds"}


def validate(cfg: Any) -> None:
    """Refuse settings that cannot be measured before anything is written or started, naming the flag."""
    from .bench import BenchConfigError

    try:
        cfg.validate()
    except BenchConfigError as exc:
        text = str(exc)
        flag = next((f for k, f in _FLAGS.items() if k in text.split(". Fix:")[0]), None)
        raise BenchConfigError(f"{flag}: {text}" if flag else text) from None
    if cfg.url is not None:
        from .storage import parse_url

        parse_url(cfg.url)  # a malformed URL fails here, with its own message


def check_writable(flag: str, path: str) -> None:
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
