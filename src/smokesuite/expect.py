"""SMOKE_EXPECT: what the run must find. 'gpu' turns every GPU-related skip into a failure."""

from __future__ import annotations

import os
from typing import Literal, NoReturn

import pytest

EXPECT_ENV = "SMOKE_EXPECT"
Expect = Literal["gpu", "cpu"]


def expected_mode(env: dict[str, str] | None = None) -> Expect | None:
    value = (env if env is not None else os.environ).get(EXPECT_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("gpu", "cpu"):
        raise ValueError(f"{EXPECT_ENV}={value!r}: use 'gpu', 'cpu' or leave it unset")
    return value  # type: ignore[return-value]


def gpu_skip(reason: str) -> NoReturn:
    """Skip a GPU check, or fail it when the run is expected to have a GPU (SMOKE_EXPECT=gpu)."""
    if expected_mode() == "gpu":
        pytest.fail(f"SMOKE_EXPECT=gpu, but {reason}", pytrace=False)
    pytest.skip(reason)


# Layers whose image carries the data stack: there a module that does not import is a failure (a
# broken install), never a skip.
DATA_LAYERS = ("data", "devel")


def require_data_stack(*modules: str) -> None:
    """Import ``modules``. On a plain host without them: skip. In an image built with the data stack
    (build-info layer data/devel): fail with the import error, so a broken install never passes."""
    import importlib

    from smokesuite.buildinfo import load_build_info

    info = load_build_info()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            if info is not None and info.get("layer") in DATA_LAYERS:
                pytest.fail(f"{name} does not import in this {info.get('layer')} image: {type(exc).__name__}: {exc}",
                            pytrace=False)
            pytest.skip(f"{name} is not installed (the data stack is not on this host)")
