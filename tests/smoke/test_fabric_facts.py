"""fabric's readers on fake sysfs/dev/etc trees (InfiniBand hardware cannot exist here; its sysfs layout
can), then doctor's transport report on what they read. Library loading is real (this host's loader)."""

from __future__ import annotations

import ctypes.util
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smokesuite.doctor import Facts, diagnose_nccl_network, diagnose_rdma_libraries
from smokesuite.fabric import (
    LibProbe,
    count_verbs_devices,
    find_net_plugins,
    gather_fabric,
    load_library,
    read_devices,
    read_interfaces,
    read_providers,
    selected_hcas,
    socket_interfaces,
)


def make_tree(root: Path, devices: dict[str, tuple[str, str, str]], *, nodes: bool = True,
              ifaces: tuple[str, ...] = ("eth0", "ib0", "lo")) -> tuple[Path, Path, Path]:
    """<root>/sys, /dev, /etc as a host with these RDMA devices: name -> (driver, link layer, state)."""
    sys_, dev, etc = root / "sys", root / "dev", root / "etc"
    drivers = sys_ / "bus" / "pci" / "drivers"
    for i, (name, (driver, link, state)) in enumerate(sorted(devices.items())):
        d = sys_ / "class" / "infiniband" / name
        port = d / "ports" / "1"
        port.mkdir(parents=True)
        (port / "state").write_text(f"{4 if state == 'ACTIVE' else 1}: {state}\n")
        (port / "link_layer").write_text(link + "\n")
        (port / "rate").write_text("400 Gb/sec (4X NDR)\n")
        (drivers / driver).mkdir(parents=True, exist_ok=True)
        (d / "device").mkdir()
        (d / "device" / "driver").symlink_to(drivers / driver)
        uv = sys_ / "class" / "infiniband_verbs" / f"uverbs{i}"
        uv.mkdir(parents=True)
        (uv / "ibdev").write_text(name + "\n")
        if nodes:
            (dev / "infiniband").mkdir(parents=True, exist_ok=True)
            (dev / "infiniband" / f"uverbs{i}").write_text("")
    for n in ifaces:
        (sys_ / "class" / "net" / n).mkdir(parents=True)
    (etc / "libibverbs.d").mkdir(parents=True)
    for p in ("mlx5", "efa", "irdma"):
        (etc / "libibverbs.d" / f"{p}.driver").write_text(f"driver {p}\n")
    return sys_, dev, etc


def test_devices_ports_drivers_and_uverbs_nodes(tmp_path: Path) -> None:
    sys_, dev, etc = make_tree(tmp_path, {"mlx5_0": ("mlx5_core", "InfiniBand", "ACTIVE"),
                                          "mlx5_1": ("mlx5_core", "Ethernet", "DOWN")})
    devs = read_devices(sys_, dev)
    assert [d.name for d in devs] == ["mlx5_0", "mlx5_1"]
    assert devs[0].driver == "mlx5_core" and devs[0].provider == "mlx5" and devs[0].uverbs_node
    assert devs[0].ports[0].state == "ACTIVE" and devs[0].ports[0].rate == "400 Gb/sec (4X NDR)"
    assert devs[1].ports[0].link_layer == "Ethernet" and not devs[1].active_ports()
    assert read_providers(etc) == ["efa", "irdma", "mlx5"]
    assert read_interfaces(sys_) == ["eth0", "ib0", "lo"]


def test_host_devices_without_nodes_report_a_socket_fallback(tmp_path: Path) -> None:
    sys_, dev, etc = make_tree(tmp_path, {"mlx5_0": ("mlx5_core", "InfiniBand", "ACTIVE")}, nodes=False)
    f = gather_fabric({}, sys_root=str(sys_), dev_root=str(dev), etc_root=str(etc), plugin_dirs=())
    assert f.devices and not f.devices[0].uverbs_node and f.uverbs_nodes == []
    # the libraries are really probed on this host; give the container a working verbs stack to isolate the cause
    f.verbs, f.rdmacm, f.verbs_device_count = LibProbe("libibverbs.so.1", path="/x"), LibProbe("r", path="/y"), 0
    d = diagnose_nccl_network(Facts(fabric=f))
    assert d.status == "warning" and "fall back to TCP sockets" in d.summary and "not in this container" in (d.cause or "")


def test_real_library_probe_on_this_host_feeds_the_diagnosis(tmp_path: Path) -> None:
    sys_, dev, etc = make_tree(tmp_path, {"mlx5_0": ("mlx5_core", "InfiniBand", "ACTIVE")})
    f = gather_fabric({}, sys_root=str(sys_), dev_root=str(dev), etc_root=str(etc), plugin_dirs=())
    assert f.verbs is not None and f.uverbs_nodes
    if f.verbs.path:
        pytest.skip("this host has libibverbs: the no-library diagnosis cannot be shown here")
    d = diagnose_rdma_libraries(Facts(fabric=f))
    assert d.status == "problem" and "cannot open shared object file" in (d.cause or "")
    assert "libibverbs1" in (d.fix or "")


def test_efa_device_and_ofi_plugin_on_ld_library_path(tmp_path: Path) -> None:
    sys_, dev, etc = make_tree(tmp_path, {"rdmap0s31": ("efa", "Unspecified", "ACTIVE")})
    plugin_dir = tmp_path / "ofi" / "lib"
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "libnccl-net.so").write_bytes(b"\x7fELF")  # only its presence is read
    env = {"LD_LIBRARY_PATH": f"/nonexistent:{plugin_dir}", "FI_PROVIDER": "efa"}
    f = gather_fabric(env, sys_root=str(sys_), dev_root=str(dev), etc_root=str(etc), load_libraries=False,
                      plugin_dirs=())
    assert f.devices[0].is_efa and f.net_plugins == [str(plugin_dir / "libnccl-net.so")]
    assert f.nccl_env == {"FI_PROVIDER": "efa"}
    assert diagnose_nccl_network(Facts(fabric=f)).status == "ok"
    without = dataclasses.replace(f, net_plugins=find_net_plugins({}, ()))
    assert diagnose_nccl_network(Facts(fabric=without)).status == "warning"


def test_nccl_name_filters() -> None:
    from smokesuite.fabric import FabricFacts, IbDevice

    f = FabricFacts(interfaces=["docker0", "eth0", "eth1", "ib0", "lo"],
                    devices=[IbDevice("mlx5_0"), IbDevice("mlx5_1"), IbDevice("mlx5_10")])
    assert socket_interfaces(f) == ["ib0", "eth0", "eth1"]  # NCCL's default: IPoIB first, never docker/lo
    f.nccl_env = {"NCCL_SOCKET_IFNAME": "=eth1"}
    assert socket_interfaces(f) == ["eth1"]
    f.nccl_env = {"NCCL_SOCKET_IFNAME": "^docker,lo,ib"}
    assert socket_interfaces(f) == ["eth0", "eth1"]
    f.nccl_env = {"NCCL_IB_HCA": "mlx5_1"}
    assert [d.name for d in selected_hcas(f)] == ["mlx5_1", "mlx5_10"]  # prefix match, as NCCL does
    f.nccl_env = {"NCCL_IB_HCA": "=mlx5_1:1"}
    assert [d.name for d in selected_hcas(f)] == ["mlx5_1"]
    f.nccl_env = {"NCCL_IB_HCA": "^=mlx5_0"}
    assert [d.name for d in selected_hcas(f)] == ["mlx5_1", "mlx5_10"]
    assert socket_interfaces(FabricFacts(interfaces=["lo"])) == ["lo"]


def test_library_loading_is_real() -> None:
    libc = ctypes.util.find_library("c") or "libc.so.6"
    probe, lib = load_library(libc)
    assert lib is not None and probe.path and os.path.exists(probe.path)
    count, err = count_verbs_devices(lib)
    assert count is None and "not libibverbs" in (err or "")
    missing, none = load_library("libdefinitely-not-here.so.9")
    assert none is None and "libdefinitely-not-here" in (missing.error or "")


def test_doctor_json_carries_fabric_and_runtime(tmp_path: Path) -> None:
    dump = tmp_path / "facts.json"
    proc = subprocess.run([sys.executable, "-m", "smokesuite.doctor", "--expect", "cpu", "--no-nccl", "--json",
                           "--dump-facts", str(dump)], capture_output=True, text=True, timeout=120)
    data = json.loads(proc.stdout)
    checks = {d["check"] for d in data["diagnoses"]}
    assert {"User name", "HOME", "Cache locations", "Compiled-code locations", "RDMA libraries",
            "NCCL network"} <= checks
    replay = Facts.from_json(json.loads(dump.read_text()))
    assert replay.runtime is not None and replay.fabric is not None and replay.runtime.locations
