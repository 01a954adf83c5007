"""CUDA checks, each over every visible GPU: driver floor, arch coverage, real kernels vs a CPU
reference, device-side asserts, torch.compile, pinned DataLoader batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from smokesuite.arch import coverage, sm_name
from smokesuite.buildinfo import BuildInfo
from smokesuite.expect import gpu_skip
from smokesuite.hostinfo import query_nvml
from smokesuite.numerics import TOLERANCE, relative_error, within_tolerance
from smokesuite.plugin import Figures
from smokesuite.versions import driver_floor_for_cuda, parse_require_cuda, version_at_least

pytestmark = pytest.mark.gpu
DTYPES = ("float32", "float16", "bfloat16")


def test_cuda_available_on_every_gpu(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    figures["devices"] = len(cuda_devices)
    for d in cuda_devices:
        x = torch.arange(1024, device=d, dtype=torch.float32)
        assert float(x.sum().item()) == 1023 * 1024 / 2, f"{d}: wrong sum from a trivial kernel"
        figures[f"{d.type}{d.index}"] = torch.cuda.get_device_name(d)


def test_driver_meets_variant_floor(torch: ModuleType, cuda_devices: list[Any], build_info: BuildInfo | None,
                                    figures: Figures) -> None:
    host = query_nvml()
    if host.error or host.driver is None or host.cuda_driver is None:
        gpu_skip(f"NVML cannot report the driver: {host.error}")
    cuda = (build_info.get("cuda") if build_info else None) or torch.version.cuda
    if build_info and build_info.get("driver_min"):
        floor, source = build_info.require("driver_min"), "build-info driver_min"
    else:
        floor, source = driver_floor_for_cuda(cuda), f"CUDA {cuda} minor-version compatibility"
    cuda_floor = parse_require_cuda(build_info.get("nvidia_require_cuda") or "") if build_info else None
    cuda_floor = cuda_floor or f"{cuda.split('.')[0]}.0"
    figures.update({"driver": host.driver, "driver_floor": floor, "cuda_driver": host.cuda_driver,
                    "cuda_driver_floor": cuda_floor, "floor_source": source})
    assert floor is not None, f"no known driver floor for CUDA {cuda}"
    assert version_at_least(host.driver, floor), (
        f"driver {host.driver} is older than {floor} ({source}): upgrade the host's NVIDIA driver or use an "
        f"older CUDA variant")
    assert version_at_least(host.cuda_driver, cuda_floor), (
        f"the driver supports CUDA {host.cuda_driver}, the image needs >= {cuda_floor}: upgrade the driver")


def test_gpu_arch_in_torch_arch_list(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    arch_list = torch.cuda.get_arch_list()
    figures["arch_list"] = " ".join(arch_list)
    uncovered = []
    for d in cuda_devices:
        cap = torch.cuda.get_device_capability(d)
        how = coverage(cap, arch_list)
        figures[f"{d.type}{d.index}"] = f"{sm_name(cap)} via {how}"
        if how is None:
            uncovered.append(f"{d} ({torch.cuda.get_device_name(d)}, {sm_name(cap)})")
    assert not uncovered, (f"torch {torch.__version__} has no kernels for {', '.join(uncovered)} (compiled for "
                           f"{' '.join(arch_list)}): use a variant/PyTorch build that includes that arch")


def _no_tf32(torch: ModuleType) -> tuple[bool, bool]:
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 must be checked as fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    return old


def _restore_tf32(torch: ModuleType, old: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _check_kernel(torch: ModuleType, devices: list[Any], figures: Figures, what: str, make_inputs: Any,
                  op: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    failures = []
    old = _no_tf32(torch)
    try:
        for dtype_name in DTYPES:
            dtype = getattr(torch, dtype_name)
            inputs = [t.to(dtype) for t in make_inputs(gen)]
            reference = op(*[t.double() for t in inputs])  # CPU float64 on the same rounded inputs
            for d in devices:
                out = op(*[t.to(d) for t in inputs])
                torch.cuda.synchronize(d)
                err = relative_error(out, reference)
                figures[f"{what}_{dtype_name}_{d.type}{d.index}_rel_err"] = err
                if not within_tolerance(err, dtype_name):
                    failures.append(f"{d} {dtype_name}: relative error {err:.3g} > {TOLERANCE[dtype_name]:g}")
    finally:
        _restore_tf32(torch, old)
    assert not failures, f"{what} on the GPU disagrees with the CPU reference: " + "; ".join(failures)


def test_matmul_matches_cpu_reference(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    def inputs(gen: Any) -> list[Any]:
        return [torch.randn(256, 384, generator=gen), torch.randn(384, 192, generator=gen)]

    _check_kernel(torch, cuda_devices, figures, "matmul", inputs, torch.matmul)


def test_conv2d_matches_cpu_reference(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    def inputs(gen: Any) -> list[Any]:
        return [torch.randn(4, 16, 32, 32, generator=gen), torch.randn(32, 16, 3, 3, generator=gen)]

    _check_kernel(torch, cuda_devices, figures, "conv2d", inputs,
                  lambda x, w: torch.nn.functional.conv2d(x, w, padding=1))


ASSERT_SCRIPT = """
import sys, torch
d = torch.device("cuda", int(sys.argv[1]))
x = torch.zeros(8, device=d)
try:
    y = x[torch.tensor([1000], device=d)]   # out of bounds: the indexing kernel's device-side assert
    torch.cuda.synchronize(d)
except RuntimeError as exc:
    print("RAISED:", str(exc).splitlines()[0])
    sys.exit(0)
print("NO ERROR")
sys.exit(3)
"""


def test_device_side_assert_surfaces(cuda_devices: list[Any], figures: Figures) -> None:
    # A device-side assert poisons the CUDA context, so each device gets its own process.
    for d in cuda_devices:
        proc = subprocess.run([sys.executable, "-c", ASSERT_SCRIPT, str(d.index)], capture_output=True,
                              text=True, timeout=120)
        out = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 0, f"{d}: an out-of-bounds index did not raise: {out[-500:]}"
        assert "device-side assert" in out or "CUDA error" in out, f"{d}: unexpected error: {out[-500:]}"
        figures[f"{d.type}{d.index}"] = out.splitlines()[0][:120]


def _c_compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")


def _python_headers() -> bool:
    # Triton builds its launcher as a C extension module: it needs Python.h too
    return Path(sysconfig.get_paths()["include"], "Python.h").is_file()


def test_torch_compile_matches_eager(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"no Triton ({exc}): torch.compile has no GPU code generator here (a toolchain gap, not a GPU fault)")
    if _c_compiler() is None:
        pytest.skip("no C compiler (gcc/clang/cc, or $CC): Triton needs one to build its launcher, so "
                    "torch.compile cannot run here (a toolchain gap, not a GPU fault)")
    if not _python_headers():
        pytest.skip(f"no Python headers ({sysconfig.get_paths()['include']}/Python.h): Triton cannot build its "
                    "launcher, so torch.compile cannot run here (a toolchain gap, not a GPU fault)")

    def f(x: Any) -> Any:
        return torch.sin(x) * x + torch.relu(x) / (1 + x * x)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    for d in cuda_devices:
        x = torch.randn(4096, device=d)
        err = relative_error(compiled(x), f(x))
        figures[f"{d.type}{d.index}_rel_err"] = err
        assert err <= 1e-5, f"{d}: torch.compile result differs from eager by {err:.3g}"


class _Squares:
    """A tiny map-style dataset (picklable for spawned workers)."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> Any:
        import torch

        return torch.full((256, 256), float(i))


def test_dataloader_pin_memory_to_gpu(torch: ModuleType, cuda_devices: list[Any], figures: Figures) -> None:
    loader = torch.utils.data.DataLoader(_Squares(), batch_size=8, num_workers=2, pin_memory=True, timeout=60)
    batches = 0
    for b, batch in enumerate(loader):
        assert batch.is_pinned(), "pin_memory=True produced an unpinned batch"
        for d in cuda_devices:
            on_gpu = batch.to(d, non_blocking=True)
            expected = sum(range(b * 8, b * 8 + 8)) * 256 * 256
            assert float(on_gpu.sum().item()) == expected, f"{d}: wrong data after a pinned copy"
        batches += 1
    figures["batches"] = batches
    assert batches == 8
