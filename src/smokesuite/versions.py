"""Version parsing and comparison: torch/cuDNN/NCCL/driver strings as the libraries report them."""

from __future__ import annotations

import re

# Minimum driver for CUDA minor-version compatibility, by CUDA major. Only a fallback for hosts
# without build-info.json (an image always carries its variant's own floor, from the matrix).
MINOR_COMPAT_DRIVER_FLOOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric components: '2.6.0+cu124' -> (2, 6, 0); '525.60.13' -> (525, 60, 13)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in match.group(1).split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    n = max(len(a), len(b))
    return a + (0,) * (n - len(a)), b + (0,) * (n - len(b))


def version_at_least(actual: str, floor: str) -> bool:
    a, f = _padded(parse_version(actual), parse_version(floor))
    return a >= f


def public_version(version: str) -> str:
    """Strip a PEP 440 local suffix: '2.6.0+cu124' -> '2.6.0'."""
    return str(version).split("+", 1)[0]


def same_release(actual: str, pin: str, parts: int | None = None) -> bool:
    """True when ``actual`` equals ``pin`` on the first ``parts`` components (all of the pin's if None)."""
    a, p = parse_version(public_version(actual)), parse_version(public_version(pin))
    n = parts or len(p)
    a, p = _padded(a[:n], p[:n])
    return a == p


def cudnn_int_to_tuple(value: int) -> tuple[int, int, int]:
    """torch.backends.cudnn.version() -> (major, minor, patch): 90100 -> (9, 1, 0); 8902 -> (8, 9, 2)."""
    value = int(value)
    if value >= 90000:  # cuDNN 9 encodes major*10000 + minor*100 + patch
        return value // 10000, value % 10000 // 100, value % 100
    return value // 1000, value % 1000 // 100, value % 100


def cuda_driver_int_to_str(value: int) -> str:
    """cuDriverGetVersion / nvmlSystemGetCudaDriverVersion -> 'major.minor': 12040 -> '12.4'."""
    value = int(value)
    return f"{value // 1000}.{value % 1000 // 10}"


def parse_require_cuda(text: str) -> str | None:
    """'cuda>=12.0' (NVIDIA_REQUIRE_CUDA) -> '12.0'; None when absent."""
    match = re.search(r"cuda\s*>=\s*(\d+(?:\.\d+)*)", text or "")
    return match.group(1) if match else None


def driver_floor_for_cuda(cuda: str) -> str | None:
    """Minor-version-compatibility driver floor for a CUDA toolkit version (fallback table)."""
    return MINOR_COMPAT_DRIVER_FLOOR.get(parse_version(cuda)[0])
