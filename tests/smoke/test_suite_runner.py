"""The `smoke` runner end to end on small suites: report keys, outcomes, figures, exit codes,
SMOKE_EXPECT semantics."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from smokesuite.report import CheckResult, SmokeReport, format_table, gate_passed, summarize, write_report

REPORT_KEYS = {"schema", "image_id", "image_ref", "variant", "build_info", "mode", "expect", "passed", "summary",
               "host", "checks", "started_at", "finished_at", "duration_s"}

SUITE = '''
import pytest
from smokesuite.expect import gpu_skip

@pytest.fixture
def gpu():
    gpu_skip("no CUDA device is visible")

def test_measures(record_property):
    record_property("mib_per_s", 123.5)

def test_plain_skip():
    pytest.skip("not a GPU reason")

def test_gpu_in_body():
    gpu_skip("no GPU here")

def test_gpu_in_fixture(gpu):
    pass
'''


def write_suite(tmp_path: Path, body: str, name: str = "test_smoke_x.py") -> Path:
    d = tmp_path / "suite"
    d.mkdir(exist_ok=True)
    (d / name).write_text(textwrap.dedent(body))
    return d


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"].split("::")[-1]: c for c in report["checks"]}


def test_cpu_mode_report(tmp_path: Path, run_smoke) -> None:
    code, report, out = run_smoke(write_suite(tmp_path, SUITE), "--expect", "cpu", "--image-ref", "img:tag")
    assert code == 0, out
    assert set(report) >= REPORT_KEYS
    assert report["schema"] == 1 and report["image_id"] is None and report["image_ref"] == "img:tag"
    assert report["mode"] == "cpu" and report["expect"] == "cpu" and report["passed"] is True
    assert report["summary"] == {"passed": 1, "failed": 0, "skipped": 3, "errors": 0}
    assert set(report["host"]) == {"driver", "cuda_driver", "gpus"}
    checks = by_name(report)
    assert checks["test_measures"]["figures"] == {"mib_per_s": 123.5}
    assert checks["test_plain_skip"]["reason"] == "not a GPU reason"
    assert "smoke PASSED" in out and "report:" in out


def test_expect_gpu_turns_gpu_skips_into_failures(tmp_path: Path, run_smoke) -> None:
    code, report, out = run_smoke(write_suite(tmp_path, SUITE), env={"SMOKE_EXPECT": "gpu"})
    assert code == 1, out
    assert report["expect"] == "gpu" and report["passed"] is False
    checks = by_name(report)
    assert checks["test_gpu_in_body"]["outcome"] == "failed"
    assert checks["test_gpu_in_fixture"]["outcome"] == "failed"
    assert "SMOKE_EXPECT=gpu" in checks["test_gpu_in_fixture"]["reason"]
    assert checks["test_plain_skip"]["outcome"] == "skipped"  # non-GPU skips stay skips


def test_failure_and_collection_error_fail_the_run(tmp_path: Path, run_smoke) -> None:
    suite = write_suite(tmp_path, "def test_bad():\n    assert 1 == 2, 'numbers differ'\n")
    (suite / "test_smoke_broken.py").write_text("import no_such_module_here\n")
    code, report, out = run_smoke(suite, "--expect", "cpu")
    assert code == 1, out
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    assert outcomes["test_smoke_x.py::test_bad"] == "failed"
    assert "error" in outcomes.values()
    assert "numbers differ" in by_name(report)["test_bad"]["reason"]


def test_nothing_ran_is_a_failure(tmp_path: Path, run_smoke) -> None:
    code, report, out = run_smoke(write_suite(tmp_path, "import pytest\n\ndef test_s():\n    pytest.skip('x')\n"),
                                  "--expect", "cpu")
    assert code == 1 and report["passed"] is False and "no check ran" in out
    code, report, _ = run_smoke(write_suite(tmp_path, "X = 1\n"), "--expect", "cpu", "-k", "nothing")
    assert code == 1 and report["checks"] == []


def test_gate_logic_and_table() -> None:
    assert not gate_passed({"passed": 0, "failed": 0, "skipped": 5, "errors": 0})
    assert not gate_passed({"passed": 3, "failed": 0, "skipped": 0, "errors": 1})
    assert gate_passed({"passed": 1, "failed": 0, "skipped": 9, "errors": 0})
    checks = [CheckResult("a::t1", "passed", 1.0, figures={"ratio": 0.91234}), CheckResult("a::t2", "error", 0.1, "boom")]
    assert summarize(checks) == {"passed": 1, "failed": 0, "skipped": 0, "errors": 1}
    rep = SmokeReport(image_ref=None, variant="cu124", build_info=None, mode="cpu", expect=None, host={},
                      checks=checks, started_at="t0", finished_at="t1", duration_s=1.1)
    table = format_table(rep)
    assert "ratio=0.9123" in table and "ERROR" in table and "boom" in table and "smoke FAILED" in table


def test_report_is_written_atomically_and_json_safe(tmp_path: Path) -> None:
    rep = SmokeReport(image_ref="x", variant=None, build_info=None, mode="gpu", expect="gpu", host={},
                      checks=[CheckResult("t", "passed", figures={"inf": float("inf")})],
                      started_at="a", finished_at="b", duration_s=0.5)
    path = write_report(rep, tmp_path / "sub" / "r.json")
    data = json.loads(path.read_text())
    assert data["checks"][0]["figures"]["inf"] is None and data["passed"] is True
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_bad_expect_is_a_usage_error(tmp_path: Path, run_smoke) -> None:
    code, _, out = run_smoke(write_suite(tmp_path, "def test_a():\n    pass\n"), env={"SMOKE_EXPECT": "tpu"})
    assert code == 2 and "SMOKE_EXPECT" in out


@pytest.mark.parametrize("suite_dir", ["smoke_tests"])
def test_suite_files_never_write_into_their_directory(suite_dir: str) -> None:
    ini = (Path(__file__).resolve().parents[2] / suite_dir / "pytest.ini").read_text()
    assert "no:cacheprovider" in ini
