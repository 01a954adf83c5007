"""Load the build record every image carries (``/opt/pytorch-cuda/build-info.json``).

It is written at build time from images/matrix.toml, so the suite never retypes a pin: every
expected version comes from here. ``PYTORCH_CUDA_BUILD_INFO`` points elsewhere (tests, hosts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILD_INFO_ENV = "PYTORCH_CUDA_BUILD_INFO"
DEFAULT_BUILD_INFO_PATH = "/opt/pytorch-cuda/build-info.json"


class BuildInfoError(RuntimeError):
    """build-info.json exists but cannot be used."""


@dataclass(frozen=True)
class BuildInfo:
    """Typed view of build-info.json; ``raw`` is the file's dict, as it goes into the report."""

    path: str
    raw: dict[str, Any] = field(repr=False)

    def get(self, key: str) -> str | None:
        value = self.raw.get(key)
        return None if value in (None, "") else str(value)

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise BuildInfoError(f"{self.path} has no {key!r}: rebuild the image (build-info.json is "
                                 f"written from images/matrix.toml)")
        return value

    @property
    def wheels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.raw.get("wheels") or {}).items()}

    @property
    def data_stack(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.raw.get("data_stack") or {}).items()}

    @property
    def variant(self) -> str | None:
        return self.get("variant")


def build_info_path() -> str:
    return os.environ.get(BUILD_INFO_ENV) or DEFAULT_BUILD_INFO_PATH


def load_build_info(path: str | os.PathLike[str] | None = None) -> BuildInfo | None:
    """The image's build record, or None when the file does not exist (a plain host)."""
    p = Path(path) if path is not None else Path(build_info_path())
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BuildInfoError(f"cannot read build info {p}: {exc}") from exc
    if not isinstance(raw, dict):
        raise BuildInfoError(f"build info {p} is not a JSON object")
    return BuildInfo(path=str(p), raw=raw)


def missing_reason() -> str:
    return (f"no build record at {build_info_path()} (not inside a pytorch-cuda image; set "
            f"{BUILD_INFO_ENV} to check against one): pins are not checked on a plain host")
