"""Show an image's size: per-layer sizes (with the step that made each) and its largest paths."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass

from imagectl.docker import DockerError, inspect_image, require_engine

# du inside the image: sizes in KiB of every directory down to package level in site-packages.
_DU = "du -x -k -d 7 /opt /usr /var /home /etc 2>/dev/null | sort -rn | head -n 400"


@dataclass(frozen=True)
class Layer:
    size: int
    created_by: str


@dataclass(frozen=True)
class SizeReport:
    image: str
    image_id: str
    total: int
    layers: list[Layer]
    largest_paths: list[tuple[int, str]]


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _short(step: str, width: int = 90) -> str:
    step = " ".join(step.replace("/bin/sh -c #(nop) ", "").replace("|", " ").split())
    return step if len(step) <= width else step[: width - 3] + "..."


def layers(image: str) -> list[Layer]:
    res = subprocess.run(["docker", "history", "--no-trunc", "--human=false", "--format", "{{json .}}", image],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise DockerError(res.stderr.strip())
    out = []
    for line in res.stdout.splitlines():
        row = json.loads(line)
        out.append(Layer(int(row.get("Size") or 0), row.get("CreatedBy", "")))
    return list(reversed(out))  # oldest first


def pick_largest(rows: list[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    """The n largest paths that say something: a directory is skipped when one child holds
    most (>= 80 %) of it, so /opt/venv/lib/python3.13 gives way to the packages inside it."""
    sizes = dict((path, size) for size, path in rows)
    children: dict[str, list[int]] = {}
    for path, size in sizes.items():
        parent = path.rsplit("/", 1)[0] or "/"
        children.setdefault(parent, []).append(size)
    telling = [(size, path) for path, size in sizes.items()
               if not children.get(path) or max(children[path]) < 0.8 * size]
    return sorted(telling, reverse=True)[:n]


def largest_paths(image: str, n: int = 15) -> list[tuple[int, str]]:
    res = subprocess.run(["docker", "run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", _DU],
                         capture_output=True, text=True, check=False, timeout=600)
    rows = []
    for line in res.stdout.splitlines():
        kib, _, path = line.partition("\t")
        if kib.strip().isdigit():
            rows.append((int(kib) * 1024, path))
    return pick_largest(rows, n)


def size_report(image: str, top: int = 15) -> SizeReport:
    require_engine()
    info = inspect_image(image)
    return SizeReport(image, info.id, info.size, layers(image), largest_paths(image, top))


def format_report(r: SizeReport, min_layer: int = 1_000_000) -> str:
    lines = [f"{r.image}  {r.image_id[:19]}  total {human(r.total)} (uncompressed)", "", "layers (oldest first):"]
    small = 0
    for layer in r.layers:
        if layer.size < min_layer:
            small += layer.size
            continue
        lines.append(f"  {human(layer.size):>9}  {_short(layer.created_by)}")
    lines.append(f"  {human(small):>9}  (layers under {human(min_layer)} together)")
    lines += ["", "largest paths:"]
    lines += [f"  {human(size):>9}  {path}" for size, path in r.largest_paths]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image reference, e.g. pytorch-cuda:v2.6-cu124")
    parser.add_argument("--top", type=int, default=15, help="how many of the largest paths to list")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    try:
        report = size_report(args.image, args.top)
    except DockerError as exc:
        print(f"imagectl: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"image": report.image, "id": report.image_id, "total": report.total,
                          "layers": [layer.__dict__ for layer in report.layers],
                          "largest_paths": report.largest_paths}, indent=2))
    else:
        print(format_report(report))
    return 0
