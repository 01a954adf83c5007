"""The matrix loads, its pins hang together, and malformed matrices fail with clear messages."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from imagectl.matrix import (
    DEFAULT_MATRIX,
    LAYERS,
    MatrixError,
    UnknownVariantError,
    load_matrix,
    parse_matrix,
)


def raw_matrix() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_MATRIX.read_text())


def test_real_matrix_loads_with_the_three_torch26_variants() -> None:
    m = load_matrix()
    assert set(m.variants) == {"cu118", "cu124", "cu126"}
    assert m.default_variant == "cu124"
    assert tuple(int(x) for x in m.image.python.split(".")) >= (3, 12)


def test_variant_pins_are_consistent_with_their_wheels() -> None:
    m = load_matrix()
    for v in m.variants.values():
        major = v.cuda.split(".")[0]
        assert v.wheels[f"nvidia-cudnn-cu{major}"] == v.cudnn
        assert v.wheels[f"nvidia-nccl-cu{major}"] == v.nccl
        assert v.cudart.startswith(v.cuda)
        # default index for the PyPI build only; the others name their wheel index
        assert (v.index_url == "") == (v.local_version == "")
        assert v.driver_floor_major == (450 if major == "11" else 525)


def test_torch_requirements_carry_the_local_version_where_needed() -> None:
    m = load_matrix()
    assert m.torch_requirements(m.variant("cu124"))[0] == f"torch=={m.torch['torch']}"
    assert m.torch_requirements(m.variant("cu118"))[0] == f"torch=={m.torch['torch']}+cu118"


def test_tags_per_layer_and_default_alias() -> None:
    m = load_matrix()
    series = m.image.series
    assert m.tags_for(m.variant("cu124"), "data") == [f"{series}-cu124", series]
    assert m.tags_for(m.variant("cu126"), "data") == [f"{series}-cu126"]
    assert m.tags_for(m.variant("cu118"), "torch") == [f"{series}-cu118-torch"]
    assert m.tags_for(m.variant("cu118"), "base") == ["cu118-base"]


def test_build_info_of_lower_layers_leaves_out_what_they_do_not_contain() -> None:
    m = load_matrix()
    v = m.variant()
    base, torch, data, devel = (m.build_info(v, layer) for layer in LAYERS)
    assert "torch" not in base and "data_stack" not in base
    assert torch["torch"] == m.torch["torch"] and "data_stack" not in torch
    assert data["data_stack"] == dict(m.data_stack) and "devel" not in data
    assert devel["devel_debs"] == dict(v.devel_debs) and devel["layer"] == "devel"


def test_cu121_is_explained_not_just_unknown() -> None:
    with pytest.raises(UnknownVariantError) as exc:
        load_matrix().variant("cu121")
    msg = str(exc.value)
    assert "12.1" in msg and "cu124" in msg and "525" in msg and "minor-version" in msg


def test_unknown_variant_lists_the_ones_that_exist_and_suggests() -> None:
    with pytest.raises(UnknownVariantError) as exc:
        load_matrix().variant("cu12")
    assert "cu118, cu124, cu126" in str(exc.value)
    assert "Did you mean" in str(exc.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["variants"]["cu124"].update(cudaa="12.4"), "unknown key 'cudaa' (did you mean 'cuda'?)"),
        (lambda r: r["variants"]["cu124"].pop("cudnn"), "missing required key(s): cudnn"),
        (lambda r: r["variants"]["cu124"]["wheels"].update({"nvidia-cudnn-cu12": "0.0.1"}),
         f"nvidia-cudnn-cu12 must be pinned to {raw_matrix()['variants']['cu124']['cudnn']}"),
        (lambda r: r["data_stack"].update(zarr=">=3"), "not a valid exact version"),
        (lambda r: r["tags"].update(data=["v2.6"]), "duplicate tag"),
        (lambda r: r.update(default_variant="cu121"), "default_variant: 'cu121' is not one of the variants"),
        (lambda r: r["image"].update(python="3.11"), "too old"),
        (lambda r: r["image"].update(uid=0), "must not be root"),
        (lambda r: r["variants"]["cu118"].update(index_url="http://example.invalid/whl"), "https://"),
        (lambda r: r["variants"]["cu124"].update(nvidia_require_cuda="12.0"), "NVIDIA_REQUIRE_CUDA"),
        (lambda r: r.pop("torch"), "missing required key(s): torch"),
    ],
)
def test_malformed_matrix_fails_with_a_clear_message(mutate: Any, expected: str) -> None:
    raw = raw_matrix()
    mutate(raw)
    with pytest.raises(MatrixError) as exc:
        parse_matrix(raw)
    assert expected in str(exc.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="no such file"):
        load_matrix(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = [")
    with pytest.raises(MatrixError, match="not valid TOML"):
        load_matrix(bad)
