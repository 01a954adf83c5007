"""RDMA fabric: NCCL's verbs dependency loads, so InfiniBand/RoCE clusters get NCCL's IB transport.

NCCL dlopens libibverbs at init; without it (or without a provider for the HCA) multi-node training
silently falls back to TCP sockets. Required in every pytorch-cuda image; skipped on a plain host that
has no RDMA userspace. No hardware is needed: ``ibv_get_device_list`` answers 0 devices without it.
``doctor`` reports which transport this container would use.
"""

from __future__ import annotations

import glob
import os

import pytest

from smokesuite.fabric import RDMACM_LIB, VERBS_LIB, count_verbs_devices, load_library, read_providers
from smokesuite.plugin import Figures
from smokesuite.runtime_env import in_image

PACKAGES = "libibverbs1 ibverbs-providers librdmacm1t64"


def _required(what: str) -> None:
    if in_image():
        pytest.fail(f"{what}: the image must ship rdma-core's userspace ({PACKAGES}); rebuild it", pytrace=False)
    pytest.skip(f"{what} (a plain host without RDMA userspace; pytorch-cuda images ship it)")


def test_nccl_verbs_dependency_loads(figures: Figures) -> None:
    verbs, lib = load_library(VERBS_LIB)
    if lib is None:
        _required(f"{VERBS_LIB} does not load ({verbs.error})")
    assert lib is not None
    rdmacm, _ = load_library(RDMACM_LIB)
    figures.update({"libibverbs": verbs.path, "librdmacm": rdmacm.path or rdmacm.error})
    assert rdmacm.path, f"{VERBS_LIB} loads but {RDMACM_LIB} does not: {rdmacm.error} (install librdmacm1t64)"
    count, err = count_verbs_devices(lib)
    assert err is None, f"libibverbs loads but cannot list devices: {err}"
    figures["verbs_devices"] = count


def test_verbs_providers_present(figures: Figures) -> None:
    providers = read_providers("/etc")
    if not providers:
        _required("no libibverbs providers in /etc/libibverbs.d")
    verbs, lib = load_library(VERBS_LIB)
    if lib is None or not verbs.path:
        _required(f"{VERBS_LIB} does not load ({verbs.error})")
    assert verbs.path is not None
    provider_dir = os.path.join(os.path.dirname(os.path.realpath(verbs.path)), "libibverbs")
    missing = [p for p in providers if not glob.glob(os.path.join(provider_dir, f"lib{p}-rdmav*.so"))]
    figures.update({"providers": len(providers), "provider_dir": provider_dir, "names": " ".join(providers)})
    assert not missing, f"/etc/libibverbs.d names providers whose libraries are not in {provider_dir}: {missing}"
    # Mellanox/NVIDIA ConnectX (InfiniBand and RoCE) is what most GPU clusters run; EFA is AWS's.
    for must in ("mlx5", "efa"):
        assert must in providers, f"no {must} provider in /etc/libibverbs.d (ibverbs-providers incomplete?)"
