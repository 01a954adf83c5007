"""A data-stack module that does not import is a skip on a plain host, a failure in a data image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smokesuite.expect import require_data_stack


def _build_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    p = tmp_path / "build-info.json"
    p.write_text(json.dumps({"variant": "cu124", "layer": layer}))
    monkeypatch.setenv("PYTORCH_CUDA_BUILD_INFO", str(p))


def test_plain_host_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_BUILD_INFO", str(tmp_path / "absent.json"))
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_data_stack("json", "no_such_module_here")


@pytest.mark.parametrize("layer", ["data", "devel"])
def test_data_image_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str) -> None:
    _build_info(tmp_path, monkeypatch, layer)
    with pytest.raises(pytest.fail.Exception, match=f"no_such_module_here does not import in this {layer} image"):
        require_data_stack("no_such_module_here")


def test_torch_image_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _build_info(tmp_path, monkeypatch, "torch")
    with pytest.raises(pytest.skip.Exception):
        require_data_stack("no_such_module_here")
