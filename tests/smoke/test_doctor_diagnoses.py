"""Each doctor diagnosis on recorded inputs (driver versions, arch lists, shm sizes, env)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from smokesuite.doctor import (
    Facts,
    NcclProbe,
    diagnose,
    diagnose_arch,
    diagnose_cache_dirs,
    diagnose_cudnn_shadowing,
    diagnose_driver,
    diagnose_exec_mounts,
    diagnose_gpu_runtime,
    diagnose_home,
    diagnose_nccl_network,
    diagnose_nccl_p2p,
    diagnose_rdma_libraries,
    diagnose_shm,
    diagnose_user_name,
    format_diagnoses,
)
from smokesuite.fabric import FabricFacts, IbDevice, IbPort, LibProbe
from smokesuite.runtime_env import Mount, PathState, RuntimeFacts

MIB = 1024 * 1024
TORCH26_CU124_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "sm": "sm_90"}


def gpu_facts(**kw: object) -> Facts:
    base = dict(in_container=True, libcuda="/usr/lib/x86_64-linux-gnu/libcuda.so.1", driver="550.54.15",
                cuda_driver="12.4", gpus=[H100], torch_version="2.6.0+cu124", torch_cuda="12.4",
                arch_list=TORCH26_CU124_ARCHS, variant="cu124", driver_min="525.60.13", require_cuda="12.0",
                shm_bytes=8192 * MIB, cudnn_runtime=[9, 1, 0], cudnn_compiled=[9, 1, 0])
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


# --- GPU runtime ---------------------------------------------------------------------------------

def test_recorded_h200_host_is_healthy(h200_facts: Facts) -> None:
    statuses = {d.check: d.status for d in diagnose(h200_facts)}
    assert statuses["GPU runtime"] == "ok"
    assert statuses["Driver version"] == "ok"
    assert statuses["GPU architecture"] == "ok"
    assert statuses["NCCL P2P"] == "skipped"  # one GPU


def test_container_started_without_gpus() -> None:
    d = diagnose_gpu_runtime(Facts(in_container=True, libcuda_error="libcuda.so.1: cannot open shared object file"))
    assert d.status == "problem"
    assert "--gpus all" in (d.cause or "") and "--gpus all" in (d.fix or "")
    assert "nvidia-container-toolkit" in (d.fix or "")


def test_devices_without_driver_libraries() -> None:
    d = diagnose_gpu_runtime(Facts(in_container=True, dev_nodes=["/dev/nvidia0", "/dev/nvidiactl"]))
    assert d.status == "problem" and "NVIDIA_DRIVER_CAPABILITIES" in (d.cause or "")


def test_host_without_driver_and_cpu_mode() -> None:
    assert diagnose_gpu_runtime(Facts(in_container=False)).status == "problem"
    assert diagnose_gpu_runtime(Facts(in_container=True, expect="cpu")).status == "skipped"


def test_cuinit_driver_mismatch_after_upgrade() -> None:
    d = diagnose_gpu_runtime(gpu_facts(cu_init_error=803))
    assert d.status == "problem" and "reboot" in (d.fix or "")


# --- driver floor --------------------------------------------------------------------------------

def test_driver_older_than_variant_floor() -> None:
    d = diagnose_driver(gpu_facts(driver="470.57.02", cuda_driver="11.4"))
    assert d.status == "problem"
    assert "470.57.02 < 525.60.13" in d.summary and "CUDA 11.4" in d.summary
    assert "525.60.13" in (d.fix or "")


def test_driver_at_floor_passes_and_floor_comes_from_build_info() -> None:
    d = diagnose_driver(gpu_facts(driver="525.60.13", cuda_driver="12.0"))
    assert d.status == "ok" and "build-info" in d.summary


def test_driver_floor_falls_back_to_torch_cuda_without_build_info() -> None:
    d = diagnose_driver(gpu_facts(driver_min=None, require_cuda=None, variant=None, torch_cuda="13.0",
                                  driver="575.51.03", cuda_driver="12.9"))
    assert d.status == "problem" and "580.65.06" in d.summary


# --- arch ----------------------------------------------------------------------------------------

def test_blackwell_not_compiled_into_torch_26() -> None:
    d = diagnose_arch(gpu_facts(gpus=[{"index": 0, "name": "NVIDIA B200", "sm": "sm_100"}]))
    assert d.status == "problem" and "sm_100" in d.summary and "sm_90" in (d.cause or "")


def test_ada_runs_on_binary_compatible_sm86() -> None:
    d = diagnose_arch(gpu_facts(gpus=[{"index": 0, "name": "NVIDIA L4", "sm": "sm_89"}]))
    assert d.status == "ok" and "sm_86" in d.summary


def test_arch_skipped_without_gpus_or_cuda_torch() -> None:
    assert diagnose_arch(gpu_facts(gpus=[])).status == "skipped"
    assert diagnose_arch(gpu_facts(arch_list=[])).status == "skipped"


# --- /dev/shm ------------------------------------------------------------------------------------

def test_docker_default_shm_is_a_problem() -> None:
    d = diagnose_shm(Facts(shm_bytes=64 * MIB))
    assert d.status == "problem" and "64 MiB" in d.summary and "--shm-size" in (d.fix or "")


def test_shm_thresholds() -> None:
    assert diagnose_shm(Facts(shm_bytes=512 * MIB)).status == "warning"
    assert diagnose_shm(Facts(shm_bytes=16 * 1024 * MIB)).status == "ok"
    assert diagnose_shm(Facts(shm_bytes=None)).status == "warning"


# --- cuDNN shadowing -----------------------------------------------------------------------------

def test_system_cudnn_on_ld_library_path_shadows_bundled() -> None:
    f = gpu_facts(ld_library_path="/usr/local/cuda/lib64",
                  system_cudnn=["/usr/local/cuda/lib64/libcudnn.so.8"],
                  loaded_cudnn=["/usr/local/cuda/lib64/libcudnn.so.8"], cudnn_runtime=[8, 9, 2])
    d = diagnose_cudnn_shadowing(f)
    assert d.status == "problem" and "/usr/local/cuda/lib64" in (d.fix or "") and "8.9.2" in d.summary


def test_system_cudnn_present_but_not_loaded_is_a_warning() -> None:
    f = gpu_facts(ld_library_path="/opt/cudnn/lib", system_cudnn=["/opt/cudnn/lib/libcudnn.so.9"],
                  loaded_cudnn=["/opt/venv/lib/python3.13/site-packages/nvidia/cudnn/lib/libcudnn.so.9"])
    assert diagnose_cudnn_shadowing(f).status == "warning"


def test_bundled_cudnn_ok(h200_facts: Facts) -> None:
    assert diagnose_cudnn_shadowing(h200_facts).status == "ok"
    assert diagnose_cudnn_shadowing(gpu_facts(cudnn_runtime=[9, 5, 1])).status == "problem"


# --- NCCL P2P ------------------------------------------------------------------------------------

def test_nccl_works_only_without_p2p() -> None:
    probe = NcclProbe(gpus=2, first_ok=False, first_error="rank 0: DistBackendError: NCCL error: unhandled cuda error",
                      retry_ok=True)
    d = diagnose_nccl_p2p(gpu_facts(nccl=probe))
    assert d.status == "problem" and "NCCL_P2P_DISABLE=1" in (d.fix or "")


def test_nccl_fails_either_way_and_ok_case() -> None:
    both = NcclProbe(gpus=4, first_ok=False, first_error="timed out", retry_ok=False, retry_error="timed out")
    assert "also without P2P" in diagnose_nccl_p2p(gpu_facts(nccl=both)).summary
    assert diagnose_nccl_p2p(gpu_facts(nccl=NcclProbe(gpus=8, first_ok=True))).status == "ok"


# --- the command ---------------------------------------------------------------------------------

def test_doctor_replays_recorded_facts(tmp_path: Path, h200_facts: Facts) -> None:
    broken = dataclasses.replace(h200_facts, shm_bytes=64 * MIB, driver="570.86.10")
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(dataclasses.asdict(broken)))
    proc = subprocess.run([sys.executable, "-m", "smokesuite.doctor", "--facts", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[FAIL] /dev/shm size" in proc.stdout and "[FAIL] Driver version" in proc.stdout


def test_doctor_runs_for_real_on_this_host(tmp_path: Path) -> None:
    dump = tmp_path / "facts.json"
    proc = subprocess.run([sys.executable, "-m", "smokesuite.doctor", "--expect", "cpu", "--dump-facts", str(dump)],
                          capture_output=True, text=True, timeout=120)
    facts = Facts.from_json(json.loads(dump.read_text()))
    problems = [d for d in diagnose(facts) if d.status == "problem"]
    assert proc.returncode == (1 if problems else 0), proc.stdout + proc.stderr
    for check in ("GPU runtime", "Driver version", "GPU architecture", "/dev/shm size", "cuDNN", "NCCL P2P"):
        assert check in proc.stdout
    assert facts.shm_bytes is None or facts.shm_bytes > 0


def test_format_lists_cause_and_fix_for_problems() -> None:
    text = format_diagnoses(diagnose(Facts(in_container=True, shm_bytes=64 * MIB)))
    assert text.count("cause:") >= 2 and text.count("fix:") >= 2
    assert "2 problem(s)" in text


# --- any UID, HOME, caches, exec mounts (recorded runtime facts) ---------------------------------

def runtime_facts(**kw: object) -> RuntimeFacts:
    """uid 12345 without a passwd entry under `docker run --user 12345 --read-only --tmpfs /tmp`."""
    root = Mount("/", "overlay", ["ro", "relatime"])
    tmp = Mount("/tmp", "tmpfs", ["rw", "nosuid", "nodev", "noexec"])

    def loc(role: str, path: str, source: str, needs_exec: bool, mount: Mount, **more: object) -> PathState:
        ro = "ro" in mount.options
        return PathState(role=role, path=path, source=source, needs_exec=needs_exec, what=role.lower(),
                         env_var=role, existing=mount.mount_point, writable=not ro, read_only_fs=ro,
                         noexec="noexec" in mount.options, mount=mount, **more)  # type: ignore[arg-type]

    base = dict(uid=12345, gid=0, passwd_entry=False, getuser=None,
                getuser_error="OSError: No username set in the environment", home="/", read_only_root=True,
                user_site_enabled=True,
                locations=[loc("HOME", "/", "$HOME", False, root, exists=True, is_dir=True),
                           loc("TMPDIR", "/tmp", "tempfile.gettempdir()", True, tmp, exists=True, is_dir=True),
                           loc("XDG_CACHE_HOME", "/.cache", "default: $HOME/.cache", False, root),
                           loc("TRITON_CACHE_DIR", "/.triton/cache", "default: $HOME/.triton/cache", True, root),
                           PathState(role="TORCHINDUCTOR_CACHE_DIR", path=None, source="default", needs_exec=True,
                                     what="inductor", error="getuser fails")])
    base.update(kw)
    return RuntimeFacts(**base)  # type: ignore[arg-type]


def healed_runtime() -> RuntimeFacts:
    """The same container with the image's start-up hook and `--tmpfs /tmp:exec`."""
    tmp = Mount("/tmp", "tmpfs", ["rw", "nosuid", "nodev"])
    locs = [PathState(role=r, path=p, source=s, needs_exec=x, what=r, existing="/tmp", writable=True, mount=tmp,
                      exists=True, is_dir=True)
            for r, p, s, x in [("HOME", "/tmp/home-12345", "$HOME", False),
                               ("TMPDIR", "/tmp", "tempfile.gettempdir()", True),
                               ("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_uid_12345", "default", True),
                               ("TRITON_CACHE_DIR", "/tmp/home-12345/.triton/cache", "default: $HOME", True)]]
    return RuntimeFacts(uid=12345, gid=0, passwd_entry=False, user_env={"LOGNAME": "uid_12345", "USER": "uid_12345"},
                        getuser="uid_12345", home="/tmp/home-12345", startup_hook=True,
                        fallback="HOME=/tmp/home-12345 (was /); LOGNAME=USER=uid_12345 (no passwd entry)",
                        read_only_root=True, locations=locs)


def test_unknown_uid_without_user_name_is_a_problem() -> None:
    d = diagnose_user_name(Facts(runtime=runtime_facts()))
    assert d.status == "problem" and "12345" in d.summary
    assert "getpwuid" in (d.cause or "") and "USER" in (d.fix or "")


def test_user_name_from_startup_hook_is_ok() -> None:
    d = diagnose_user_name(Facts(runtime=healed_runtime()))
    assert d.status == "ok" and "uid_12345" in d.summary and "start-up hook" in d.summary


def test_home_on_read_only_root_is_a_problem() -> None:
    d = diagnose_home(Facts(runtime=runtime_facts()))
    assert d.status == "problem" and "HOME=/ " in d.summary
    assert "read-only" in (d.cause or "") and "HOME=/tmp" in (d.fix or "")


def test_home_slash_without_passwd_entry_names_the_cause() -> None:
    f = runtime_facts(read_only_root=False)
    f.locations[0] = dataclasses.replace(f.locations[0], read_only_fs=False, writable=False,
                                         mount=Mount("/", "overlay", ["rw"]))
    d = diagnose_home(Facts(runtime=f))
    assert d.status == "problem" and "no passwd entry" in (d.cause or "")


def test_caches_under_an_unwritable_home_are_one_cause() -> None:
    d = diagnose_cache_dirs(Facts(runtime=runtime_facts()))
    assert d.status == "problem"
    assert "XDG_CACHE_HOME" in d.summary and "TRITON_CACHE_DIR" in d.summary
    assert (d.cause or "").count("default to $HOME") == 1 and "--tmpfs /tmp:exec" in (d.fix or "")


def test_noexec_tmp_is_diagnosed_with_the_exec_fix() -> None:
    d = diagnose_exec_mounts(Facts(runtime=runtime_facts()))
    assert d.status == "problem" and "TMPDIR=/tmp" in d.summary and "noexec" in d.summary
    assert "failed to map segment" in (d.cause or "") and "/tmp:exec" in (d.fix or "")


def test_healed_container_is_ok_everywhere() -> None:
    f = Facts(runtime=healed_runtime())
    for diag in (diagnose_user_name, diagnose_home, diagnose_cache_dirs, diagnose_exec_mounts):
        assert diag(f).status == "ok", diag(f)


def test_old_recordings_without_runtime_facts_skip(h200_facts: Facts) -> None:
    for diag in (diagnose_user_name, diagnose_home, diagnose_cache_dirs, diagnose_exec_mounts,
                 diagnose_rdma_libraries, diagnose_nccl_network):
        assert diag(h200_facts).status == "skipped"


# --- RDMA libraries and the NCCL transport (devices as sysfs shows them) ------------------------

VERBS_OK = LibProbe("libibverbs.so.1", path="/usr/lib/x86_64-linux-gnu/libibverbs.so.1")
RDMACM_OK = LibProbe("librdmacm.so.1", path="/usr/lib/x86_64-linux-gnu/librdmacm.so.1")
NO_VERBS = LibProbe("libibverbs.so.1", error="libibverbs.so.1: cannot open shared object file")
PROVIDERS = ["bnxt_re", "efa", "irdma", "mlx4", "mlx5", "rxe"]


def hca(name: str = "mlx5_0", *, driver: str = "mlx5_core", link: str = "InfiniBand", state: str = "ACTIVE",
        node: bool = True) -> IbDevice:
    return IbDevice(name=name, driver=driver, ports=[IbPort(1, state, link, "400 Gb/sec (4X NDR)")],
                    uverbs="uverbs0", uverbs_node=node)


def fabric(**kw: object) -> FabricFacts:
    base = dict(devices=[hca()], uverbs_nodes=["/dev/infiniband/uverbs0"], verbs=VERBS_OK, rdmacm=RDMACM_OK,
                verbs_device_count=1, providers=PROVIDERS, interfaces=["eth0", "ib0", "lo"], memlock_bytes=-1,
                in_image=True)
    base.update(kw)
    return FabricFacts(**base)  # type: ignore[arg-type]


def test_infiniband_usable_reports_ib_verbs() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric()))
    assert d.status == "ok" and "IB verbs over mlx5_0 (InfiniBand, 1/1 port(s) active, 400 Gb/sec" in d.summary
    assert "bootstrap on ib0" in d.summary
    assert diagnose_rdma_libraries(Facts(fabric=fabric())).status == "ok"


def test_devices_not_passed_into_container_fall_back_to_sockets() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(devices=[hca(node=False)], uverbs_nodes=[])))
    assert d.status == "warning" and "TCP sockets" in d.summary and "fall back" in d.summary
    assert "/dev/infiniband/uverbs*" in (d.cause or "") and "--device=/dev/infiniband" in (d.fix or "")


def test_no_verbs_library_with_devices_is_a_problem() -> None:
    f = Facts(fabric=fabric(verbs=NO_VERBS, rdmacm=None, verbs_device_count=None, in_image=False))
    d = diagnose_rdma_libraries(f)
    assert d.status == "problem" and "falls back to TCP sockets" in d.summary and "libibverbs1" in (d.fix or "")
    assert diagnose_nccl_network(f).status == "warning"


def test_image_without_rdma_userspace_is_a_problem_plain_host_skips() -> None:
    image = fabric(devices=[], uverbs_nodes=[], verbs=NO_VERBS, rdmacm=None, verbs_device_count=None)
    assert diagnose_rdma_libraries(Facts(fabric=image)).status == "problem"
    host = dataclasses.replace(image, in_image=False)
    assert diagnose_rdma_libraries(Facts(fabric=host)).status == "skipped"


def test_missing_provider_for_the_hca() -> None:
    d = diagnose_rdma_libraries(Facts(fabric=fabric(providers=["efa", "rxe"])))
    assert d.status == "problem" and "mlx5" in d.summary


def test_no_rdma_devices_says_sockets_plainly() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(devices=[], uverbs_nodes=[], verbs_device_count=0)))
    assert d.status == "ok" and d.summary.startswith("inter-node transport: TCP sockets on ib0, eth0")
    assert "no RDMA devices" in d.summary


def test_socket_ifname_matching_nothing_is_a_problem() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_SOCKET_IFNAME": "ens"})))
    assert d.status == "problem" and "NCCL_SOCKET_IFNAME=ens" in d.summary and "eth0" in d.summary
    assert diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_SOCKET_IFNAME": "=eth0"}))).status == "ok"
    excl = diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_SOCKET_IFNAME": "^lo,ib"})))
    assert excl.status == "ok" and "bootstrap on eth0" in excl.summary


def test_ib_hca_filter_excluding_every_device() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_IB_HCA": "mlx5_4:1"})))
    assert d.status == "warning" and "NCCL_IB_HCA=mlx5_4:1" in (d.cause or "")
    ok = diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_IB_HCA": "=mlx5_0:1"})))
    assert ok.status == "ok"
    excluded = diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_IB_HCA": "^mlx5_0"})))
    assert excluded.status == "warning"


def test_ib_disabled_although_usable() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(nccl_env={"NCCL_IB_DISABLE": "1"})))
    assert d.status == "warning" and "NCCL_IB_DISABLE=1" in d.summary and "TCP sockets" in d.summary


def test_forced_ib_without_devices_fails() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(devices=[], nccl_env={"NCCL_NET": "IB"})))
    assert d.status == "problem" and "NCCL_NET=IB" in d.summary


def test_efa_needs_the_ofi_plugin() -> None:
    efa = hca("rdmap0s31", driver="efa", link="Unspecified")
    d = diagnose_nccl_network(Facts(fabric=fabric(devices=[efa])))
    assert d.status == "warning" and "EFA" in d.summary and "FI_PROVIDER=efa" in (d.fix or "")
    plug = fabric(devices=[efa], net_plugins=["/opt/amazon/ofi-nccl/lib/libnccl-net.so"])
    ok = diagnose_nccl_network(Facts(fabric=plug))
    assert ok.status == "ok" and "libnccl-net.so over EFA (rdmap0s31)" in ok.summary


def test_roce_hints_gid_index_and_memlock() -> None:
    roce = fabric(devices=[hca(link="Ethernet")], memlock_bytes=64 * 1024)
    d = diagnose_nccl_network(Facts(fabric=roce))
    assert d.status == "warning" and "RoCE" in d.summary and "NCCL_IB_GID_INDEX" in d.summary
    assert "memlock=-1" in (d.fix or "")


def test_port_down_is_explained() -> None:
    d = diagnose_nccl_network(Facts(fabric=fabric(devices=[hca(state="DOWN")])))
    assert d.status == "warning" and "no ACTIVE port" in (d.cause or "")


def test_doctor_replays_runtime_and_fabric_facts(tmp_path: Path) -> None:
    f = Facts(in_container=True, expect="cpu", shm_bytes=8192 * MIB, runtime=runtime_facts(),
              fabric=fabric(devices=[hca(node=False)], uverbs_nodes=[]))
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(dataclasses.asdict(f)))
    proc = subprocess.run([sys.executable, "-m", "smokesuite.doctor", "--facts", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for line in ("[FAIL] User name", "[FAIL] HOME", "[FAIL] Cache locations", "[FAIL] Compiled-code locations",
                 "[ OK ] RDMA libraries", "[WARN] NCCL network"):
        assert line in proc.stdout, proc.stdout
