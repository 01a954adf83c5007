"""What differs between two images: Python distributions and Debian packages added, removed or
changed (release notes), and layer by layer whether the bits are equal and, where not, what
differs and why (proof of reproducibility).

    imagectl diff IMAGE_A IMAGE_B [--json FILE] [--no-layers] [--show N]

Layers are paired by position (both images come from the same Dockerfile). For a pair whose
digests differ, every file is compared: present in one only, content different, or equal content
with other metadata (mtime, mode, owner). Equal content with other mtimes is what the engine's
embedded BuildKit (0.8) leaves: it does not rewrite file times to SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagectl.docker import DockerError, inspect_image, require_engine
from imagectl.image_contents import Layer, SavedImage, debian_packages, python_distributions, saved_image


@dataclass(frozen=True)
class Change:
    name: str
    a: str | None  # version in A (None: added in B)
    b: str | None  # version in B (None: removed)


def compare_versions(a: dict[str, str], b: dict[str, str]) -> list[Change]:
    names = sorted(set(a) | set(b))
    return [Change(n, a.get(n), b.get(n)) for n in names if a.get(n) != b.get(n)]


@dataclass
class LayerDiff:
    index: int
    created_by: str
    a: str  # diff id
    b: str
    equal: bool
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)  # same path, other bytes
    metadata: dict[str, int] = field(default_factory=dict)  # "mtime"/"mode"/"owner" -> files with equal bytes
    why: str = ""


def explain(d: LayerDiff) -> str:
    if d.equal:
        return "identical"
    if not d.only_a and not d.only_b and not d.content:
        parts = ", ".join(f"{n} files differ in {k}" for k, n in sorted(d.metadata.items()))
        hint = (" (file times: the engine's BuildKit 0.8 does not clamp them to SOURCE_DATE_EPOCH)"
                if "mtime" in d.metadata else "")
        return f"same files, same bytes; {parts}{hint}"
    kinds = Counter(Path(p).suffix or Path(p).name for p in d.content)
    top = ", ".join(f"{k} x{n}" for k, n in kinds.most_common(5))
    reasons = []
    if any(p.endswith(".pyc") for p in d.content):
        reasons.append(".pyc files embed their source's mtime unless compiled with SOURCE_DATE_EPOCH")
    if any(p.endswith(("RECORD", "INSTALLER", "direct_url.json")) for p in d.content):
        reasons.append("installer records list per-install details")
    if any(p.startswith(("var/log/", "var/cache/", "var/lib/apt/", "var/lib/dpkg/")) for p in d.content):
        reasons.append("package-manager logs and state carry dates")
    return (f"{len(d.content)} files with other bytes ({top}); {len(d.only_a)} only in A, {len(d.only_b)} only in B"
            + (f"; likely: {'; '.join(reasons)}" if reasons else ""))


def compare_layer(i: int, created_by: str, la: Layer, lb: Layer) -> LayerDiff:
    d = LayerDiff(i, created_by, la.diff_id, lb.diff_id, la.diff_id == lb.diff_id)
    if d.equal:
        return d
    fa, fb = la.files, lb.files
    d.only_a = sorted(set(fa) - set(fb))
    d.only_b = sorted(set(fb) - set(fa))
    meta: Counter[str] = Counter()
    for name in sorted(set(fa) & set(fb)):
        x, y = fa[name], fb[name]
        if (x.kind, x.digest, x.size) != (y.kind, y.digest, y.size):
            d.content.append(name)
            continue
        meta.update(k for k, same in (("mtime", x.mtime == y.mtime), ("mode", x.mode == y.mode),
                                      ("owner", (x.uid, x.gid) == (y.uid, y.gid))) if not same)
    d.metadata = dict(meta)
    d.why = explain(d)
    return d


@dataclass
class ImageDiff:
    a: str
    b: str
    a_id: str
    b_id: str
    python: list[Change]
    debian: list[Change]
    labels: list[Change]
    layers: list[LayerDiff] | None

    @property
    def same_packages(self) -> bool:
        return not self.python and not self.debian

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"same_packages": self.same_packages}


def diff_images(a: str, b: str, *, with_layers: bool = True, docker: str = "docker",
                log: Any = None) -> ImageDiff:
    ia, ib = inspect_image(a), inspect_image(b)
    py = compare_versions(python_distributions(a, docker), python_distributions(b, docker))
    deb = compare_versions(debian_packages(a, docker), debian_packages(b, docker))
    labels = compare_versions(ia.labels, ib.labels)
    out = ImageDiff(a, b, ia.id, ib.id, py, deb, labels, None)
    if not with_layers:
        return out
    ids_a = (ia.raw.get("RootFS") or {}).get("Layers") or []
    ids_b = (ib.raw.get("RootFS") or {}).get("Layers") or []
    if log:
        log(f"reading the layers of {a} and {b} (docker save; every file is hashed)")
    empty = SavedImage({}, [])
    sa = saved_image(a, docker, progress=log) if ids_a != ids_b else empty
    sb = saved_image(b, docker, progress=log) if ids_a != ids_b else empty
    la, lb, hist = sa.layers, sb.layers, sa.steps or sb.steps
    result = []
    for i in range(max(len(ids_a), len(ids_b))):
        da, db = (ids_a[i] if i < len(ids_a) else ""), (ids_b[i] if i < len(ids_b) else "")
        label = hist[i] if i < len(hist) else f"layer {i}"
        if da == db:
            result.append(LayerDiff(i, label, da, db, True, why="identical"))
        elif da and db:
            result.append(compare_layer(i, label, la.get(da, Layer(da)), lb.get(db, Layer(db))))
        else:
            result.append(LayerDiff(i, label, da, db, False, why="present in one image only"))
    out.layers = result
    return out


def _short_step(created_by: str, width: int = 70) -> str:
    text = " ".join(created_by.replace("/bin/bash -o pipefail -c", "").replace("|", " ").split())
    text = text.removeprefix("#(nop) ").strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def format_diff(d: ImageDiff, show: int = 10) -> str:
    lines = [f"A: {d.a} ({d.a_id[:19]})", f"B: {d.b} ({d.b_id[:19]})", ""]
    for title, changes in (("Python distributions", d.python), ("Debian packages", d.debian)):
        if not changes:
            lines.append(f"{title}: no difference")
            continue
        lines.append(f"{title}: {len(changes)} difference(s)")
        for c in changes:
            what = "added" if c.a is None else "removed" if c.b is None else "changed"
            lines.append(f"  {what:8} {c.name}: {c.a or '-'} -> {c.b or '-'}")
    if d.labels:
        lines.append(f"labels: {', '.join(f'{c.name}: {c.a} -> {c.b}' for c in d.labels)}")
    if d.layers is not None:
        same = sum(ld.equal for ld in d.layers)
        lines += ["", f"layers: {same} of {len(d.layers)} identical"]
        for ld in d.layers:
            mark = "=" if ld.equal else "≠"
            lines.append(f"  {mark} {ld.index:2} {_short_step(ld.created_by)}")
            if not ld.equal:
                lines.append(f"       {ld.why}")
                for p in ld.content[:show]:
                    lines.append(f"       bytes differ: /{p}")
                for p in ld.only_a[:show]:
                    lines.append(f"       only in A:    /{p}")
                for p in ld.only_b[:show]:
                    lines.append(f"       only in B:    /{p}")
    verdict = "same packages" if d.same_packages else "PACKAGES DIFFER"
    lines += ["", f"verdict: {verdict}"]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_a")
    parser.add_argument("image_b")
    parser.add_argument("--no-layers", action="store_true", help="packages only (skip the layer-by-layer comparison)")
    parser.add_argument("--show", type=int, default=10, help="files listed per differing layer (default 10)")
    parser.add_argument("--json", dest="json_file", type=Path, help="also write the whole comparison as JSON")
    parser.add_argument("--docker", default="docker")


def run(args: argparse.Namespace) -> int:
    """Packages (Python, Debian) and layers that differ between two images; exit 1 if packages differ."""
    try:
        require_engine()
        d = diff_images(args.image_a, args.image_b, with_layers=not args.no_layers, docker=args.docker,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    except DockerError as exc:
        print(f"imagectl diff: error: {exc}", file=sys.stderr)
        return 2
    print(format_diff(d, args.show))
    if args.json_file:
        args.json_file.write_text(json.dumps(d.to_json(), indent=2) + "\n")
    return 0 if d.same_packages else 1


