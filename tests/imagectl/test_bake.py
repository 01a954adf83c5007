"""The bake plan rendered from the matrix, and the Dockerfile that consumes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagectl.bake import BuildContext, build_args, render
from imagectl.matrix import LAYERS, load_matrix


@pytest.fixture(scope="module")
def plan() -> dict:
    m = load_matrix()
    ctx = BuildContext(os_image=m.image.os_image, python=m.image.python, git_sha="abc1234", created="2026-01-01T00:00:00Z")
    return render(m, ctx)


def test_targets_per_variant_and_layer_with_abstract_parents(plan: dict) -> None:
    m = load_matrix()
    expected = {f"{v.name}-{layer}" for v in m.variants.values() for layer in m.layers_of(v)}
    assert set(plan["target"]) == expected
    assert "cu124-devel" in expected and "cu118-devel" not in expected  # devel only where the matrix has it
    for name, target in plan["target"].items():
        assert target["inherits"] == [f"_{name.rsplit('-', 1)[1]}"]


def test_groups(plan: dict) -> None:
    assert plan["group"]["default"]["targets"] == ["cu124-data"]
    m = load_matrix()
    assert len(plan["group"]["all"]["targets"]) == sum(len(m.layers_of(v)) for v in m.variants.values())
    assert plan["group"]["cu118"]["targets"] == ["cu118-base", "cu118-torch", "cu118-data"]
    assert plan["group"]["cu124"]["targets"] == ["cu124-base", "cu124-torch", "cu124-data", "cu124-devel"]


def test_platforms_are_rendered_per_variant(plan: dict) -> None:
    m = load_matrix()
    for v in m.variants.values():
        assert plan["target"][f"{v.name}-data"]["platforms"] == list(v.platforms)
    assert "linux/arm64" in plan["target"]["cu126-data"]["platforms"]


def test_arm64_torch_pins_where_no_cuda_build_exists() -> None:
    m = load_matrix()
    v = m.variant("cu126")
    assert m.torch_requirements(v, "linux/amd64") == ["torch==2.6.0+cu126", "torchvision==0.21.0+cu126",
                                                       "torchaudio==2.6.0+cu126"]
    assert m.torch_requirements(v, "linux/arm64") == ["torch==2.6.0+cu126", "torchvision==0.21.0", "torchaudio==2.6.0"]


def test_args_tags_and_labels_come_from_the_matrix(plan: dict) -> None:
    m = load_matrix()
    for v in m.variants.values():
        t = plan["target"][f"{v.name}-data"]
        assert t["args"]["CUDA_WHEELS"].split() == v.wheel_requirements()
        assert t["args"]["TORCH_REQUIREMENTS"].split() == m.torch_requirements(v)
        assert t["args"]["TORCH_INDEX_URL"] == v.index_url
        assert t["args"]["NVIDIA_REQUIRE_CUDA"] == v.nvidia_require_cuda
        assert t["tags"] == [f"{m.image.name}:{tag}" for tag in m.tags_for(v, "data")]
        assert t["labels"]["io.pytorch-cuda.cudnn"] == v.cudnn
        assert t["labels"]["io.pytorch-cuda.torch"] == m.torch["torch"]
        info = json.loads(t["args"]["BUILD_INFO_DATA"])
        assert info["variant"] == v.name and info["git_sha"] == "abc1234"
        assert "torch" not in json.loads(t["args"]["BUILD_INFO_BASE"])


def test_a_data_stack_change_does_not_touch_base_or_torch_args() -> None:
    """Layer caching depends on it: base/torch stages only see args that don't mention the data stack."""
    m = load_matrix()
    ctx = BuildContext("os", "3.13", "sha", "date")
    v = m.variant()
    before = build_args(m, v, ctx)
    changed = m.__class__(**{**m.__dict__, "data_stack": {**m.data_stack, "zarr": "9.9.9"}})
    after = build_args(changed, v, ctx)
    differs = {k for k in before if before[k] != after[k]}
    assert differs == {"DATA_REQUIREMENTS", "BUILD_INFO_DATA", "BUILD_INFO_DEVEL"}


def test_dockerfile_holds_no_version_pins_and_needs_no_pull(repo: Path) -> None:
    text = (repo / "docker" / "Dockerfile").read_text()
    m = load_matrix()
    assert not re.search(r"^#\s*syntax=", text, re.M), "a syntax directive pulls a frontend image"
    assert not re.search(r"==\s*\d", text), "pins belong in images/matrix.toml"
    pins = {*m.torch.values(), *m.data_stack.values()}
    for v in m.variants.values():
        pins |= {*v.wheels.values(), v.cudnn, v.nccl, v.cudart, *v.devel.values(), *v.devel_debs.values()}
    leaked = sorted(p for p in pins if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w.])", text))
    assert not leaked, f"versions retyped in the Dockerfile: {leaked}"
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, re.M)
    assert [s for s in stages if s in LAYERS] == list(LAYERS)
    assert set(stages) - set(LAYERS) == {"os", "tools"}  # internal stages, never tagged


def test_dockerfile_never_copies_a_ca_bundle(repo: Path) -> None:
    text = (repo / "docker" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith(("COPY", "ADD")):
            assert "ca" not in line.lower().split()[1:-1], line
    assert "type=secret,id=ca_bundle" in text


def test_bake_print_resolves_all_targets(repo: Path, need_docker: None, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "imagectl.cli", "bake-plan", "all", "--write", str(tmp_path / "p.json")],
                         capture_output=True, text=True, cwd=repo)
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    targets = printed["target"]
    m = load_matrix()
    assert len(targets) == sum(len(m.layers_of(v)) for v in m.variants.values())
    assert targets["cu126-torch"]["target"] == "torch"
    assert targets["cu124-data"]["dockerfile"].endswith("docker/Dockerfile")
    assert targets["cu118-base"]["args"]["TORCH_INDEX_URL"].endswith("/cu118")
