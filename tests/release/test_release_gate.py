"""The gate's decisions and the release tags, from reports and labels alone (no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_helpers import write_report

from imagectl import ci_matrix
from imagectl.matrix import load_matrix
from imagectl.push import GateRefused, Report, find_reports, gate_report, judge
from imagectl.release_tags import Stamp, TagError, release_tags

ID = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def _report(tmp_path: Path, name: str = "r.json", **kw: object) -> Report:
    path = write_report(tmp_path / name, kw.pop("image_id", ID), **kw)  # type: ignore[arg-type]
    return Report(path, json.loads(path.read_text()))


def test_judge(tmp_path: Path) -> None:
    assert judge(_report(tmp_path), ID, "cu124", allow_cpu_only=False) is None
    assert "not sha256:aaaa" in (judge(_report(tmp_path, image_id=OTHER), ID, "cu124", False) or "")
    assert "variant 'cu118'" in (judge(_report(tmp_path, variant="cu118"), ID, "cu124", False) or "")
    assert "did not pass" in (judge(_report(tmp_path, passed=False), ID, "cu124", False) or "")
    assert "did not pass: 1 failed" in (judge(_report(tmp_path, failed=1), ID, "cu124", False) or "")
    cpu = _report(tmp_path, mode="cpu", expect="cpu")
    assert "needs a GPU run" in (judge(cpu, ID, "cu124", False) or "")
    assert judge(cpu, ID, "cu124", allow_cpu_only=True) is None
    # A GPU host that ran without SMOKE_EXPECT=gpu could have skipped GPU checks: not a release.
    assert "needs a GPU run" in (judge(_report(tmp_path, expect=None), ID, "cu124", False) or "")


def test_report_claiming_pass_with_failures_is_refused(tmp_path: Path) -> None:
    r = _report(tmp_path, failed=1)
    r.data["passed"] = True  # inconsistent report: the counts still refuse it
    assert "did not pass" in (judge(r, ID, "cu124", False) or "")


def test_gate_prefers_gpu_report(tmp_path: Path) -> None:
    cpu, gpu = _report(tmp_path, "a.json", mode="cpu", expect="cpu"), _report(tmp_path, "b.json")
    assert gate_report(ID, "x", "cu124", [cpu, gpu], allow_cpu_only=True, searched="") is gpu
    with pytest.raises(GateRefused, match="no smoke report for this image ID"):
        gate_report(ID, "x", "cu124", [], allow_cpu_only=False, searched="build")


def test_find_reports_skips_other_json_but_rejects_named_junk(tmp_path: Path) -> None:
    write_report(tmp_path / "r.json", ID)
    (tmp_path / "other.json").write_text('{"not": "a report"}')
    assert [r.path.name for r in find_reports([], [tmp_path])] == ["r.json"]
    with pytest.raises(GateRefused, match="not a smoke report"):
        find_reports([tmp_path / "other.json"], [])


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
    assert [e["variant"] for e in out["include"]] == list(m.variants)
    default = next(e for e in out["include"] if e["variant"] == m.default_variant)
    assert default["image"] == "pytorch-cuda:v2.6-cu124" and default["default"] is True


def test_ci_matrix_github_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from imagectl.cli import main

    out = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    assert main(["ci-matrix", "--github-output"]) == 0
    printed = json.loads(capsys.readouterr().out)
    key, _, value = out.read_text().strip().partition("=")
    assert key == "matrix" and json.loads(value) == printed
    assert len(printed["include"]) == len(load_matrix().variants)
