"""The smoke report (JSON, schema 1) and the suite's check list: the one schema the suite and the
release gate share.

The suite writes a ``SmokeReport``; ``imagectl``'s gate reads it back with ``SmokeReport.from_json``
and decides from the per-check outcomes, never from the summary fields a file carries (they are
written for people; ``from_json`` ignores them). ``SuiteChecks`` is the list of checks an image's
own suite contains, recorded in the image at build time (``smoke --list-checks``), so the gate
knows what a complete run of that image's suite is.

This module is stdlib-only on purpose: the host tool imports it without torch or zarr.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = 1
OUTCOMES = ("passed", "failed", "skipped", "error")
MODES = ("gpu", "cpu")
#: Where the build records the suite's check list inside an image.
SUITE_CHECKS_PATH = "/opt/pytorch-cuda/suite-checks.json"


class ReportFormatError(ValueError):
    """A report (or check list) does not follow the schema; the message names the key."""


@dataclass
class CheckResult:
    name: str  # the pytest node id, e.g. test_smoke_cuda.py::test_matmul_matches_cpu_reference
    outcome: str  # one of OUTCOMES
    duration_s: float = 0.0
    reason: str | None = None  # skip reason or failure message
    figures: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False  # marked `gpu` in the suite (needs a CUDA device)


@dataclass
class SmokeReport:
    image_ref: str | None
    variant: str | None
    build_info: dict[str, Any] | None
    mode: str  # "gpu" or "cpu"
    expect: str | None
    host: dict[str, Any]
    checks: list[CheckResult]
    started_at: str
    finished_at: str
    duration_s: float
    image_id: str | None = None
    schema: int = SCHEMA

    # -- verdicts, always recomputed from the checks -------------------------------------------
    @property
    def summary(self) -> dict[str, int]:
        return summarize(self.checks)

    @property
    def passed(self) -> bool:
        """No failed and no errored check, and at least one check ran (all-skipped is no pass)."""
        return gate_passed(self.summary)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if c.outcome in ("failed", "error")]

    @property
    def host_gpus(self) -> list[dict[str, Any]]:
        """The GPUs NVML listed on the host that ran the suite: only entries naming the device and its
        architecture count (an empty ``{}`` is no GPU)."""
        gpus = (self.host or {}).get("gpus")
        if not isinstance(gpus, list):
            return []
        return [g for g in gpus if isinstance(g, dict) and isinstance(g.get("name"), str) and g["name"].strip()
                and isinstance(g.get("sm"), str) and re.fullmatch(r"sm_\d+[a-z]?", g["sm"])]

    @property
    def gpu_verified(self) -> bool:
        """Ran in GPU mode with GPU failures enforced, on a host whose NVML listed a GPU, and every
        check marked ``gpu`` ran and passed. (The gate also checks the list against the image's own.)"""
        gpu_checks = [c for c in self.checks if c.gpu]
        return (self.mode == "gpu" and self.expect == "gpu" and bool(self.host_gpus) and self.passed
                and bool(gpu_checks) and all(c.outcome == "passed" for c in gpu_checks))

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "image_id": self.image_id, "image_ref": self.image_ref,
            "variant": self.variant, "build_info": self.build_info, "mode": self.mode,
            "expect": self.expect, "passed": self.passed, "summary": self.summary, "host": self.host,
            "checks": [asdict(c) for c in self.checks], "started_at": self.started_at,
            "finished_at": self.finished_at, "duration_s": round(self.duration_s, 3),
        }

    @classmethod
    def from_json(cls, data: Any) -> SmokeReport:
        """Parse a report strictly. ``passed`` and ``summary`` in the file are ignored: they are
        recomputed from the checks, so a hand-edited summary changes nothing."""
        if not isinstance(data, Mapping):
            raise ReportFormatError(f"a smoke report is a JSON object, not {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ReportFormatError(f"schema {data.get('schema')!r} is not {SCHEMA} (written by another "
                                    "version of the suite: run the suite again)")
        mode = _field(data, "mode", str)
        if mode not in MODES:
            raise ReportFormatError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        expect = _field(data, "expect", str, optional=True)
        if expect not in (None, *MODES):
            raise ReportFormatError(f"expect {expect!r} is not one of gpu, cpu or null")
        raw_checks = _field(data, "checks", list)
        checks: list[CheckResult] = []
        seen: set[str] = set()
        for i, c in enumerate(raw_checks):
            if not isinstance(c, Mapping):
                raise ReportFormatError(f"checks[{i}] is not an object")
            name = _field(c, "name", str, where=f"checks[{i}]")
            outcome = _field(c, "outcome", str, where=f"checks[{i}]")
            if outcome not in OUTCOMES:
                raise ReportFormatError(f"checks[{i}] ({name}): outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
            if name in seen:
                raise ReportFormatError(f"checks[{i}]: check {name!r} appears twice")
            seen.add(name)
            figures = c.get("figures") or {}
            checks.append(CheckResult(name=name, outcome=outcome, duration_s=float(c.get("duration_s") or 0.0),
                                      reason=c.get("reason"), figures=dict(figures) if isinstance(figures, Mapping) else {},
                                      gpu=bool(c.get("gpu", False))))
        host = data.get("host") or {}
        build_info = data.get("build_info")
        return cls(image_ref=_field(data, "image_ref", str, optional=True),
                   variant=_field(data, "variant", str, optional=True),
                   build_info=dict(build_info) if isinstance(build_info, Mapping) else None,
                   mode=mode, expect=expect, host=dict(host) if isinstance(host, Mapping) else {},
                   checks=checks, started_at=str(data.get("started_at") or ""),
                   finished_at=str(data.get("finished_at") or ""), duration_s=float(data.get("duration_s") or 0.0),
                   image_id=_field(data, "image_id", str, optional=True))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SmokeReport:
        """Read and parse a report file; ReportFormatError (naming the file) when it is not one."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportFormatError(f"{p}: not a readable JSON smoke report ({exc})") from None
        try:
            return cls.from_json(data)
        except ReportFormatError as exc:
            raise ReportFormatError(f"{p}: {exc}") from None


@dataclass(frozen=True)
class SuiteCheck:
    name: str
    gpu: bool  # marked `gpu`: must run (and pass) in a GPU-verified run


@dataclass(frozen=True)
class SuiteChecks:
    """The checks an image's suite contains (recorded at build time by ``smoke --list-checks``)."""

    checks: tuple[SuiteCheck, ...]
    schema: int = SCHEMA

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks)

    @property
    def gpu_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if c.gpu)

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_json(cls, data: Any) -> SuiteChecks:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise ReportFormatError(f"not a schema-{SCHEMA} suite check list")
        raw = _field(data, "checks", list)
        checks = []
        for i, c in enumerate(raw):
            if not isinstance(c, Mapping):
                raise ReportFormatError(f"checks[{i}] is not an object")
            checks.append(SuiteCheck(_field(c, "name", str, where=f"checks[{i}]"), bool(c.get("gpu", False))))
        if not checks:
            raise ReportFormatError("the suite check list is empty")
        return cls(tuple(checks))


def _field(data: Mapping[str, Any], key: str, kind: type, *, optional: bool = False, where: str = "") -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        at = f"{where}." if where else ""
        raise ReportFormatError(f"{at}{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def summarize(checks: list[CheckResult]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for c in checks:
        counts["errors" if c.outcome == "error" else c.outcome] += 1
    return counts


def gate_passed(summary: dict[str, int]) -> bool:
    """No failure and no error, and at least one check actually ran (all-skipped is not a pass)."""
    ran = summary["passed"] + summary["failed"] + summary["errors"]
    return summary["failed"] == 0 and summary["errors"] == 0 and ran > 0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def write_report(report: SmokeReport | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a report."""
    data = report.to_json() if isinstance(report, SmokeReport) else report
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".smoke-report-", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(_json_safe(data), fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def check_writable(path: str | os.PathLike[str]) -> str | None:
    """Why a report could not be written to ``path`` (None: it can). Checked before a run, so a
    suite of many minutes never ends in a lost report: the folder is made (as the write would) and a
    probe file is created and removed in it."""
    target = Path(path)
    if target.is_dir():
        return f"{target} is a folder: name a file in it, e.g. {target / 'smoke-report.json'}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".smoke-report-probe-", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return (f"{exc.strerror or exc} ({exc.filename or target.parent}) for uid {os.getuid()}: name a file in a "
                "folder this user can write")
    if target.exists() and not os.access(target, os.W_OK):
        return f"{target} exists and uid {os.getuid()} may not replace it"
    return None


def _format_figures(figures: dict[str, Any], limit: int = 70) -> str:
    parts = []
    for k, v in figures.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, dict | list):
            continue  # nested detail stays in the JSON
        parts.append(f"{k}={v}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_table(report: SmokeReport) -> str:
    """Readable end-of-run table: one row per check, then the verdict."""
    rows = [("check", "outcome", "time", "figures / reason")]
    for c in report.checks:
        detail = _format_figures(c.figures) if c.outcome == "passed" else (c.reason or "")
        detail = " ".join(detail.split())
        if len(detail) > 90:
            detail = detail[:89] + "…"
        rows.append((c.name, c.outcome.upper() if c.outcome != "passed" else c.outcome,
                     f"{c.duration_s:.1f}s", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3]]).rstrip()
             for r in rows]
    lines.insert(1, "-" * min(140, max(len(x) for x in lines)))
    s = report.summary
    verdict = "PASSED" if report.passed else "FAILED"
    why = "" if report.passed or s["failed"] or s["errors"] else " (no check ran)"
    lines.append("")
    lines.append(f"smoke {verdict}{why}: {s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped, "
                 f"{s['errors']} errors in {report.duration_s:.1f}s; mode={report.mode}"
                 f" expect={report.expect or 'unset'} variant={report.variant or 'unknown'}")
    return "\n".join(lines)
