"""What every ``zarrloader`` subcommand shares: sizes on the command line and the storage options
(one set of flags, with a prefix for commands that have two ends: ``--src-*``/``--dst-*``)."""

from __future__ import annotations

import argparse

from .storage import StorageOptions

KiB = 1 << 10
MiB = 1 << 20


def size(text: str) -> int:
    """'256k', '4m', '4MiB', '2g', '1048576' -> bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": KiB, "m": MiB, "g": 1 << 30}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in "kmg" else t) * mult)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 256k, 4m, 2g)") from exc


def storage_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group(f"{prefix.rstrip('-') or 'storage'} options (credentials come from the standard chains)")
    d = prefix.replace("-", "_")
    g.add_argument(f"--{prefix}anon", dest=f"{d}anon", action="store_true", help="unsigned requests (public data)")
    g.add_argument(f"--{prefix}profile", dest=f"{d}profile", help="AWS profile name")
    g.add_argument(f"--{prefix}endpoint-url", dest=f"{d}endpoint_url", help="S3-compatible endpoint (MinIO, Ceph, R2...)")
    g.add_argument(f"--{prefix}region", dest=f"{d}region")
    g.add_argument(f"--{prefix}requester-pays", dest=f"{d}requester_pays", action="store_true")
    g.add_argument(f"--{prefix}checksum", dest=f"{d}checksum", default="when_required",
                   choices=["when_required", "when_supported"], help="botocore checksum mode (default when_required)")


def options(ns: argparse.Namespace, prefix: str = "") -> StorageOptions:
    def get(k: str) -> object:
        return getattr(ns, f"{prefix}{k}")

    return StorageOptions(anon=bool(get("anon")), profile=get("profile"), endpoint_url=get("endpoint_url"),  # type: ignore[arg-type]
                          region=get("region"), requester_pays=bool(get("requester_pays")),  # type: ignore[arg-type]
                          checksum=str(get("checksum")))
