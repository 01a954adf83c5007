"""Which network transports NCCL can use from this container: InfiniBand/RoCE verbs, a net plugin, or sockets.

NCCL picks its inter-node transport at init, in this order: a net plugin (``libnccl-net*.so``, e.g.
AWS's OFI plugin for EFA), its own IB verbs transport (InfiniBand and RoCE, through ``libibverbs.so.1``
and a provider from ``/etc/libibverbs.d``, on devices whose ``/dev/infiniband/uverbs*`` node is in the
container), else TCP sockets on ``NCCL_SOCKET_IFNAME``. A fallback to sockets is silent and an order
of magnitude slower; this module reads every input of that choice so ``doctor`` can say which one
applies and why. Every reader takes its root (``/sys``, ``/dev``, ``/etc``, ``/proc``) as a parameter,
so the diagnoses are tested on fake trees.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERBS_LIB = "libibverbs.so.1"  # NCCL dlopens libibverbs.so, then libibverbs.so.1 (the runtime package has only .so.1)
RDMACM_LIB = "librdmacm.so.1"
NCCL_ENV = ("NCCL_NET", "NCCL_IB_DISABLE", "NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "NCCL_NET_PLUGIN",
            "NCCL_IB_GID_INDEX", "NCCL_NET_GDR_LEVEL", "NCCL_SOCKET_FAMILY", "FI_PROVIDER", "FI_EFA_USE_DEVICE_RDMA")
# Where the AWS OFI plugin and other net plugins are usually installed, besides the loader's own path.
PLUGIN_DIRS = ("/opt/amazon/ofi-nccl/lib", "/opt/amazon/ofi-nccl/lib64", "/opt/aws-ofi-nccl/lib",
               "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64")
# Kernel driver of an RDMA device -> the libibverbs provider that drives it.
DRIVER_PROVIDER = {"mlx5_core": "mlx5", "mlx4_core": "mlx4", "efa": "efa", "irdma": "irdma", "i40iw": "i40iw",
                   "bnxt_en": "bnxt_re", "bnxt_re": "bnxt_re", "qede": "qedr", "qedr": "qedr", "hfi1": "hfi1verbs",
                   "rdma_rxe": "rxe", "siw": "siw", "mana": "mana", "erdma": "erdma", "hns3": "hns", "cxgb4": "cxgb4",
                   "vmw_pvrdma": "vmw_pvrdma", "ocrdma": "ocrdma"}
MEMLOCK_MIN = 64 * 1024 * 1024  # below this, registering NCCL's buffers (ibv_reg_mr) fails


@dataclass
class IbPort:
    port: int
    state: str  # "ACTIVE", "DOWN", ...
    link_layer: str  # "InfiniBand" or "Ethernet" (RoCE)
    rate: str | None = None


@dataclass
class IbDevice:
    name: str  # mlx5_0, efa_0 / rdmap0s31, irdma0
    driver: str | None = None  # kernel driver (mlx5_core, efa, ...)
    ports: list[IbPort] = field(default_factory=list)
    uverbs: str | None = None  # uverbsN that belongs to it (sysfs)
    uverbs_node: bool = False  # /dev/infiniband/uverbsN exists in this container

    @property
    def provider(self) -> str:
        if self.driver and self.driver in DRIVER_PROVIDER:
            return DRIVER_PROVIDER[self.driver]
        return re.sub(r"[_]?\d+$", "", self.name)

    @property
    def is_efa(self) -> bool:
        return self.driver == "efa" or self.name.startswith("efa")

    def active_ports(self) -> list[IbPort]:
        return [p for p in self.ports if p.state.upper() == "ACTIVE"]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IbDevice:
        data = dict(data)
        ports = [IbPort(**p) for p in data.pop("ports", [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, ports=ports)


@dataclass
class LibProbe:
    name: str
    path: str | None = None  # where it loaded from
    error: str | None = None


@dataclass
class FabricFacts:
    devices: list[IbDevice] = field(default_factory=list)
    uverbs_nodes: list[str] = field(default_factory=list)  # /dev/infiniband/uverbs* present
    rdma_cm_node: bool = False
    verbs: LibProbe | None = None
    rdmacm: LibProbe | None = None
    verbs_device_count: int | None = None  # ibv_get_device_list(); None when not called / failed
    verbs_list_error: str | None = None
    providers: list[str] = field(default_factory=list)  # from <etc>/libibverbs.d/*.driver
    net_plugins: list[str] = field(default_factory=list)  # libnccl-net*.so found
    interfaces: list[str] = field(default_factory=list)  # <sys>/class/net
    nccl_env: dict[str, str] = field(default_factory=dict)
    memlock_bytes: int | None = None  # RLIMIT_MEMLOCK soft limit; -1 unlimited
    in_image: bool = False  # a pytorch-cuda image: the RDMA userspace is required

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FabricFacts:
        data = dict(data)
        devices = [IbDevice.from_json(d) for d in data.pop("devices", [])]
        verbs, rdmacm = data.pop("verbs", None), data.pop("rdmacm", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, devices=devices, verbs=LibProbe(**verbs) if verbs else None,
                   rdmacm=LibProbe(**rdmacm) if rdmacm else None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# readers (roots as parameters)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_devices(sys_root: str | os.PathLike[str] = "/sys", dev_root: str | os.PathLike[str] = "/dev") -> list[IbDevice]:
    """RDMA devices in ``<sys>/class/infiniband``, with ports and whether their uverbs node is in ``<dev>``."""
    base = Path(sys_root, "class", "infiniband")
    uverbs_of: dict[str, str] = {}
    for uv in sorted(Path(sys_root, "class", "infiniband_verbs").glob("uverbs*")):
        ibdev = _read(uv / "ibdev")
        if ibdev:
            uverbs_of[ibdev] = uv.name
    devices = []
    for d in sorted(base.glob("*")) if base.is_dir() else []:
        driver_link = d / "device" / "driver"
        driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else None
        ports = []
        for p in sorted((d / "ports").glob("*"), key=lambda x: int(x.name) if x.name.isdigit() else 0):
            state = _read(p / "state") or "?"
            ports.append(IbPort(port=int(p.name) if p.name.isdigit() else 0, state=state.split(":")[-1].strip(),
                                link_layer=_read(p / "link_layer") or "?", rate=_read(p / "rate")))
        uv = uverbs_of.get(d.name)
        devices.append(IbDevice(name=d.name, driver=driver, ports=ports, uverbs=uv,
                                uverbs_node=bool(uv) and Path(dev_root, "infiniband", uv).exists()))
    return devices


def read_providers(etc_root: str | os.PathLike[str] = "/etc") -> list[str]:
    """Provider names configured in ``<etc>/libibverbs.d/*.driver`` (``driver mlx5`` lines)."""
    names = []
    for f in sorted(Path(etc_root, "libibverbs.d").glob("*.driver")):
        for line in (_read(f) or "").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "driver":
                names.append(parts[1])
    return names


def read_interfaces(sys_root: str | os.PathLike[str] = "/sys") -> list[str]:
    base = Path(sys_root, "class", "net")
    return sorted(p.name for p in base.glob("*")) if base.is_dir() else []


def _mapped_path(fragment: str) -> str | None:
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1]
            if path.startswith("/") and fragment in os.path.basename(path):
                return path
    except OSError:
        pass
    return None


def load_library(name: str) -> tuple[LibProbe, ctypes.CDLL | None]:
    """dlopen ``name`` as NCCL would (the loader's search path); where it came from, or why it did not load."""
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        return LibProbe(name=name, error=str(exc)), None
    stem = os.path.basename(name).split(".so")[0]
    return LibProbe(name=name, path=_mapped_path(stem + ".so") or name), lib


def count_verbs_devices(lib: ctypes.CDLL) -> tuple[int | None, str | None]:
    """``ibv_get_device_list``: the devices libibverbs can open through its providers (0 without hardware)."""
    try:
        get, free = lib.ibv_get_device_list, lib.ibv_free_device_list
    except AttributeError as exc:
        return None, f"not libibverbs: {exc}"
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.POINTER(ctypes.c_int)]
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    num = ctypes.c_int(0)
    ctypes.set_errno(0)
    handle = get(ctypes.byref(num))
    if not handle:
        err = ctypes.get_errno()
        # ENOSYS: no uverbs ABI in sysfs, i.e. no RDMA kernel support visible: zero devices, not a fault
        return (0, None) if err in (0, 38) else (None, f"ibv_get_device_list failed: {os.strerror(err)}")
    free(handle)
    return num.value, None


def find_net_plugins(env: dict[str, str], extra_dirs: tuple[str, ...] = PLUGIN_DIRS) -> list[str]:
    """``libnccl-net*.so`` files on LD_LIBRARY_PATH and the usual plugin directories."""
    dirs = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d] + list(extra_dirs)
    found: list[str] = []
    for d in dirs:
        for p in sorted(Path(d).glob("libnccl-net*.so*")) if Path(d).is_dir() else []:
            if str(p) not in found:
                found.append(str(p))
    return found


def memlock_limit() -> int | None:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    except (OSError, ValueError):
        return None
    return -1 if soft == resource.RLIM_INFINITY else int(soft)


def gather_fabric(env: dict[str, str] | None = None, *, sys_root: str = "/sys", dev_root: str = "/dev",
                  etc_root: str = "/etc", load_libraries: bool = True, plugin_dirs: tuple[str, ...] = PLUGIN_DIRS,
                  in_image: bool = False) -> FabricFacts:
    env = dict(os.environ if env is None else env)
    f = FabricFacts(devices=read_devices(sys_root, dev_root), providers=read_providers(etc_root),
                    interfaces=read_interfaces(sys_root), nccl_env={k: env[k] for k in NCCL_ENV if k in env},
                    net_plugins=find_net_plugins(env, plugin_dirs), memlock_bytes=memlock_limit(), in_image=in_image)
    ib_dev = Path(dev_root, "infiniband")
    f.uverbs_nodes = sorted(str(p) for p in ib_dev.glob("uverbs*")) if ib_dev.is_dir() else []
    f.rdma_cm_node = (ib_dev / "rdma_cm").exists()
    if load_libraries:
        f.verbs, lib = load_library(VERBS_LIB)
        f.rdmacm, _ = load_library(RDMACM_LIB)
        if lib is not None:
            f.verbs_device_count, f.verbs_list_error = count_verbs_devices(lib)
    return f


# ------------------------------------------------------------------------------------------------
# NCCL's name filters (NCCL_SOCKET_IFNAME, NCCL_IB_HCA): "a,b" prefixes, "=a" exact, "^a" excluded


def _filter_matches(spec: str, names: list[str], *, strip_port: bool = False) -> list[str]:
    spec = spec.strip()
    exclude = spec.startswith("^")
    spec = spec.lstrip("^")
    exact = spec.startswith("=")
    spec = spec.lstrip("=")
    items = [s.split(":")[0] if strip_port else s for s in spec.split(",") if s]

    def hit(name: str) -> bool:
        return any(name == i if exact else name.startswith(i) for i in items)

    return [n for n in names if (not hit(n) if exclude else hit(n))]


def socket_interfaces(f: FabricFacts) -> list[str]:
    """The interfaces NCCL's bootstrap and socket transport would use."""
    spec = f.nccl_env.get("NCCL_SOCKET_IFNAME")
    if spec:
        return _filter_matches(spec, f.interfaces)
    ib = [n for n in f.interfaces if n.startswith("ib")]
    others = [n for n in f.interfaces if not n.startswith(("docker", "lo", "ib"))]
    return ib + others or [n for n in f.interfaces if n.startswith("lo")]


def selected_hcas(f: FabricFacts) -> list[IbDevice]:
    spec = f.nccl_env.get("NCCL_IB_HCA")
    if not spec:
        return list(f.devices)
    keep = set(_filter_matches(spec, [d.name for d in f.devices], strip_port=True))
    return [d for d in f.devices if d.name in keep]


def describe_device(d: IbDevice) -> str:
    kind = "EFA" if d.is_efa else ("RoCE" if any(p.link_layer == "Ethernet" for p in d.ports) else "InfiniBand")
    active = d.active_ports()
    rate = f", {active[0].rate}" if active and active[0].rate else ""
    return f"{d.name} ({kind}, {len(active)}/{len(d.ports)} port(s) active{rate})"
