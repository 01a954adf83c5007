"""The release gate's verdict, recomputed from evidence: per-check outcomes of a smoke report, the
check list the image's own suite contains, and the host facts the report carries.

A report's ``passed``/``summary`` fields are never read (``SmokeReport.from_json`` ignores them).
The suite's check list comes from the image itself (``smoke --list-checks`` ran at build time and
wrote SUITE_CHECKS_PATH), so a report that leaves checks out — or invents them — is refused.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from smokesuite.report import SUITE_CHECKS_PATH, ReportFormatError, SmokeReport, SuiteChecks


class GateRefused(Exception):
    """The release gate refused; the message names the image, the cause and the fix. Nothing was pushed."""


@dataclass(frozen=True)
class Expectation:
    """What a report must show to release one image."""

    image_id: str
    variant: str
    suite: SuiteChecks
    require_gpu: bool  # False only with --allow-cpu-only


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def reasons(report: SmokeReport, want: Expectation) -> list[str]:
    """Every reason ``report`` does not release the image (empty: it does)."""
    why: list[str] = []
    if report.image_id != want.image_id:
        why.append(f"it is for image {(report.image_id or '(none)')[:19]}, not {want.image_id[:19]}")
        return why  # nothing else about another image's report matters
    if report.variant != want.variant:
        why.append(f"it is for variant {report.variant!r}, not {want.variant!r}")
    names = {c.name for c in report.checks}
    missing = [n for n in want.suite.names if n not in names]
    if missing:
        why.append(f"it lacks {len(missing)} of the {len(want.suite.names)} checks the image's suite contains "
                   f"({_names(missing)}): run the whole suite (`imagectl smoke IMAGE`), not a part of it")
    foreign = sorted(names - set(want.suite.names))
    if foreign:
        why.append(f"it has checks the image's suite does not contain ({_names(foreign)}): it was not written "
                   "by this image's suite")
    bad = [f"{c.name} ({c.outcome})" for c in report.failed_checks]
    if bad:
        why.append(f"{len(bad)} check(s) failed or errored: {_names(bad)}")
    if not any(c.outcome != "skipped" for c in report.checks):
        why.append("no check ran (all skipped)")
    gpus = report.host_gpus
    if report.mode == "gpu" and not gpus:
        why.append("it claims GPU mode, but its host facts list no GPU (NVML saw none)")
    if want.require_gpu:
        if report.mode != "gpu" or report.expect != "gpu":
            why.append(f"it ran in {report.mode} mode (expect={report.expect!r}); a release needs a GPU run with "
                       "GPU skips enforced: `imagectl smoke IMAGE --expect gpu` on a GPU host, or pass "
                       "--allow-cpu-only (every tag then ends in -gpu-unverified)")
        else:
            not_run = [n for n in want.suite.gpu_names if (c := report.check(n)) is not None and c.outcome != "passed"]
            if not_run:
                why.append(f"GPU check(s) did not pass: {_names(not_run)}")
    return why


def choose(reports: list[SmokeReport], want: Expectation) -> tuple[SmokeReport | None, list[tuple[SmokeReport, list[str]]]]:
    """The report that releases the image (a GPU-verified one first, then the newest), and every
    report for this image with its reasons when none does."""
    mine = [r for r in reports if r.image_id == want.image_id]
    judged = [(r, reasons(r, want)) for r in mine]
    good = [r for r, why in judged if not why]
    if good:
        return max(good, key=lambda r: (is_gpu_verified(r, want.suite), r.finished_at)), judged
    return None, judged


def is_gpu_verified(report: SmokeReport, suite: SuiteChecks) -> bool:
    """GPU mode, GPU skips enforced, a GPU on the host, and every GPU check of the image's suite passed."""
    return (report.mode == "gpu" and report.expect == "gpu" and bool(report.host_gpus)
            and bool(suite.gpu_names)
            and all((c := report.check(n)) is not None and c.outcome == "passed" for n in suite.gpu_names))


def suite_checks_of(image: str, docker: str = "docker", timeout: float = 120) -> SuiteChecks:
    """The check list recorded in ``image`` at build time, copied out of a created (never started)
    container."""
    created = subprocess.run([docker, "create", image, "true"], capture_output=True, text=True, timeout=timeout)
    if created.returncode != 0:
        raise GateRefused(f"cannot read {image}'s recorded suite: docker create failed: {created.stderr.strip()}")
    cid = created.stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="imagectl-suite-") as tmp:
            out = Path(tmp) / "suite-checks.json"
            res = subprocess.run([docker, "cp", f"{cid}:{SUITE_CHECKS_PATH}", str(out)], capture_output=True,
                                 text=True, timeout=timeout)
            if res.returncode != 0:
                raise GateRefused(f"{image} has no recorded suite check list ({SUITE_CHECKS_PATH}): it was built "
                                  "without `smoke --list-checks`; rebuild it with `make build`")
            try:
                return SuiteChecks.from_json(json.loads(out.read_text()))
            except (json.JSONDecodeError, ReportFormatError) as exc:
                raise GateRefused(f"{image}: {SUITE_CHECKS_PATH} is unusable ({exc}); rebuild the image") from None
    finally:
        subprocess.run([docker, "rm", cid], capture_output=True, timeout=timeout)
