"""``zarrloader inspect URL``: the argparse layer over :func:`zarrloader.advice.inspect_store`."""

from __future__ import annotations

import argparse
import json

from .cli_common import non_negative_float, options, positive_float, positive_int, storage_args


def add_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("url")
    i.add_argument("--arrays", nargs="+", help="arrays of a group to inspect (default: all)")
    i.add_argument("--sample-dim", help="sample dimension whose table comes first (default: the one most "
                   "data arrays share on axis 0; stores without dimension names: axis 0)")
    i.add_argument("--price-per-1000", type=non_negative_float, default=0.0004, help="USD per 1,000 GET requests (default 0.0004)")
    i.add_argument("--target-mib-s", type=positive_float, default=1000.0, help="bandwidth to plan for (default 1000 MiB/s)")
    i.add_argument("--latency-ms", type=non_negative_float, help="time to first byte; default: measured on a few objects")
    i.add_argument("--stream-mib-s", type=positive_float, default=80.0, help="bandwidth of one HTTP stream (default 80)")
    i.add_argument("--epochs", type=positive_int, default=1)
    i.add_argument("--list", dest="list_objects", action=argparse.BooleanOptionalAction, default=None,
                   help="count stored objects by listing (default: when at most 20,000)")
    i.add_argument("--json", dest="json_out", action="store_true", help="print JSON instead of text")
    storage_args(i)


def run(ns: argparse.Namespace) -> int:
    from .advice import CostModel, format_report, inspect_store

    model = CostModel(price_per_1000_gets=ns.price_per_1000, target_mib_s=ns.target_mib_s,
                      latency_s=ns.latency_ms / 1000 if ns.latency_ms is not None else None,
                      per_stream_mib_s=ns.stream_mib_s, epochs=ns.epochs)
    rep = inspect_store(ns.url, options(ns), arrays=ns.arrays, model=model, list_objects=ns.list_objects,
                        sample_dim=ns.sample_dim)
    print(json.dumps(rep.to_dict(), indent=2, default=str) if ns.json_out else format_report(rep))
    return 0
