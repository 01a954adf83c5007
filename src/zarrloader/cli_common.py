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


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, concurrencies): 0 or less is refused with the reason, not accepted."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (seconds)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0 (prices, latencies)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (retries)."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_size(text: str) -> int:
    """A size (see ``size``) of at least one byte."""
    value = size(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r} (use e.g. 256k, 4m, 2g)")
    return value


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
    taken = p._option_string_actions  # a command may define some of these itself (bench: --backend)

    def add(flag: str, **kw: object) -> None:
        if flag not in taken:
            g.add_argument(flag, **kw)  # type: ignore[arg-type]

    add(f"--{prefix}backend", dest=f"{d}backend", choices=["obstore", "fsspec"],
        help="storage client for s3:// and gs:// (default: the fastest, obstore; gs:// writes: fsspec)")
    add(f"--{prefix}connect-timeout", dest=f"{d}connect_timeout", type=positive_float, default=5.0,
        help="seconds to open a connection (default 5)")
    add(f"--{prefix}read-timeout", dest=f"{d}read_timeout", type=positive_float, default=20.0,
        help="seconds to wait for the next bytes of an answer (default 20)")
    add(f"--{prefix}retries", dest=f"{d}retries", type=non_negative_int, default=2,
        help="retries after a failed request (default 2); a frozen store ends in an error within "
             "connect + read x (retries + 1) + 2 s: 67 s with the defaults")


def options(ns: argparse.Namespace, prefix: str = "") -> StorageOptions:
    def get(k: str) -> object:
        return getattr(ns, f"{prefix}{k}")

    def opt(k: str, default: object) -> object:  # commands that build their own parsers may lack a flag
        return getattr(ns, f"{prefix}{k}", default)

    return StorageOptions(anon=bool(get("anon")), profile=get("profile"), endpoint_url=get("endpoint_url"),  # type: ignore[arg-type]
                          region=get("region"), requester_pays=bool(get("requester_pays")),  # type: ignore[arg-type]
                          checksum=str(get("checksum")), backend=opt("backend", None),  # type: ignore[arg-type]
                          connect_timeout=float(opt("connect_timeout", 5.0)),  # type: ignore[arg-type]
                          read_timeout=float(opt("read_timeout", 20.0)), retries=int(opt("retries", 2)))  # type: ignore[call-overload]
