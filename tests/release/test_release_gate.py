"""The gate's decisions and the release tags, from reports and labels alone (no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_helpers import SUITE, write_report

from imagectl import ci_matrix
from imagectl.gate import Expectation, choose, is_gpu_verified, reasons
from imagectl.matrix import load_matrix
from imagectl.push import GateRefused, find_reports
from imagectl.refs import InvalidReferenceError, parse_registry
from imagectl.release_tags import Stamp, TagError, release_tags
from smokesuite.report import ReportFormatError, SmokeReport, SuiteCheck, SuiteChecks

ID = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
SUITE_CHECKS = SuiteChecks(tuple(SuiteCheck(n, g) for n, g in SUITE))


def _report(tmp_path: Path, name: str = "r.json", **kw: object) -> SmokeReport:
    return SmokeReport.load(write_report(tmp_path / name, kw.pop("image_id", ID), **kw))  # type: ignore[arg-type]


def _why(report: SmokeReport, gpu: bool = True) -> str:
    return " | ".join(reasons(report, Expectation(ID, "cu124", SUITE_CHECKS, require_gpu=gpu)))


def test_a_complete_gpu_run_releases(tmp_path: Path) -> None:
    r = _report(tmp_path)
    assert _why(r) == "" and is_gpu_verified(r, SUITE_CHECKS)


def test_refusals_are_recomputed_from_the_checks(tmp_path: Path) -> None:
    assert "not sha256:aaaa" in _why(_report(tmp_path, image_id=OTHER))
    assert "variant 'cu118'" in _why(_report(tmp_path, variant="cu118"))
    # the summary claims a pass, a check failed: the check decides
    assert "1 check(s) failed" in _why(_report(tmp_path, failed=1, passed=True))
    # a report claiming GPU mode whose host saw no GPU
    assert "host facts list no GPU" in _why(_report(tmp_path, host={"gpus": []}))
    # ... or only an empty entry where NVML would name the device and its architecture
    assert "host facts list no GPU" in _why(_report(tmp_path, host={"driver": "580.1", "gpus": [{}]}))
    assert "host facts list no GPU" in _why(_report(tmp_path, host={"gpus": [{"name": "x", "sm": "fast"}]}))
    # GPU mode, but the GPU checks were skipped
    assert "GPU check(s) did not pass" in _why(_report(tmp_path, gpu_outcome="skipped"))
    cpu = _report(tmp_path, mode="cpu", expect="cpu")
    assert "a release needs a GPU run" in _why(cpu)
    assert _why(cpu, gpu=False) == "" and not is_gpu_verified(cpu, SUITE_CHECKS)
    # GPU host without SMOKE_EXPECT=gpu: skips would not have failed, so it is no GPU release
    assert "a release needs a GPU run" in _why(_report(tmp_path, expect=None))


def test_a_hand_written_one_check_report_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"schema": 1, "image_id": ID, "variant": "cu124", "mode": "gpu", "expect": "gpu",
                                "passed": True, "summary": {"passed": 99}, "host": {"gpus": [{"name": "H200"}]},
                                "checks": [{"name": "test_everything", "outcome": "passed"}]}))
    why = _why(SmokeReport.load(path))
    assert "lacks 4 of the 4 checks" in why and "checks the image's suite does not contain (test_everything)" in why


def test_summary_fields_are_ignored_when_parsing(tmp_path: Path) -> None:
    r = _report(tmp_path, failed=2, passed=True)
    assert r.passed is False and r.summary["failed"] == 2


def test_malformed_reports_name_the_key(tmp_path: Path) -> None:
    for doc, msg in (({"schema": 2}, "schema 2"), ({"schema": 1, "mode": "tpu", "checks": []}, "mode 'tpu'"),
                     ({"schema": 1, "mode": "gpu", "checks": [{"name": "x", "outcome": "great"}]}, "outcome 'great'"),
                     ({"schema": 1, "mode": "gpu", "checks": "all"}, "checks must be a list")):
        with pytest.raises(ReportFormatError, match=msg):
            SmokeReport.from_json(doc)


def test_gate_prefers_a_gpu_verified_report(tmp_path: Path) -> None:
    cpu, gpu = _report(tmp_path, "a.json", mode="cpu", expect="cpu"), _report(tmp_path, "b.json")
    chosen, _ = choose([cpu, gpu], Expectation(ID, "cu124", SUITE_CHECKS, require_gpu=False))
    assert chosen is gpu


def test_find_reports_skips_other_json_but_rejects_named_junk(tmp_path: Path) -> None:
    write_report(tmp_path / "r.json", ID)
    (tmp_path / "other.json").write_text('{"not": "a report"}')
    assert [Path(f.source).name for f in find_reports([], [tmp_path])] == ["r.json"]
    with pytest.raises(GateRefused, match=r"other\.json"):
        find_reports([tmp_path / "other.json"], [])


@pytest.mark.parametrize(("text", "msg"), [
    ("http://127.0.0.1:5000", "has a scheme"), ("https://ghcr.io/acme", "has a scheme"), ("acme", "not a registry host"),
    ("ghcr.io/Acme", "not valid"), ("ghcr.io//x", "empty path component"), ("host:99999", "not a valid host"),
    ("", "no registry given")])
def test_registry_references_are_validated(text: str, msg: str) -> None:
    with pytest.raises(InvalidReferenceError, match=msg):
        parse_registry(text)


def test_valid_registry_references() -> None:
    for text in ("ghcr.io/acme", "127.0.0.1:5000", "localhost:5000/team/ml", "[::1]:5000", "registry.local:443/a_b"):
        assert str(parse_registry(text)) == text


def test_release_tags() -> None:
    m = load_matrix()
    stamp = Stamp.from_labels({"org.opencontainers.image.revision": "abcdef0123456789",
                               "org.opencontainers.image.created": "2026-11-30T01:02:03Z"})
    d = m.variant(m.default_variant)
    assert release_tags(m, d, "data", stamp) == ["v2.6-cu124", "v2.6", "v2.6-cu124-20261130-abcdef0"]
    assert release_tags(m, d, "torch", None) == ["v2.6-cu124-torch"]
    assert release_tags(m, d, "base", None) == ["cu124-base"]
    assert release_tags(m, m.variant("cu118"), "data", stamp) == ["v2.6-cu118", "v2.6-cu118-20261130-abcdef0"]
    assert release_tags(m, d, "base", None, gpu_verified=False) == ["cu124-base-gpu-unverified"]
    with pytest.raises(TagError, match="not a git commit"):
        Stamp.from_labels({"org.opencontainers.image.revision": "unknown"})


def test_ci_matrix_comes_from_the_matrix() -> None:
    m = load_matrix()
    out = ci_matrix.build(m)
    assert [(e["variant"], e["platform"]) for e in out["include"]] == [
        (v.name, p) for v in m.variants.values() for p in v.platforms]
    default = next(e for e in out["include"] if e["variant"] == m.default_variant)
    assert default["image"] == "pytorch-cuda:v2.6-cu124" and default["default"] is True
    arm = next(e for e in out["include"] if e["platform"] == "linux/arm64")
    assert arm["variant"] == "cu126" and arm["runner"] == "ubuntu-24.04-arm" and "arm64" in arm["gpu_runner"]


def test_ci_matrix_github_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from imagectl.cli import main

    out = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    assert main(["ci-matrix", "--github-output"]) == 0
    printed = json.loads(capsys.readouterr().out)
    key, _, value = out.read_text().strip().partition("=")
    assert key == "matrix" and json.loads(value) == printed
    assert len(printed["include"]) == sum(len(v.platforms) for v in load_matrix().variants.values())
