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
    diagnose_cudnn_shadowing,
    diagnose_driver,
    diagnose_gpu_runtime,
    diagnose_nccl_p2p,
    diagnose_shm,
    format_diagnoses,
)

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
