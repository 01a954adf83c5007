"""Compare a device result with a CPU float64 reference computed from the same rounded inputs."""

from __future__ import annotations

from typing import Any

# Max |out - ref| / max |ref| allowed per dtype: output rounding plus accumulation order.
TOLERANCE: dict[str, float] = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


def relative_error(out: Any, ref: Any) -> float:
    """Largest absolute error, relative to the reference's largest magnitude (torch tensors)."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    scale = float(ref64.abs().max()) or 1.0
    return float((out64 - ref64).abs().max()) / scale


def within_tolerance(error: float, dtype_name: str) -> bool:
    return error == error and error <= TOLERANCE[dtype_name]  # NaN fails
