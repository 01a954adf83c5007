"""The release gate against a real registry on loopback, with real docker push and pull."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from release_helpers import GateImages, image_id, write_report

from imagectl import push
from imagectl.matrix import Matrix
from imagectl.registry import LocalRegistry, manifest_info

pytestmark = pytest.mark.docker


def _push_cli(images: GateImages, registry: LocalRegistry, reports: Path, out: Path, *extra: str,
              ) -> subprocess.CompletedProcess[str]:
    """`imagectl push` exactly as `make push` runs it (plus the test's names and folders)."""
    cmd = [sys.executable, "-m", "imagectl.cli", "push", "--variant", "cu124", "--registry", registry.address,
           "--local-name", images.name, "--repository", images.name, "--reports-dir", str(reports),
           "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _expected_tags(matrix: Matrix, suffix: str = "") -> set[str]:
    v = matrix.variant("cu124")
    tags = {*matrix.tags_for(v, "data"), *matrix.tags_for(v, "torch"), *matrix.tags_for(v, "base"),
            "v2.6-cu124-20261130-0123456"}
    return {t + suffix for t in tags}


def test_refused_without_report(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    images.build()
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out")
    assert res.returncode == push.EXIT_REFUSED, res.stdout + res.stderr
    assert "no smoke report for this image ID" in res.stderr
    assert "imagectl smoke" in res.stderr  # the fix is named
    assert "nothing was pushed" in res.stderr
    assert images.name not in registry.catalog()


def test_refused_with_failing_report(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"], failed=2)
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out")
    assert res.returncode == push.EXIT_REFUSED
    assert "2 check(s) failed or errored" in res.stderr and "test_torch_matches_pin (failed)" in res.stderr
    assert images.name not in registry.catalog()


def _refused(images: GateImages, registry: LocalRegistry, tmp_path: Path, *extra: str) -> str:
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--no-sbom", *extra)
    assert res.returncode == push.EXIT_REFUSED, res.stdout + res.stderr
    assert "nothing was pushed" in res.stderr
    assert images.name not in registry.catalog()
    return res.stderr


def test_refused_when_the_summary_lies(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    """"passed": true and a check whose outcome is failed: the check decides."""
    ids = images.build()
    report = write_report(tmp_path / "reports/r.json", ids["data"], failed=1, passed=True)
    doc = json.loads(report.read_text())
    doc["summary"] = {"passed": 4, "failed": 0, "skipped": 0, "errors": 0}
    report.write_text(json.dumps(doc))
    assert "1 check(s) failed" in _refused(images, registry, tmp_path)


def test_refused_hand_written_one_check_report(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    """Ten lines by hand, for an image that never ran the suite: it lacks the image's own checks."""
    ids = images.build()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/fake.json").write_text(json.dumps({
        "schema": 1, "image_id": ids["data"], "variant": "cu124", "mode": "gpu", "expect": "gpu",
        "passed": True, "host": {"gpus": [{"index": 0, "name": "NVIDIA H200"}]},
        "checks": [{"name": "test_all_good", "outcome": "passed"}]}, indent=1))
    err = _refused(images, registry, tmp_path)
    assert "lacks 4 of the 4 checks the image's suite contains" in err and "test_all_good" in err


def test_refused_gpu_claim_without_a_gpu(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"], host={"driver": None, "gpus": []})
    assert "host facts list no GPU" in _refused(images, registry, tmp_path)


def test_refused_gpu_checks_that_did_not_run(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"], gpu_outcome="skipped")
    assert "GPU check(s) did not pass" in _refused(images, registry, tmp_path)


def test_refused_report_for_another_variant(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"], variant="cu126")
    assert "variant 'cu126', not 'cu124'" in _refused(images, registry, tmp_path)


def test_registry_with_a_scheme_is_refused_first(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"])
    cmd = [sys.executable, "-m", "imagectl.cli", "push", "--variant", "cu124", "--registry",
           f"http://{registry.address}", "--local-name", images.name, "--reports-dir", str(tmp_path / "reports"),
           "--dry-run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"})  # docker never asked
    assert res.returncode == push.EXIT_REFUSED, res.stdout + res.stderr
    assert "has a scheme (http://)" in res.stderr and f"--registry {registry.address}" in res.stderr
    assert "gate ok" not in res.stdout


def test_refused_when_image_changed_after_report(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    old = images.build()["data"]
    write_report(tmp_path / "reports/r.json", old)
    new = images.build(data_content="data v2 (changed after the smoke run)")["data"]
    assert new != old
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out")
    assert res.returncode == push.EXIT_REFUSED
    assert "changed after it was smoke-tested" in res.stderr and old[:19] in res.stderr
    assert images.name not in registry.catalog()


def test_cpu_report_needs_flag_and_marks_tags(images: GateImages, registry: LocalRegistry, tmp_path: Path,
                                              matrix: Matrix) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"], mode="cpu", expect="cpu")
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--no-sbom")
    assert res.returncode == push.EXIT_REFUSED
    assert "a release needs a GPU run" in res.stderr and "--allow-cpu-only" in res.stderr
    assert images.name not in registry.catalog()

    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--no-sbom", "--allow-cpu-only")
    assert res.returncode == 0, res.stderr
    assert set(registry.tags(images.name)) == _expected_tags(matrix, "-gpu-unverified")


def test_torch_image_not_inside_data_image_is_refused(images: GateImages, registry: LocalRegistry,
                                                      tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"])
    # Rebuild only base+torch from different content: they are no longer what the data image holds.
    images.build(layers=("base", "torch"), base_content="another base\n")
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--no-sbom")
    assert res.returncode == push.EXIT_REFUSED
    assert "not contained in" in res.stderr
    assert images.name not in registry.catalog()


def test_accepted_pushes_records_and_pulls_back(images: GateImages, registry: LocalRegistry, tmp_path: Path,
                                                matrix: Matrix) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"])
    out = tmp_path / "out"
    res = _push_cli(images, registry, tmp_path / "reports", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(registry.tags(images.name)) == _expected_tags(matrix)

    records = [json.loads(line) for line in (out / "pushes.jsonl").read_text().splitlines()]
    assert {r["layer"] for r in records} == {"base", "torch", "data"}
    data = next(r for r in records if r["layer"] == "data")
    assert data["image_id"] == ids["data"] and data["gpu_verified"] is True
    assert data["digest"] in res.stdout  # printed as well as recorded
    folder = Path(data["record_dir"])
    assert folder.name == data["digest"].replace(":", "-")
    assert json.loads((folder / "smoke-report.json").read_text())["image_id"] == ids["data"]
    bom = json.loads((folder / "sbom/debian.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and len(bom["components"]) > 10
    push_doc = json.loads((folder / "push.json").read_text())
    assert push_doc["sbom"]["debian"] == "sbom/debian.cdx.json"

    # The registry holds this exact image: every tag -> same digest -> config == the ID that passed.
    for ref in data["refs"]:
        info = manifest_info(ref)
        assert info is not None and (info.digest, info.config_digest) == (data["digest"], ids["data"])

    # Pull the digest into an engine that no longer has the image: same image ID.
    subprocess.run(["docker", "rmi", "-f", images.ref("data"), ids["data"]], capture_output=True)
    assert subprocess.run(["docker", "image", "inspect", ids["data"]], capture_output=True).returncode != 0
    pinned = f"{registry.address}/{images.name}@{data['digest']}"
    subprocess.run(["docker", "pull", "-q", pinned], check=True, capture_output=True, timeout=120)
    assert image_id(pinned) == ids["data"]

    # Pushing again is idempotent: same digests, immutable tag unchanged.
    images.build()
    assert _push_cli(images, registry, tmp_path / "reports", out, "--no-sbom").returncode == 0


def test_immutable_tag_is_never_moved(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    first = images.build()["data"]
    write_report(tmp_path / "reports/a.json", first)
    assert _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--no-sbom",
                     "--layers", "data").returncode == 0
    # Same commit label and date, different content: it would get the same immutable tag.
    second = images.build(data_content="rebuilt from the same commit, differently")["data"]
    write_report(tmp_path / "reports/b.json", second)
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--no-sbom", "--layers", "data")
    assert res.returncode == push.EXIT_REFUSED
    assert "immutable tags never move" in res.stderr
    info = manifest_info(f"{registry.address}/{images.name}:v2.6-cu124")
    assert info is not None and info.config_digest == first  # the moving tag was not moved either


def test_dry_run_pushes_nothing(images: GateImages, registry: LocalRegistry, tmp_path: Path) -> None:
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"])
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--dry-run")
    assert res.returncode == 0 and "dry run: nothing pushed" in res.stdout
    assert "v2.6-cu124-20261130-0123456" in res.stdout
    assert images.name not in registry.catalog()


def test_unbuilt_devel_is_left_out_by_default_but_refused_when_named(images: GateImages, registry: LocalRegistry,
                                                                       tmp_path: Path) -> None:
    """devel is an optional target: the default layer set notes its absence; --layers devel makes it an error."""
    ids = images.build()
    write_report(tmp_path / "reports/r.json", ids["data"])
    res = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "devel left out: no local image" in res.stderr and "TARGET=devel" in res.stderr
    named = _push_cli(images, registry, tmp_path / "reports", tmp_path / "out", "--dry-run",
                      "--layers", "data,devel")
    assert named.returncode == 3 and "no local image" in named.stderr and "-devel" in named.stderr
    assert "nothing was pushed" in named.stderr
