"""``doctor``: diagnose the common GPU-container failures and print cause + fix for each.

Two halves: ``gather_facts()`` reads the machine (libcuda, NVML, /dev/shm, LD_LIBRARY_PATH, torch,
optionally an NCCL all-reduce; the user, HOME, cache and exec-mount facts of
:mod:`smokesuite.runtime_env`; the RDMA/NCCL transport facts of :mod:`smokesuite.fabric`); the
``diagnose_*`` functions are pure functions of those facts, so each is tested on recorded inputs.
``doctor --dump-facts F`` records a machine, ``--facts F`` replays.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smokesuite.arch import coverage, parse_sm
from smokesuite.fabric import (
    MEMLOCK_MIN,
    FabricFacts,
    IbDevice,
    describe_device,
    gather_fabric,
    selected_hcas,
    socket_interfaces,
)
from smokesuite.runtime_env import PathState, RuntimeFacts, describe_mount, gather_runtime, in_image
from smokesuite.versions import (
    cuda_driver_int_to_str,
    driver_floor_for_cuda,
    parse_require_cuda,
    version_at_least,
)

MIB = 1024 * 1024
SHM_MIN_BYTES = 256 * MIB  # below this NCCL's shared-memory transport and DataLoader workers fail
SHM_GOOD_BYTES = 1024 * MIB
FLAGS_FIX = "docker run --gpus all --shm-size=8g ... (or --ipc=host instead of --shm-size)"

# CUresult codes cuInit returns on broken setups (cuda.h), with what they mean here.
CU_INIT_ERRORS: dict[int, tuple[str, str]] = {
    100: ("no CUDA-capable device is visible (CUDA_ERROR_NO_DEVICE)",
          "check CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES and that `nvidia-smi` on the host lists GPUs"),
    35: ("the driver is older than this CUDA runtime needs (CUDA_ERROR_INSUFFICIENT_DRIVER)",
         "upgrade the host's NVIDIA driver"),
    803: ("the driver's user-space library and kernel module differ (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH), "
          "typically after a driver upgrade without a reboot", "reboot the host (or reload the nvidia modules)"),
    804: ("forward-compatibility libraries are used on a GPU that does not support them "
          "(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE)", "remove the cuda-compat libraries from LD_LIBRARY_PATH"),
    999: ("the driver failed to initialise (CUDA_ERROR_UNKNOWN), often nvidia_uvm not loaded",
          "on the host: `sudo modprobe nvidia_uvm` or reboot"),
}


@dataclass
class NcclProbe:
    gpus: int
    first_ok: bool
    first_error: str | None = None
    retry_ok: bool | None = None  # with NCCL_P2P_DISABLE=1; None when not retried
    retry_error: str | None = None


@dataclass
class Facts:
    """Everything the diagnoses look at; JSON round-trips for recorded inputs."""

    expect: str | None = None
    in_container: bool = False
    libcuda: str | None = None  # path of the loaded libcuda.so.1; None when it does not load
    libcuda_error: str | None = None
    cu_init_error: int | None = None  # CUresult of cuInit(0); None when it succeeded (or never ran)
    dev_nodes: list[str] = field(default_factory=list)
    nvidia_visible_devices: str | None = None
    driver: str | None = None  # NVML, e.g. "550.54.15"
    cuda_driver: str | None = None  # e.g. "12.4"
    gpus: list[dict[str, Any]] = field(default_factory=list)  # {"index", "name", "sm"}
    torch_version: str | None = None
    torch_cuda: str | None = None
    arch_list: list[str] = field(default_factory=list)
    variant: str | None = None
    driver_min: str | None = None  # from build-info.json
    require_cuda: str | None = None  # from build-info.json's nvidia_require_cuda
    shm_bytes: int | None = None
    ld_library_path: str = ""
    system_cudnn: list[str] = field(default_factory=list)  # libcudnn* found in LD_LIBRARY_PATH dirs
    loaded_cudnn: list[str] = field(default_factory=list)  # libcudnn* mapped into this process
    cudnn_runtime: list[int] | None = None
    cudnn_compiled: list[int] | None = None
    nccl: NcclProbe | None = None
    runtime: RuntimeFacts | None = None  # user, HOME, caches, exec mounts; None in older recordings
    fabric: FabricFacts | None = None  # RDMA devices, verbs libraries, NCCL network hints
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Facts:
        data = dict(data)
        nccl, runtime, fabric = data.pop("nccl", None), data.pop("runtime", None), data.pop("fabric", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, nccl=NcclProbe(**nccl) if nccl else None,
                   runtime=RuntimeFacts.from_json(runtime) if runtime else None,
                   fabric=FabricFacts.from_json(fabric) if fabric else None)


@dataclass
class Diagnosis:
    check: str
    status: str  # "ok", "problem", "warning", "skipped"
    summary: str
    cause: str | None = None
    fix: str | None = None


def _fmt_mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.0f} MiB"


# ------------------------------------------------------------------------------------------------
# diagnoses: pure functions of Facts


def diagnose_gpu_runtime(f: Facts) -> Diagnosis:
    name = "GPU runtime"
    if f.libcuda and f.cu_init_error is None:
        return Diagnosis(name, "ok", f"libcuda.so.1 loads ({f.libcuda}); CUDA driver {f.cuda_driver or '?'}; "
                                     f"{len(f.gpus)} GPU(s) visible")
    if f.libcuda and f.cu_init_error is not None:
        cause, fix = CU_INIT_ERRORS.get(f.cu_init_error, (f"cuInit failed with CUresult {f.cu_init_error}",
                                                          "run `nvidia-smi` on the host and fix what it reports"))
        return Diagnosis(name, "problem", f"libcuda.so.1 loads but cuInit fails ({f.cu_init_error})", cause, fix)
    if f.expect == "cpu":
        return Diagnosis(name, "skipped", "no libcuda.so.1: CPU host mode (SMOKE_EXPECT=cpu)")
    if f.in_container and not f.dev_nodes:
        return Diagnosis(
            name, "problem", "no GPU runtime in this container: libcuda.so.1 is not found and there is no /dev/nvidia*",
            "the container was started without GPU access: `--gpus all` is missing, or the host has no NVIDIA "
            "Container Toolkit to inject the driver (docker then answers: could not select device driver \"\" "
            "with capabilities: [[gpu]])",
            f"{FLAGS_FIX}; if that fails, install nvidia-container-toolkit on the host, run "
            "`sudo nvidia-ctk runtime configure --runtime=docker` and restart docker")
    if f.in_container:
        return Diagnosis(
            name, "problem", "GPU devices are present but libcuda.so.1 is not (driver libraries not mounted)",
            "the GPUs were passed with --device, or NVIDIA_DRIVER_CAPABILITIES lacks 'compute,utility', so the "
            "toolkit did not mount the driver's libraries",
            "use --gpus all (or -e NVIDIA_DRIVER_CAPABILITIES=compute,utility with the nvidia runtime)")
    return Diagnosis(name, "problem", "no NVIDIA driver: libcuda.so.1 is not found on this host",
                     f"the NVIDIA driver is not installed ({f.libcuda_error or 'libcuda.so.1 missing'})",
                     "install the NVIDIA driver (nvidia-smi must work); on a CPU-only host use `smoke --expect cpu`")


def driver_floor(f: Facts) -> tuple[str | None, str]:
    if f.driver_min:
        return f.driver_min, f"variant {f.variant or '?'} (build-info driver_min)"
    if f.torch_cuda:
        return driver_floor_for_cuda(f.torch_cuda), f"CUDA {f.torch_cuda} minor-version compatibility"
    return None, "unknown"


def diagnose_driver(f: Facts) -> Diagnosis:
    name = "Driver version"
    if f.driver is None and f.cuda_driver is None:
        return Diagnosis(name, "skipped", "no driver to check (no NVML / libcuda)")
    floor, source = driver_floor(f)
    need_cuda = f.require_cuda or (f"{f.torch_cuda.split('.')[0]}.0" if f.torch_cuda else None)
    problems = []
    if floor and f.driver and not version_at_least(f.driver, floor):
        problems.append(f"driver {f.driver} < {floor} required by {source}")
    if need_cuda and f.cuda_driver and not version_at_least(f.cuda_driver, need_cuda):
        problems.append(f"the driver supports CUDA {f.cuda_driver}, the image needs CUDA >= {need_cuda}")
    if problems:
        return Diagnosis(name, "problem", "driver too old for this image: " + "; ".join(problems),
                         "the host's NVIDIA driver predates the CUDA version this variant's torch was built for "
                         "(in docker: nvidia-container-cli reports 'unsatisfied condition: cuda>=...')",
                         f"upgrade the host driver to >= {floor or need_cuda}, or use an image variant for an older "
                         f"CUDA (`imagectl variants` lists each variant's driver floor)")
    if floor is None and need_cuda is None:
        return Diagnosis(name, "ok", f"driver {f.driver}, CUDA {f.cuda_driver} (no floor known: no build info, no torch)")
    return Diagnosis(name, "ok", f"driver {f.driver or '?'} (>= {floor or '?'}), CUDA driver {f.cuda_driver or '?'} "
                                 f"(>= {need_cuda or '?'}); floor from {source}")


def diagnose_arch(f: Facts) -> Diagnosis:
    name = "GPU architecture"
    if not f.gpus:
        return Diagnosis(name, "skipped", "no GPU visible")
    if not f.arch_list:
        return Diagnosis(name, "skipped", "torch is not a CUDA build here, or not installed (no arch list)")
    missing, covered = [], []
    for g in f.gpus:
        cap = parse_sm(str(g["sm"]))
        how = coverage(cap, f.arch_list)
        (covered if how else missing).append(f"GPU {g['index']} {g['name']} {g['sm']}" + (f" via {how}" if how else ""))
    if missing:
        return Diagnosis(name, "problem", f"not compiled for: {', '.join(missing)}",
                         f"torch {f.torch_version} was compiled for {' '.join(f.arch_list)} only; this GPU's "
                         "architecture is newer or older than the build covers",
                         "use a variant whose CUDA version supports this GPU (newer GPUs need a newer CUDA build, "
                         "e.g. Blackwell sm_100/sm_120 needs CUDA >= 12.8, i.e. PyTorch >= 2.7), or an older "
                         "PyTorch for GPUs it dropped")
    return Diagnosis(name, "ok", "; ".join(covered))


def diagnose_shm(f: Facts) -> Diagnosis:
    name = "/dev/shm size"
    if f.shm_bytes is None:
        return Diagnosis(name, "warning", "/dev/shm is missing", "no shared-memory filesystem: DataLoader workers "
                         "and NCCL's shared-memory transport need one", FLAGS_FIX)
    size = _fmt_mib(f.shm_bytes)
    if f.shm_bytes < SHM_MIN_BYTES:
        return Diagnosis(name, "problem", f"/dev/shm is only {size}",
                         "too small for NCCL (it fails with 'unhandled system error' / bus errors) and for DataLoader "
                         "workers ('DataLoader worker ... killed by signal: Bus error'); Docker's default is 64 MiB",
                         FLAGS_FIX)
    if f.shm_bytes < SHM_GOOD_BYTES:
        return Diagnosis(name, "warning", f"/dev/shm is {size}: enough for small batches",
                         "large batches x workers x prefetch can exhaust it", FLAGS_FIX)
    return Diagnosis(name, "ok", f"/dev/shm is {size}")


def diagnose_cudnn_shadowing(f: Facts) -> Diagnosis:
    name = "cuDNN"
    mismatch = f.cudnn_runtime is not None and f.cudnn_compiled is not None and \
        list(f.cudnn_runtime) != list(f.cudnn_compiled)
    system_dirs = sorted({str(Path(p).parent) for p in f.system_cudnn})
    loaded_system = [p for p in f.loaded_cudnn if str(Path(p).parent) in system_dirs]
    ver = ".".join(map(str, f.cudnn_runtime)) if f.cudnn_runtime else "?"
    want = ".".join(map(str, f.cudnn_compiled)) if f.cudnn_compiled else "?"
    if loaded_system or (mismatch and system_dirs):
        return Diagnosis(name, "problem", f"a system cuDNN shadows the bundled one (loaded {ver}, torch built with {want})",
                         f"LD_LIBRARY_PATH puts {', '.join(system_dirs)} (with libcudnn) before the nvidia-cudnn wheel, "
                         "so the dynamic loader picks the system copy",
                         f"remove {', '.join(system_dirs)} from LD_LIBRARY_PATH (the image needs no LD_LIBRARY_PATH for CUDA)")
    if mismatch:
        return Diagnosis(name, "problem", f"cuDNN {ver} is loaded but torch was built with {want}",
                         f"another libcudnn is found first ({', '.join(f.loaded_cudnn) or 'unknown path'})",
                         "reinstall the pinned nvidia-cudnn wheel and unset LD_LIBRARY_PATH / LD_PRELOAD")
    if system_dirs:
        return Diagnosis(name, "warning", f"libcudnn in {', '.join(system_dirs)} on LD_LIBRARY_PATH (not loaded now)",
                         "a system cuDNN on LD_LIBRARY_PATH can shadow the bundled one in other processes",
                         f"remove {', '.join(system_dirs)} from LD_LIBRARY_PATH")
    if f.cudnn_runtime is None:
        return Diagnosis(name, "skipped", "cuDNN not loaded (torch absent or a CPU build)")
    return Diagnosis(name, "ok", f"cuDNN {ver} loaded, equal to torch's compile-time {want}")


def diagnose_nccl_p2p(f: Facts) -> Diagnosis:
    name = "NCCL P2P"
    p = f.nccl
    if p is None:
        return Diagnosis(name, "skipped", "needs >= 2 GPUs (or was not run: --no-nccl)")
    if p.first_ok:
        return Diagnosis(name, "ok", f"NCCL all-reduce over {p.gpus} GPUs is correct")
    if p.retry_ok:
        return Diagnosis(name, "problem", f"NCCL all-reduce over {p.gpus} GPUs fails with P2P and works with "
                                          "NCCL_P2P_DISABLE=1",
                         "GPU peer-to-peer transfers are broken on this host (IOMMU/ACS enabled on PCIe switches, "
                         f"virtualisation without P2P, or a container without --ipc=host): {p.first_error}",
                         "export NCCL_P2P_DISABLE=1 (slower), or disable ACS/IOMMU for the GPUs on the host; in "
                         "Docker also pass --ipc=host")
    return Diagnosis(name, "problem", f"NCCL all-reduce over {p.gpus} GPUs fails, also without P2P",
                     f"{p.first_error}; without P2P: {p.retry_error}",
                     f"rerun with NCCL_DEBUG=INFO; check /dev/shm ({FLAGS_FIX}) and the driver")


# --- any UID, read-only roots, noexec mounts ------------------------------------------------------

USER_HOOK_NOTE = ("pytorch-cuda images set LOGNAME/USER=uid_<uid> themselves at interpreter start (the "
                  "pytorch_cuda_startup hook): an image without it predates that fix, rebuild it")
HOME_HOOK_NOTE = ("pytorch-cuda images fall back to $TMPDIR/home-<uid> themselves at interpreter start (the "
                  "pytorch_cuda_startup hook): an image without it predates that fix, rebuild it")
RO_ROOT_FIX = ("with a read-only root, mount one writable, exec-capable /tmp: docker --read-only --tmpfs /tmp:exec; "
               "Kubernetes: an emptyDir volume at /tmp")


def diagnose_user_name(f: Facts) -> Diagnosis:
    name = "User name"
    r = f.runtime
    if r is None:
        return Diagnosis(name, "skipped", "not recorded (facts from an older doctor)")
    if r.getuser_error:
        return Diagnosis(name, "problem", f"uid {r.uid} has no user name: getpass.getuser() fails",
                         f"uid {r.uid} has no passwd entry (docker --user, Kubernetes runAsUser and OpenShift run "
                         "UIDs the image does not know) and LOGNAME/USER are unset, so torch.compile fails with "
                         f"KeyError: getpwuid(): uid not found ({r.getuser_error})",
                         f"set a name (docker -e USER=uid_{r.uid}; Kubernetes: env USER) or TORCHINDUCTOR_CACHE_DIR; "
                         + USER_HOOK_NOTE)
    if not r.passwd_entry:
        src = next(iter(r.user_env), "the environment")
        by = " (set by the image's start-up hook)" if r.fallback and "USER=" in r.fallback else ""
        return Diagnosis(name, "ok", f"uid {r.uid} has no passwd entry; user name {r.getuser!r} from ${src}{by}")
    return Diagnosis(name, "ok", f"user {r.getuser} (uid {r.uid}, gid {r.gid})")


def _unwritable_cause(st: PathState, r: RuntimeFacts) -> str:
    where = describe_mount(st)
    if st.read_only_fs:
        return (f"{st.path} is on a read-only filesystem{where} (docker --read-only / Kubernetes "
                "readOnlyRootFilesystem)")
    if st.path == "/" and not r.passwd_entry:
        return f"HOME=/ because uid {r.uid} has no passwd entry (the container runtime then sets HOME=/)"
    return f"uid {r.uid} (gid {r.gid}) may not write {st.existing or st.path}{where}"


def diagnose_home(f: Facts) -> Diagnosis:
    name = "HOME"
    r = f.runtime
    if r is None:
        return Diagnosis(name, "skipped", "not recorded (facts from an older doctor)")
    st = r.location("HOME")
    if st is None or st.path is None:
        return Diagnosis(name, "problem", "HOME is not set", "the runtime started this process without HOME",
                         "set HOME to a writable directory (e.g. -e HOME=/tmp); " + HOME_HOOK_NOTE)
    if not st.writable:
        mount = "" if st.path == "/" else (f", or mount a writable volume at {st.path} (docker --tmpfs "
                                            f"{st.path}:exec; Kubernetes: an emptyDir)")
        return Diagnosis(name, "problem", f"HOME={st.path} is not writable by uid {r.uid}", _unwritable_cause(st, r),
                         f"-e HOME=/tmp (any writable directory){mount}; " + HOME_HOOK_NOTE)
    how = f"; fallback by the image's start-up hook: {r.fallback}" if r.fallback and "HOME=" in r.fallback else ""
    made = "" if st.exists else " (created on first use)"
    return Diagnosis(name, "ok", f"HOME={st.path} is writable{made}{how}")


def _location_fix(st: PathState) -> str:
    if st.role == "TMPDIR":
        return "mount a writable /tmp (docker --tmpfs /tmp:exec; Kubernetes: an emptyDir at /tmp) or set TMPDIR"
    return f"point ${st.env_var or st.role} at a writable directory"


def diagnose_cache_dirs(f: Facts) -> Diagnosis:
    name = "Cache locations"
    r = f.runtime
    if r is None:
        return Diagnosis(name, "skipped", "not recorded (facts from an older doctor)")
    home = r.location("HOME")
    home_bad = home is not None and home.path is not None and not home.writable
    checked = [st for st in r.locations if st.role != "HOME" and st.path is not None]
    bad = [st for st in checked if not st.writable]
    if bad:
        # Everything that defaults to $HOME fails with it: one cause, not one per cache.
        via_home = [st for st in bad if home_bad and "$HOME" in st.source]
        own = [st for st in bad if st not in via_home]
        causes = [f"{st.role} ({st.what}, {st.source}): {_unwritable_cause(st, r)}" for st in own]
        fixes = list(dict.fromkeys(_location_fix(st) for st in own))
        if via_home:
            causes.insert(0, f"{', '.join(st.role for st in via_home)} default to $HOME={home.path if home else '?'}, "
                             "which is not writable (see HOME)")
            fixes.insert(0, "fix HOME (see HOME) or set those variables to writable directories")
        return Diagnosis(name, "problem", "not writable: " + ", ".join(f"{st.role}={st.path}" for st in bad),
                         "; ".join(causes), "; ".join(fixes) + (f"; {RO_ROOT_FIX}" if r.read_only_root else ""))
    unresolved = [st.role for st in r.locations if st.path is None and st.role != "HOME"]
    tail = f" ({', '.join(unresolved)} unresolved: see User name)" if unresolved else ""
    return Diagnosis(name, "ok", f"{len(checked)} cache locations writable{tail}")


def diagnose_exec_mounts(f: Facts) -> Diagnosis:
    name = "Compiled-code locations"
    r = f.runtime
    if r is None:
        return Diagnosis(name, "skipped", "not recorded (facts from an older doctor)")
    targets = [st for st in r.locations if st.needs_exec and st.path is not None]
    bad = [st for st in targets if st.noexec]
    if bad:
        mounts = sorted({st.mount.mount_point for st in bad if st.mount})
        return Diagnosis(
            name, "problem", "mounted noexec: " + ", ".join(f"{st.role}={st.path}{describe_mount(st)}" for st in bad),
            "shared objects that torch.compile (Inductor), Triton, cpp_extension and pip --user put there cannot be "
            "loaded ('failed to map segment from shared object'); Docker and Podman mount --tmpfs noexec unless "
            "told :exec",
            f"remount {', '.join(mounts) or 'it'} with exec (docker --tmpfs /tmp:exec; Kubernetes emptyDir volumes "
            "are exec), or set TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR / TORCH_EXTENSIONS_DIR to a writable, "
            "exec-mounted directory")
    return Diagnosis(name, "ok", f"{len(targets)} locations that load compiled code are exec-mounted")


# --- RDMA fabric and NCCL's network transport -------------------------------------------------------

RDMA_PACKAGES = "libibverbs1 ibverbs-providers librdmacm1t64 (librdmacm1 before Debian 13 / Ubuntu 24.04)"
DEVICE_PASS_FIX = ("pass the RDMA devices into the container: docker --device=/dev/infiniband --ulimit memlock=-1 "
                   "(RoCE may also need --network host); Kubernetes: request the RDMA device plugin's resource "
                   "(e.g. rdma/rdma_shared_device_a: 1) and IPC_LOCK; see docs/clusters.md")
EFA_FIX = ("add the AWS OFI NCCL plugin (aws-ofi-nccl, with libfabric's EFA provider) in a layer FROM this image "
           "and set FI_PROVIDER=efa; see docs/clusters.md (EFA)")


def _libs_ok(fb: FabricFacts) -> bool:
    return bool(fb.verbs and fb.verbs.path)


def diagnose_rdma_libraries(f: Facts) -> Diagnosis:
    name = "RDMA libraries"
    fb = f.fabric
    if fb is None:
        return Diagnosis(name, "skipped", "not recorded (facts from an older doctor)")
    if not _libs_ok(fb):
        err = fb.verbs.error if fb.verbs else "not probed"
        if fb.devices:
            return Diagnosis(name, "problem", f"RDMA devices are visible but {fb.verbs.name if fb.verbs else 'libibverbs'} "
                                              "does not load: NCCL falls back to TCP sockets",
                             f"rdma-core's userspace is not installed in this container ({err})",
                             f"install {RDMA_PACKAGES}, or use a pytorch-cuda image (they ship them)")
        if fb.in_image:
            return Diagnosis(name, "problem", "this image has no RDMA userspace (libibverbs.so.1 does not load)",
                             f"the image was built without rdma-core's libraries ({err}): on an InfiniBand/RoCE "
                             "cluster NCCL would fall back to TCP sockets", "rebuild the image (the Dockerfile installs "
                             f"{RDMA_PACKAGES})")
        return Diagnosis(name, "skipped", "no RDMA userspace and no RDMA devices here (a plain host)")
    problems = []
    if not fb.providers:
        problems.append("no providers in /etc/libibverbs.d (ibverbs-providers missing): libibverbs finds no device")
    wanted = sorted({d.provider for d in fb.devices if not d.is_efa or "efa" in fb.providers} - set(fb.providers))
    if fb.providers and wanted:
        problems.append(f"no provider for {', '.join(wanted)} in /etc/libibverbs.d")
    if fb.devices and fb.verbs_device_count == 0 and any(d.uverbs_node for d in fb.devices):
        problems.append("ibv_get_device_list() finds 0 devices although uverbs nodes are present")
    if not (fb.rdmacm and fb.rdmacm.path):
        problems.append(f"librdmacm.so.1 does not load ({fb.rdmacm.error if fb.rdmacm else 'not probed'})")
    lib = f"libibverbs.so.1 ({fb.verbs.path})" if fb.verbs else "libibverbs.so.1"
    if problems:
        status = "problem" if fb.devices or fb.in_image else "warning"
        return Diagnosis(name, status, f"{lib} loads, but: " + "; ".join(problems),
                         "rdma-core's userspace is incomplete in this container",
                         f"install {RDMA_PACKAGES}")
    shown = ", ".join(fb.providers[:6]) + (", ..." if len(fb.providers) > 6 else "")
    count = "" if fb.verbs_device_count is None else f"; {fb.verbs_device_count} verbs device(s) open"
    return Diagnosis(name, "ok", f"{lib} and librdmacm.so.1 load; {len(fb.providers)} providers ({shown}){count}")


def _ifaces(fb: FabricFacts) -> str:
    ifs = socket_interfaces(fb)
    return ", ".join(ifs[:3]) + (", ..." if len(ifs) > 3 else "") if ifs else "no interface"


def _sockets_line(fb: FabricFacts) -> str:
    return f"TCP sockets on {_ifaces(fb)}"


def diagnose_nccl_network(f: Facts) -> Diagnosis:
    """Which transport multi-node NCCL traffic takes from here, and why when it is sockets."""
    name = "NCCL network"
    fb = f.fabric
    if fb is None:
        return Diagnosis(name, "skipped", "not recorded (facts from an older doctor)")
    env = fb.nccl_env
    forced = env.get("NCCL_NET", "").strip().lower()
    ifname = env.get("NCCL_SOCKET_IFNAME")
    if ifname and not socket_interfaces(fb):
        return Diagnosis(name, "problem", f"NCCL_SOCKET_IFNAME={ifname} matches no interface here "
                                          f"({', '.join(fb.interfaces) or 'none'})",
                         "NCCL's bootstrap needs a socket interface even with RDMA: init fails with "
                         "'Bootstrap : no socket interface found'",
                         "set NCCL_SOCKET_IFNAME to one of the interfaces above (a prefix such as eth or ens, "
                         "'=name' for an exact match, '^lo,docker' to exclude), or unset it")
    plugin_off = env.get("NCCL_NET_PLUGIN", "").lower() == "none"
    efa = [d for d in fb.devices if d.is_efa]
    if fb.net_plugins and not plugin_off and forced not in ("socket", "ib"):
        over = f" over EFA ({', '.join(d.name for d in efa)})" if efa else ""
        return Diagnosis(name, "ok", f"inter-node transport: the net plugin {', '.join(fb.net_plugins)}{over}; "
                                     f"bootstrap on {_ifaces(fb)}")
    if efa:
        return Diagnosis(name, "warning", f"inter-node transport: {_sockets_line(fb)}: EFA devices "
                                          f"({', '.join(d.name for d in efa)}) are visible but no NCCL net plugin is installed",
                         "NCCL's own IB transport cannot drive EFA; only the AWS OFI plugin (libnccl-net.so) can",
                         EFA_FIX)
    hcas = [d for d in selected_hcas(fb) if not d.is_efa]
    usable = [d for d in hcas if d.uverbs_node and d.active_ports()]
    ib_off = env.get("NCCL_IB_DISABLE", "").strip() == "1" or forced == "socket"
    if usable and _libs_ok(fb) and fb.verbs_device_count != 0:
        if ib_off:
            what = "NCCL_IB_DISABLE=1" if env.get("NCCL_IB_DISABLE", "").strip() == "1" else "NCCL_NET=Socket"
            return Diagnosis(name, "warning", f"inter-node transport: {_sockets_line(fb)} ({what}) although "
                                              f"{', '.join(describe_device(d) for d in usable)} can be used",
                             f"{what} turns NCCL's IB verbs transport off", f"unset {what.split('=')[0]}")
        roce = any(p.link_layer == "Ethernet" for d in usable for p in d.ports)
        summary = (f"inter-node transport: IB verbs over {', '.join(describe_device(d) for d in usable)}; bootstrap on "
                   f"{_ifaces(fb)}")
        if roce and "NCCL_IB_GID_INDEX" not in env:
            summary += " (RoCE: set NCCL_IB_GID_INDEX if the default GID is not RoCE v2)"
        if fb.memlock_bytes is not None and fb.memlock_bytes != -1 and fb.memlock_bytes < MEMLOCK_MIN:
            return Diagnosis(name, "warning", summary + f"; but memlock is limited to {fb.memlock_bytes // 1024} KiB",
                             "NCCL registers its buffers with the HCA (ibv_reg_mr), which needs locked memory: "
                             "with this limit it fails or falls back", "docker --ulimit memlock=-1; Kubernetes/"
                             "containerd default to unlimited; Slurm: PropagateResourceLimitsExcept=MEMLOCK, "
                             "ulimit -l unlimited on the nodes")
        return Diagnosis(name, "ok", summary)
    if forced == "ib":
        return Diagnosis(name, "problem", "NCCL_NET=IB forces IB verbs, but no usable IB device is in this container",
                         _why_not_ib(fb, hcas), "unset NCCL_NET, or " + DEVICE_PASS_FIX)
    if not fb.devices:
        return Diagnosis(name, "ok", f"inter-node transport: {_sockets_line(fb)}: no RDMA devices visible "
                                     "(fine on one node; across nodes expect a fraction of an RDMA fabric's bandwidth)")
    cause = _why_not_ib(fb, hcas)
    if not hcas:
        fix = f"NCCL_IB_HCA={env.get('NCCL_IB_HCA')} excludes every device: list some of {', '.join(d.name for d in fb.devices)}"
    elif not _libs_ok(fb):
        fix = f"install {RDMA_PACKAGES}"
    elif not any(d.uverbs_node for d in hcas):
        fix = DEVICE_PASS_FIX
    else:
        fix = "check the fabric on the host (ibstat, the subnet manager, cabling) and the port states"
    return Diagnosis(name, "warning", f"inter-node transport: {_sockets_line(fb)}: RDMA devices exist but NCCL "
                                      "cannot use them (multi-node runs fall back to TCP sockets)", cause, fix)


def _why_not_ib(fb: FabricFacts, hcas: list[IbDevice]) -> str:
    if not fb.devices:
        return "no RDMA devices in /sys/class/infiniband"
    if not hcas:
        return f"NCCL_IB_HCA={fb.nccl_env.get('NCCL_IB_HCA')} matches none of {', '.join(d.name for d in fb.devices)}"
    if not _libs_ok(fb):
        return f"libibverbs.so.1 does not load ({fb.verbs.error if fb.verbs else 'not probed'})"
    missing = [d.name for d in hcas if not d.uverbs_node]
    if len(missing) == len(hcas):
        return (f"{', '.join(missing)} exist on the host (sysfs) but /dev/infiniband/uverbs* is not in this container "
                "(devices not passed in)")
    down = [d.name for d in hcas if d.uverbs_node and not d.active_ports()]
    if down:
        return f"no ACTIVE port on {', '.join(down)} ({', '.join(p.state for d in hcas for p in d.ports)})"
    return "ibv_get_device_list() opens no device (provider missing for this hardware?)"


DIAGNOSES = (diagnose_gpu_runtime, diagnose_driver, diagnose_arch, diagnose_shm, diagnose_cudnn_shadowing,
             diagnose_nccl_p2p, diagnose_user_name, diagnose_home, diagnose_cache_dirs, diagnose_exec_mounts,
             diagnose_rdma_libraries, diagnose_nccl_network)


def diagnose(f: Facts) -> list[Diagnosis]:
    return [d(f) for d in DIAGNOSES]


# ------------------------------------------------------------------------------------------------
# facts: reading the real machine


def _in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    try:
        text = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(k in text for k in ("docker", "containerd", "kubepods", "libpod"))


def _mapped(prefix: str) -> list[str]:
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    return sorted({ln.split()[-1] for ln in lines if f"/{prefix}" in ln and ln.split()[-1].startswith("/")})


def _probe_libcuda(f: Facts) -> None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        f.libcuda_error = str(exc)
        return
    f.libcuda = (_mapped("libcuda.so") or ["libcuda.so.1"])[0]
    rc = lib.cuInit(0)
    if rc != 0:
        f.cu_init_error = int(rc)
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        f.cuda_driver = cuda_driver_int_to_str(version.value)


def _probe_torch(f: Facts) -> None:
    try:
        import torch
    except ImportError as exc:
        f.notes.append(f"torch not importable: {exc}")
        return
    f.torch_version, f.torch_cuda = torch.__version__, torch.version.cuda
    if torch.version.cuda is None:
        return
    try:
        f.arch_list = list(torch.cuda.get_arch_list())
        runtime = torch.backends.cudnn.version()
        if runtime is not None:
            from smokesuite.versions import cudnn_int_to_tuple

            f.cudnn_runtime = list(cudnn_int_to_tuple(runtime))
            f.cudnn_compiled = list(torch._C._cudnn.getCompileVersion())
        f.loaded_cudnn = _mapped("libcudnn")
    except Exception as exc:
        f.notes.append(f"torch CUDA probe failed: {type(exc).__name__}: {exc}")


def _probe_nccl(f: Facts, timeout_s: float) -> None:
    from smokesuite.allreduce import MIB as AR_MIB
    from smokesuite.allreduce import run_allreduce

    n = len(f.gpus)
    first = run_allreduce("nccl", n, [64 * AR_MIB], timeout_s=timeout_s, measure=False)
    probe = NcclProbe(gpus=n, first_ok=first.ok, first_error=None if first.ok else first.summary())
    if not first.ok:
        retry = run_allreduce("nccl", n, [64 * AR_MIB], timeout_s=timeout_s, measure=False,
                              env_overrides={"NCCL_P2P_DISABLE": "1"})
        probe.retry_ok, probe.retry_error = retry.ok, None if retry.ok else retry.summary()
    f.nccl = probe


def gather_facts(expect: str | None = None, *, nccl: bool = True, nccl_timeout_s: float = 60.0) -> Facts:
    from smokesuite.buildinfo import load_build_info
    from smokesuite.hostinfo import query_nvml

    f = Facts(expect=expect, in_container=_in_container(), dev_nodes=sorted(glob.glob("/dev/nvidia*")),
              nvidia_visible_devices=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
              ld_library_path=os.environ.get("LD_LIBRARY_PATH", ""))
    try:
        info = load_build_info()
    except Exception as exc:
        info = None
        f.notes.append(str(exc))
    if info:
        f.variant, f.driver_min = info.variant, info.get("driver_min")
        f.require_cuda = parse_require_cuda(info.get("nvidia_require_cuda") or "")
    _probe_libcuda(f)
    host = query_nvml()
    if host.error:
        f.notes.append(host.error)
    f.driver, f.cuda_driver = host.driver, host.cuda_driver or f.cuda_driver
    f.gpus = [{"index": g.index, "name": g.name, "sm": g.sm} for g in host.gpus]
    try:
        st = os.statvfs("/dev/shm")
        f.shm_bytes = st.f_blocks * st.f_frsize
    except OSError:
        f.shm_bytes = None
    for d in filter(None, f.ld_library_path.split(":")):
        f.system_cudnn += sorted(glob.glob(os.path.join(d, "libcudnn*.so*")))
    _probe_torch(f)
    try:
        f.runtime = gather_runtime()
    except Exception as exc:  # a broken probe must not hide the other diagnoses
        f.notes.append(f"runtime probe failed: {type(exc).__name__}: {exc}")
    try:
        f.fabric = gather_fabric(in_image=in_image())
    except Exception as exc:
        f.notes.append(f"fabric probe failed: {type(exc).__name__}: {exc}")
    if nccl and len(f.gpus) >= 2 and f.torch_cuda and f.libcuda and f.cu_init_error is None:
        _probe_nccl(f, nccl_timeout_s)
    return f


# ------------------------------------------------------------------------------------------------
# command line

MARK = {"ok": "[ OK ]", "problem": "[FAIL]", "warning": "[WARN]", "skipped": "[SKIP]"}


def format_diagnoses(diagnoses: list[Diagnosis]) -> str:
    lines = []
    for d in diagnoses:
        lines.append(f"{MARK[d.status]} {d.check}: {d.summary}")
        if d.status in ("problem", "warning"):
            if d.cause:
                lines.append(f"       cause: {d.cause}")
            if d.fix:
                lines.append(f"       fix:   {d.fix}")
    problems = sum(d.status == "problem" for d in diagnoses)
    warnings = sum(d.status == "warning" for d in diagnoses)
    lines.append("")
    lines.append(f"doctor: {problems} problem(s), {warnings} warning(s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="doctor", description=__doc__.splitlines()[0])
    p.add_argument("--expect", choices=("gpu", "cpu"), default=os.environ.get("SMOKE_EXPECT") or None,
                   help="cpu: a missing GPU runtime is expected (default: $SMOKE_EXPECT)")
    p.add_argument("--json", action="store_true", help="print diagnoses (and facts) as JSON")
    p.add_argument("--no-nccl", action="store_true", help="skip the NCCL all-reduce probe (multi-GPU hosts)")
    p.add_argument("--facts", help="diagnose facts recorded in this JSON file instead of this machine")
    p.add_argument("--dump-facts", help="also write the gathered facts to this JSON file")
    args = p.parse_args(argv)
    if args.expect not in (None, "gpu", "cpu"):
        p.error(f"SMOKE_EXPECT={args.expect!r}: use gpu or cpu")
    if args.facts:
        facts = Facts.from_json(json.loads(Path(args.facts).read_text()))
    else:
        facts = gather_facts(args.expect, nccl=not args.no_nccl)
    if args.dump_facts:
        Path(args.dump_facts).write_text(json.dumps(asdict(facts), indent=2) + "\n")
    diagnoses = diagnose(facts)
    if args.json:
        print(json.dumps({"facts": asdict(facts), "diagnoses": [asdict(d) for d in diagnoses]}, indent=2))
    else:
        print(format_diagnoses(diagnoses))
    return 1 if any(d.status == "problem" for d in diagnoses) else 0


if __name__ == "__main__":
    sys.exit(main())
