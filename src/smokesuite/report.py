"""The smoke report (JSON, schema 1): what the release gate reads, and the summary table."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = 1
OUTCOMES = ("passed", "failed", "skipped", "error")


@dataclass
class CheckResult:
    name: str
    outcome: str  # one of OUTCOMES
    duration_s: float = 0.0
    reason: str | None = None  # skip reason or failure message
    figures: dict[str, Any] = field(default_factory=dict)


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

    @property
    def summary(self) -> dict[str, int]:
        return summarize(self.checks)

    @property
    def passed(self) -> bool:
        return gate_passed(self.summary)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "image_id": self.image_id, "image_ref": self.image_ref,
            "variant": self.variant, "build_info": self.build_info, "mode": self.mode,
            "expect": self.expect, "passed": self.passed, "summary": self.summary, "host": self.host,
            "checks": [asdict(c) for c in self.checks], "started_at": self.started_at,
            "finished_at": self.finished_at, "duration_s": round(self.duration_s, 3),
        }


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
