"""pytest plugin that turns test reports into the smoke report's ``checks``.

Figures: a test records numbers through the ``figures`` fixture (or pytest's ``record_property``);
both land in ``user_properties``, which every phase report carries.
"""

from __future__ import annotations

from typing import Any

import pytest

from smokesuite.report import CheckResult, SuiteCheck, SuiteChecks


class Figures:
    """Record measured numbers on the running test: ``figures["algbw_gbps"] = 91.3``."""

    def __init__(self, node: pytest.Item) -> None:
        self._node = node
        self.values: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, float):
            value = float(f"{value:.6g}")  # significant digits: tiny errors must not round to 0
        self.values[key] = value
        self._node.user_properties.append((key, value))

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def update(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self[k] = v


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    longrepr = report.longrepr
    if longrepr is None:
        return None
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # skip: (path, lineno, reason)
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message).removeprefix("Failed: ")  # pytest.fail()'s prefix
    text = str(longrepr).strip()
    return text.splitlines()[-1] if text else None


class ReportCollector:
    """Registered as a plugin by the runner; ``checks`` holds one CheckResult per test."""

    def __init__(self) -> None:
        self._by_id: dict[str, CheckResult] = {}

    @property
    def checks(self) -> list[CheckResult]:
        return list(self._by_id.values())

    def _check(self, nodeid: str) -> CheckResult:
        if nodeid not in self._by_id:
            self._by_id[nodeid] = CheckResult(name=nodeid, outcome="passed")
        return self._by_id[nodeid]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:  # a test file that cannot even be imported fails the run
            c = self._check(report.nodeid or "collection")
            c.outcome = "error"
            c.reason = _reason(report) or "collection failed"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        c = self._check(report.nodeid)
        c.gpu = c.gpu or "gpu" in report.keywords  # the suite's `gpu` marker
        c.duration_s = round(c.duration_s + float(report.duration), 3)
        for key, value in report.user_properties:
            c.figures[str(key)] = value
        if report.when == "call":
            if report.failed:
                c.outcome, c.reason = "failed", _reason(report)
            elif report.skipped:
                c.outcome, c.reason = "skipped", _reason(report)
            elif hasattr(report, "wasxfail"):
                c.reason = f"xfail: {report.wasxfail}"
        elif report.when == "setup":
            if report.failed:
                reason = _reason(report)
                # a GPU fixture that found no GPU under SMOKE_EXPECT=gpu: a failed check, not a broken one
                gpu_expected = (reason or "").startswith("SMOKE_EXPECT=gpu")
                c.outcome, c.reason = ("failed" if gpu_expected else "error"), reason
            elif report.skipped:
                c.outcome, c.reason = "skipped", _reason(report)
        elif report.when == "teardown" and report.failed and c.outcome in ("passed", "skipped"):
            c.outcome, c.reason = "error", f"teardown: {_reason(report)}"


class CheckLister:
    """Registered by ``smoke --list-checks``: the checks the suite contains, as collected."""

    def __init__(self) -> None:
        self.checks: list[SuiteCheck] = []
        self.errors: list[str] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors.append(f"{report.nodeid or 'collection'}: {_reason(report) or 'collection failed'}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.checks = [SuiteCheck(item.nodeid, item.get_closest_marker("gpu") is not None) for item in session.items]

    def result(self) -> SuiteChecks:
        return SuiteChecks(tuple(self.checks))
