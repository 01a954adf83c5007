"""Does a torch build's arch list cover a GPU? (``torch.cuda.get_arch_list()`` vs ``sm_XY``)."""

from __future__ import annotations

import re

_ENTRY = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")


def parse_sm(text: str) -> tuple[int, int]:
    """'sm_90' / '9.0' / (9, 0) style -> (9, 0)."""
    m = re.match(r"^(?:sm_)?(\d+)(?:\.(\d+))?$", text.strip())
    if not m:
        raise ValueError(f"not a compute capability: {text!r}")
    if m.group(2) is not None:
        return int(m.group(1)), int(m.group(2))
    digits = m.group(1)
    return int(digits[:-1]), int(digits[-1])


def sm_name(cap: tuple[int, int]) -> str:
    return f"sm_{cap[0]}{cap[1]}"


def coverage(cap: tuple[int, int], arch_list: list[str]) -> str | None:
    """How ``arch_list`` runs a device of capability ``cap``; None when it cannot.

    Exact SASS (sm_XY or its arch-specific sm_XYa), SASS of a lower minor of the same major
    (binary compatible), or PTX (compute_XY) at or below the device, which the driver JIT-compiles.
    """
    major, minor = cap
    same_major: list[tuple[int, str]] = []
    ptx: list[tuple[tuple[int, int], str]] = []
    for entry in arch_list:
        m = _ENTRY.match(entry.strip())
        if not m:
            continue
        kind, digits, suffix = m.groups()
        e_cap = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm":
            if e_cap == cap:
                return f"{entry} (native)"
            if not suffix and e_cap[0] == major and e_cap[1] < minor:
                same_major.append((e_cap[1], entry))
        elif not suffix and e_cap <= cap:
            ptx.append((e_cap, entry))
    if same_major:
        return f"{max(same_major)[1]} (binary compatible with {sm_name(cap)})"
    if ptx:
        return f"{max(ptx)[1]} (PTX, JIT-compiled by the driver)"
    return None
