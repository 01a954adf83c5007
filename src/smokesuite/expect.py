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
