"""Push a variant's images, only if the exact local image ID passed the smoke suite (the release gate).

    imagectl push --variant cu124 --registry ghcr.io/ORG [--allow-cpu-only] [--layers data,torch,base]

Order of work, and why: (1) gate every image against its smoke report, (2) make the SBOMs, (3) check
the immutable tag is free, (4) tag the image *by ID* and push, (5) ask the registry which image config
each pushed digest carries and compare it with the ID that passed, (6) record digest, report and SBOM
under build/release/sha256-<digest>/. Nothing is pushed unless (1)-(3) pass for every image.

The data image is gated by a report whose `image_id` is its own ID. The torch and base images carry no
smoke suite; they are gated by containment: their filesystem layers must be a prefix of the gated
data image's layers (so the exact bits they hold ran in the suite).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagectl.docker import DockerError, ImageInfo, inspect_image, require_engine
from imagectl.gate import Expectation, GateRefused, choose, is_gpu_verified, suite_checks_of
from imagectl.matrix import REPO_ROOT, Matrix, Variant, load_matrix
from imagectl.refs import InvalidReferenceError, Registry, image_ref, parse_registry, validate_repository
from imagectl.registry import RegistryError, manifest_info
from imagectl.release_tags import Stamp, TagError, release_tags
from smokesuite.report import ReportFormatError, SmokeReport, SuiteChecks, write_report

LABEL_VARIANT = "io.pytorch-cuda.variant"
LABEL_LAYER = "io.pytorch-cuda.layer"
DEFAULT_REPORT_DIRS = ("build/smoke", "build", ".")
DEFAULT_OUT = REPO_ROOT / "build" / "release"
EXIT_REFUSED = 3  # the gate said no (distinct from 1 = a push or registry failure)
_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")

__all__ = ["EXIT_REFUSED", "GateRefused", "PushFailed", "ReleasePlan", "execute", "find_reports", "plan_release"]


class PushFailed(RuntimeError):
    """docker push or the registry check failed after the gate passed."""


# -- smoke reports ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoundReport:
    """A smoke report and where it came from (a file, or the run `imagectl release` just made)."""

    report: SmokeReport
    source: str


def find_reports(files: list[Path], dirs: list[Path]) -> list[FoundReport]:
    """Smoke reports among ``files`` (each must be one) and the *.json files in ``dirs`` (others skipped)."""
    out: list[FoundReport] = []
    seen: set[Path] = set()
    for path, named in [*((f, True) for f in files), *((p, False) for d in dirs if d.is_dir() for p in sorted(d.glob("*.json")))]:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            out.append(FoundReport(SmokeReport.load(path), str(path)))
        except ReportFormatError as exc:
            if named:
                raise GateRefused(f"{exc}; write one with `imagectl smoke IMAGE --report FILE`") from None
    return out


def gate_report(image: ImageInfo, ref: str, want: Expectation, reports: list[FoundReport], searched: str) -> FoundReport:
    """The report that releases this exact image (a GPU-verified one first), or GateRefused saying why."""
    chosen, judged = choose([f.report for f in reports], want)
    if chosen is not None:
        return next(f for f in reports if f.report is chosen)
    head = f"refusing to push {ref} ({image.id[:19]}): "
    if judged:
        lines = "; ".join(f"{next(f.source for f in reports if f.report is r)}: {'; '.join(why)}" for r, why in judged)
        raise GateRefused(head + f"no smoke report releases this image ID. {lines}")
    others = [f for f in reports if f.report.variant in (want.variant, None)]
    if others:
        lines = "; ".join(f"{f.source} is for {(f.report.image_id or '(none)')[:19]}" for f in others[:5])
        raise GateRefused(head + "the image changed after it was smoke-tested (no report has its ID: "
                          f"{lines}); run `imagectl smoke {ref} --expect gpu --report FILE` again")
    raise GateRefused(head + f"no smoke report for this image ID (searched {searched}); run "
                      f"`imagectl smoke {ref} --expect gpu --report build/smoke/{want.variant}.json` on a GPU host "
                      "(or name a report with --report), or use `imagectl release`")


# -- the plan -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerRelease:
    layer: str
    local_ref: str
    image: ImageInfo
    report: FoundReport  # the report that gated it (for torch/base: the data image's)
    basis: str  # why this image may go out, in words
    gpu_verified: bool
    refs: tuple[str, ...]  # REGISTRY/REPOSITORY:TAG, the immutable one last for data


@dataclass(frozen=True)
class ReleasePlan:
    variant: str
    registry: str
    repository: str
    images: tuple[LayerRelease, ...]
    immutable_refs: tuple[str, ...]  # the stamped tags (data, devel): never moved
    notes: tuple[str, ...] = ()  # what the default layer set left out, and why


def _layers_prefix(inner: ImageInfo, outer: ImageInfo) -> bool:
    a = (inner.raw.get("RootFS") or {}).get("Layers") or []
    b = (outer.raw.get("RootFS") or {}).get("Layers") or []
    return bool(a) and b[: len(a)] == a


def _check_labels(image: ImageInfo, ref: str, variant: Variant, layer: str) -> None:
    got = (image.labels.get(LABEL_VARIANT), image.labels.get(LABEL_LAYER))
    if got != (variant.name, layer):
        raise GateRefused(
            f"refusing to push {ref}: its labels say variant={got[0]!r} layer={got[1]!r}, expected "
            f"{variant.name!r}/{layer!r}; it was not built as this variant's {layer} image (make build)"
        )


def check_destination(registry: str, repository: str) -> Registry:
    """Registry and repository validated first, before any image or report is looked at."""
    try:
        reg = parse_registry(registry)
        validate_repository(repository)
    except InvalidReferenceError as exc:
        raise GateRefused(str(exc)) from None
    return reg


def local_image(matrix: Matrix, variant: Variant, layer: str, local_name: str) -> tuple[str, ImageInfo]:
    ref = f"{local_name}:{matrix.tags_for(variant, layer)[0]}"
    try:
        image = inspect_image(ref)
    except DockerError as exc:
        raise GateRefused(f"refusing to push: no local image {ref} ({exc}); build it with "
                          f"`make build VARIANT={variant.name} TARGET={layer}` or leave it out with --layers") from None
    _check_labels(image, ref, variant, layer)
    return ref, image


def plan_release(matrix: Matrix, variant_name: str | None, registry: str, *, layers: tuple[str, ...] | None = None,
                 repository: str | None = None, local_name: str | None = None,
                 report_files: list[Path] | None = None, report_dirs: list[Path] | None = None,
                 reports: list[FoundReport] | None = None, allow_cpu_only: bool = False,
                 suite: SuiteChecks | None = None, docker: str = "docker", tag_suffix: str = "") -> ReleasePlan:
    """Gate every requested layer; GateRefused (nothing pushed) at the first image that may not go out.

    ``reports``: reports already in hand (``imagectl release``); otherwise files and folders are searched.
    ``suite``: the check list to hold reports against; default: the one recorded in the data image."""
    variant = matrix.variant(variant_name)
    repository = repository or matrix.image.name
    reg = check_destination(registry, repository)
    local_name = local_name or matrix.image.name
    notes: tuple[str, ...] = ()
    if not layers:
        layers, notes = default_layers(matrix, variant, local_name)
    for layer in layers:
        if layer not in matrix.layers_of(variant):
            raise GateRefused(f"layer {layer!r} is not released for {variant.name}: choose from "
                              f"{', '.join(matrix.layers_of(variant))}")
    if reports is None:
        dirs = [Path(d) for d in (report_dirs if report_dirs is not None else DEFAULT_REPORT_DIRS)]
        reports = find_reports([Path(f) for f in report_files or []], dirs)
        searched = ", ".join(str(p) for p in [*(report_files or []), *dirs]) or "(nothing)"
    else:
        searched = "the run just made"

    # The data image is always gated: the torch and base images are released on its report. A devel
    # image carries the suite too and is gated by a report of its own.
    data_ref, data_image = local_image(matrix, variant, "data", local_name)
    gated: dict[str, tuple[str, ImageInfo, FoundReport, bool]] = {}
    for layer in ("data", "devel"):
        if layer != "data" and layer not in layers:
            continue
        ref, image = (data_ref, data_image) if layer == "data" else local_image(matrix, variant, layer, local_name)
        if layer == "devel" and not _layers_prefix(data_image, image):
            raise GateRefused(f"refusing to push {ref} ({image.id[:19]}): it is not built on {data_ref} "
                              f"({data_image.id[:19]}); rebuild the variant in one go (make build TARGET=all)")
        checks = suite if suite is not None and layer == "data" else suite_checks_of(image.id, docker=docker)
        want = Expectation(image_id=image.id, variant=variant.name, suite=checks, require_gpu=not allow_cpu_only)
        found = gate_report(image, ref, want, reports, searched)
        gated[layer] = (ref, image, found, is_gpu_verified(found.report, checks))
    found, gpu = gated["data"][2], gated["data"][3]
    try:
        stamp = Stamp.from_labels(data_image.labels)
    except TagError as exc:
        raise GateRefused(f"refusing to push {data_ref}: {exc}") from None

    out: list[LayerRelease] = []
    for layer in layers:
        if layer in gated:
            ref, image, own, own_gpu = gated[layer]
            basis = f"smoke report {own.source} for image ID {image.id}"
        else:
            ref, image = local_image(matrix, variant, layer, local_name)
            own, own_gpu = found, gpu
            if not _layers_prefix(image, data_image):
                raise GateRefused(
                    f"refusing to push {ref} ({image.id[:19]}): its layers are not contained in {data_ref} "
                    f"({data_image.id[:19]}), so it is not what the smoke suite ran; rebuild the variant in one "
                    f"go (make build VARIANT={variant.name} TARGET={layer}, then TARGET=data) and smoke it again"
                )
            basis = (f"its layers are a prefix of data image {data_image.id}, which passed smoke report "
                     f"{found.source}")
        tags = release_tags(matrix, variant, layer, stamp if layer in gated else None, gpu_verified=own_gpu)
        # one architecture of a multi-platform variant: its own tags; `imagectl manifest` joins them
        tags = [t + tag_suffix for t in tags]
        try:
            refs = tuple(image_ref(reg, repository, t) for t in tags)
        except InvalidReferenceError as exc:
            raise GateRefused(str(exc)) from None
        out.append(LayerRelease(layer, ref, image, own, basis, own_gpu, refs))
    immutable = tuple(img.refs[-1] for img in out if img.layer in gated)
    return ReleasePlan(variant.name, str(reg), repository, tuple(out), immutable, notes)


def default_layers(matrix: Matrix, variant: Variant, local_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every layer the variant has, except a devel image that was never built (an optional target).

    Named with --layers, a missing devel image is refused instead. Returns (layers, notes)."""
    layers = matrix.layers_of(variant)
    if "devel" not in layers or _built(matrix, variant, "devel", local_name):
        return layers, ()
    return tuple(x for x in layers if x != "devel"), (
        f"devel left out: no local image {local_name}:{matrix.tags_for(variant, 'devel')[0]} (build it with "
        f"`make build VARIANT={variant.name} TARGET=devel`; name it in --layers to make its absence an error)",)


def _built(matrix: Matrix, variant: Variant, layer: str, local_name: str) -> bool:
    try:
        inspect_image(f"{local_name}:{matrix.tags_for(variant, layer)[0]}")
    except DockerError:
        return False
    return True


# -- doing it -------------------------------------------------------------------------------------

@dataclass
class Pushed:
    layer: str
    image_id: str
    digest: str
    refs: list[str]
    record_dir: str
    gpu_verified: bool
    basis: str
    report: str
    sbom: dict[str, str] = field(default_factory=dict)


def _docker(docker: str, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout)


def preflight(plan: ReleasePlan, docker: str = "docker") -> None:
    """An immutable tag is never moved: refuse if it already names another image in the registry."""
    for ref in plan.immutable_refs:
        img = next(i for i in plan.images if i.refs[-1] == ref)
        try:
            existing = manifest_info(ref, docker=docker)
        except RegistryError as exc:
            raise GateRefused(f"refusing to push: cannot check the immutable tag: {exc}") from None
        if existing is not None and existing.config_digest != img.image.id:
            raise GateRefused(
                f"refusing to push: {ref} already holds another image (config "
                f"{existing.config_digest[:19]}, this one is {img.image.id[:19]}); immutable tags never move. "
                "The same commit and date built a different image: commit the change and rebuild"
            )


def _local_id(ref: str, docker: str) -> str | None:
    res = _docker(docker, "image", "inspect", "--format", "{{.Id}}", ref, timeout=60)
    return res.stdout.strip() if res.returncode == 0 else None


def push_image(img: LayerRelease, docker: str = "docker") -> str:
    """Tag by image ID (so a tag moved meanwhile cannot change what goes out), push, verify; the digest."""
    digests: set[str] = set()
    for ref in img.refs:
        # A local tag of that name (a release pulled earlier) is put back afterwards, never moved or removed.
        before = _local_id(ref, docker)
        res = _docker(docker, "tag", img.image.id, ref)
        if res.returncode != 0:
            raise PushFailed(f"docker tag {img.image.id[:19]} {ref} failed: {res.stderr.strip()}")
        try:
            res = _docker(docker, "push", ref)
        finally:
            if before is None:
                _docker(docker, "rmi", ref)  # only an untag of the tag made here: the image keeps its other tags
            elif before != img.image.id:
                _docker(docker, "tag", before, ref)
        if res.returncode != 0:
            raise PushFailed(f"docker push {ref} failed: {res.stderr.strip() or res.stdout[-500:]} "
                             "(logged in? `docker login REGISTRY`)")
        m = _DIGEST.search(res.stdout)
        if not m:
            raise PushFailed(f"docker push {ref} printed no digest:\n{res.stdout[-500:]}")
        info = manifest_info(ref, docker=docker)
        if info is None or info.digest != m.group(1) or info.config_digest != img.image.id:
            raise PushFailed(f"the registry's {ref} is not the image that passed: digest "
                             f"{info and info.digest}, config {info and info.config_digest}; expected "
                             f"{m.group(1)} with config {img.image.id}")
        digests.add(m.group(1))
    if len(digests) != 1:
        raise PushFailed(f"the tags of {img.local_ref} got different digests: {sorted(digests)}")
    return digests.pop()


def record(img: LayerRelease, digest: str, out: Path, sbom_files: dict[str, Path]) -> Pushed:
    """build/release/sha256-<hex>/: push.json, smoke-report.json, sbom/*; one line in pushes.jsonl."""
    folder = out / digest.replace(":", "-")
    (folder / "sbom").mkdir(parents=True, exist_ok=True)
    write_report(img.report.report, folder / "smoke-report.json")
    sboms = {}
    for kind, path in sbom_files.items():
        target = folder / "sbom" / path.name
        shutil.copyfile(path, target)
        sboms[kind] = str(target.relative_to(folder))
    pushed = Pushed(layer=img.layer, image_id=img.image.id, digest=digest, refs=list(img.refs),
                    record_dir=str(folder), gpu_verified=img.gpu_verified, basis=img.basis,
                    report=img.report.source, sbom=sboms)
    doc = {**asdict(pushed), "pinned": [f"{r.rsplit(':', 1)[0]}@{digest}" for r in img.refs[:1]],
           "labels": img.image.labels, "pushed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    (folder / "push.json").write_text(json.dumps(doc, indent=2) + "\n")
    with (out / "pushes.jsonl").open("a") as fh:
        fh.write(json.dumps({k: doc[k] for k in ("layer", "image_id", "digest", "refs", "record_dir",
                                                 "gpu_verified", "pushed_at")}) + "\n")
    return pushed


def execute(plan: ReleasePlan, out: Path = DEFAULT_OUT, sbom: bool = True, docker: str = "docker",
            log: Any = print) -> list[Pushed]:
    """SBOMs, immutable-tag check, then push + verify + record each image. Returns what was pushed."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))  # ours alone: removed at the end
    staged: dict[str, dict[str, Path]] = {}
    for img in plan.images:
        staged[img.layer] = {}
        if sbom:
            from imagectl.sbom import SbomError, generate_sbom

            try:
                result = generate_sbom(img.image.id, staging / img.image.id.split(":")[-1][:12],
                                       docker=docker)
            except SbomError as exc:
                raise GateRefused(f"refusing to push {img.local_ref}: no SBOM: {exc}") from None
            staged[img.layer] = result.files
    try:
        preflight(plan, docker)
        done: list[Pushed] = []
        for img in plan.images:
            digest = push_image(img, docker)
            pushed = record(img, digest, out, staged[img.layer])
            done.append(pushed)
            for ref in img.refs:
                log(f"pushed {ref} -> {digest}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return done


# -- CLI ------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, *, report_files: bool = True) -> None:
    parser.add_argument("--variant", default=None, help="variant from images/matrix.toml (default: the matrix default)")
    parser.add_argument("--registry", required=True, help="HOST[:PORT][/NAMESPACE] to push to (no scheme)")
    parser.add_argument("--layers", default="", help="comma-separated layers (default: all the variant has)")
    if report_files:
        parser.add_argument("--report", action="append", default=[], type=Path,
                            help="smoke report file (repeatable); also searched: --reports-dir")
        parser.add_argument("--reports-dir", action="append", default=None, type=Path,
                            help=f"folder of smoke reports (repeatable; default: {', '.join(DEFAULT_REPORT_DIRS)})")
    parser.add_argument("--allow-cpu-only", action="store_true",
                        help="accept a CPU-mode report; every tag then ends in -gpu-unverified")
    parser.add_argument("--repository", default=None, help="repository name in the registry (default: matrix image name)")
    parser.add_argument("--local-name", default=None, help="local image name (default: matrix image name)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="release records folder (default: build/release)")
    parser.add_argument("--no-sbom", action="store_true", help="skip SBOM generation (not for releases)")
    parser.add_argument("--dry-run", action="store_true", help="gate and print the plan; push nothing")
    parser.add_argument("--tag-suffix", default="", metavar="-ARCH",
                        help="append this to every tag (one architecture of a multi-platform variant, e.g. -arm64; "
                             "`imagectl manifest` then makes the multi-platform tags)")
    parser.add_argument("--docker", default="docker", help="docker client to use")


def show_plan(plan: ReleasePlan) -> None:
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    for img in plan.images:
        print(f"gate ok: {img.local_ref} {img.image.id[:19]} ({img.basis})")
        print(f"  tags: {', '.join(img.refs)}")
    if not plan.images[0].gpu_verified:
        print("WARNING: not GPU-verified (CPU-only smoke report): tags end in -gpu-unverified", file=sys.stderr)


def push_planned(plan_fn: Any, args: argparse.Namespace, command: str) -> int:
    """Shared by push and release: gate (``plan_fn``), then push; exit codes 0 / 1 / EXIT_REFUSED."""
    try:
        plan = plan_fn()
        show_plan(plan)
        if args.dry_run:
            print("dry run: nothing pushed")
            return 0
        pushed = execute(plan, out=args.out, sbom=not args.no_sbom, docker=args.docker)
    except GateRefused as exc:
        print(f"imagectl {command}: {exc}", file=sys.stderr)
        print(f"imagectl {command}: nothing was pushed", file=sys.stderr)
        return EXIT_REFUSED
    except (DockerError, RegistryError, PushFailed, subprocess.TimeoutExpired) as exc:
        print(f"imagectl {command}: error: {exc}", file=sys.stderr)
        return 1
    for p in pushed:
        print(f"{p.layer}: {p.digest} (image {p.image_id[:19]}; record {p.record_dir})")
    return 0


def run(args: argparse.Namespace) -> int:
    """Push a variant's images only if the exact image IDs passed the smoke suite; record digests."""
    matrix = load_matrix(args.matrix)
    layers = tuple(x.strip() for x in args.layers.split(",") if x.strip()) or None

    def plan() -> ReleasePlan:
        check_destination(args.registry, args.repository or matrix.image.name)  # before Docker is asked anything
        require_engine()
        return plan_release(matrix, args.variant, args.registry, layers=layers, repository=args.repository,
                            local_name=args.local_name, report_files=args.report, report_dirs=args.reports_dir,
                            allow_cpu_only=args.allow_cpu_only, docker=args.docker, tag_suffix=args.tag_suffix)

    return push_planned(plan, args, "push")
