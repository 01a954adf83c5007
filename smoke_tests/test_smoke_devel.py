"""devel: a CUDA extension compiles with torch.utils.cpp_extension (nvcc, the CUDA headers, ninja) and,
where a GPU exists, runs correctly on every GPU.

Compiling needs nvcc but no GPU, so this runs in CI. Images without nvcc (base/torch/data) skip it,
except a devel image (build-info ``"layer": "devel"``), where a missing toolchain is a failure. On a
plain GPU host from a checkout it uses the host's toolkit (``CUDA_HOME``, or nvcc on PATH).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from smokesuite.buildinfo import BuildInfo
from smokesuite.expect import gpu_skip
from smokesuite.plugin import Figures

# ATen/cuda/CUDAContext.h is what most real extensions include: it pulls in the cuBLAS, cuBLASLt,
# cuSPARSE and cuSOLVER headers, so this also checks that devel ships the headers users need.
CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

__global__ void scale_add_kernel(const float* x, float* y, float a, float b, int64_t n) {
    int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) y[i] = a * x[i] + b;
}

torch::Tensor scale_add(torch::Tensor x, double a, double b) {
    TORCH_CHECK(x.is_cuda() && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
                "scale_add: a contiguous float32 CUDA tensor is required");
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::empty_like(x);
    const int64_t n = x.numel();
    const int threads = 256;
    const int64_t blocks = (n + threads - 1) / threads;
    scale_add_kernel<<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<float>(), y.data_ptr<float>(), static_cast<float>(a), static_cast<float>(b), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""
CPP_SOURCE = "torch::Tensor scale_add(torch::Tensor x, double a, double b);"


def _is_devel(build_info: BuildInfo | None) -> bool:
    return build_info is not None and build_info.get("layer") == "devel"


class BuildFailure(Exception):
    """The extension cannot be built where it must be: reported by test_cuda_extension_compiles as a failure."""


def _missing(build_info: BuildInfo | None, what: str) -> None:
    """No toolchain: a failure in a devel image, a plain skip anywhere else (not a GPU skip)."""
    if _is_devel(build_info):
        raise BuildFailure(f"devel image, but {what}: rebuild the devel image")
    pytest.skip(f"{what} (CUDA extensions build only in the devel image or on a host with the CUDA toolkit)")


def find_cuda_home() -> tuple[str | None, str]:
    """CUDA_HOME as torch.utils.cpp_extension finds it: $CUDA_HOME/$CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return str(Path(nvcc).resolve().parent.parent), f"nvcc on PATH ({nvcc})"
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda", "/usr/local/cuda"
    return None, "none"


def nvcc_release(nvcc: str) -> str | None:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _arch_for_build(torch: ModuleType) -> str | None:
    """Without a GPU, cpp_extension cannot ask the device: build for the newest SASS arch torch has."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return None  # default: the visible GPUs' architectures
    caps = [a.split("_", 1)[1] for a in torch.cuda.get_arch_list() if a.startswith("sm_")]
    caps = [c for c in caps if c.isdigit()]
    if not caps:
        return "8.0"
    top = max(caps, key=int)
    return f"{top[:-1]}.{top[-1]}"


@pytest.fixture(scope="module")
def cuda_extension(torch: ModuleType, build_info: BuildInfo | None,
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Built once for the module: {"module", figures...}, or {"error": why} when it must build and does not."""
    try:
        return _build(torch, build_info, tmp_path_factory.mktemp("cuda_ext"))
    except BuildFailure as exc:
        return {"error": str(exc)}


def _build(torch: ModuleType, build_info: BuildInfo | None, build_dir: Path) -> dict[str, Any]:
    if torch.version.cuda is None:
        if _is_devel(build_info):
            raise BuildFailure(f"devel image with a CPU-only torch {torch.__version__}")
        gpu_skip(f"torch {torch.__version__} is a CPU-only build: CUDA extensions need a CUDA build of torch")
    cuda_home, found_by = find_cuda_home()
    nvcc = str(Path(cuda_home, "bin", "nvcc")) if cuda_home else None
    if not nvcc or not Path(nvcc).is_file():
        _missing(build_info, f"no nvcc (CUDA_HOME: {cuda_home or 'unset'}, found by {found_by})")
    assert nvcc is not None and cuda_home is not None  # _missing skipped or raised otherwise
    if not Path(cuda_home, "include", "cuda_runtime.h").is_file():
        _missing(build_info, f"no CUDA headers in {cuda_home}/include (cuda_runtime.h)")
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        _missing(build_info, "no ninja (torch.utils.cpp_extension needs it: pip install ninja)")
    release = nvcc_release(nvcc)
    info: dict[str, Any] = {"cuda_home": cuda_home, "found_by": found_by, "nvcc": release,
                            "torch_cuda": torch.version.cuda}
    if not release:
        raise BuildFailure(f"{nvcc} --version names no release")
    if release.split(".")[0] != str(torch.version.cuda).split(".")[0]:
        raise BuildFailure(f"nvcc {release} and torch's CUDA {torch.version.cuda} differ in major version: "
                           "cpp_extension refuses to build; use the toolkit of torch's CUDA (CUDA_HOME)")
    if _is_devel(build_info):
        want = build_info.get("cuda") if build_info else None
        if release != want:
            raise BuildFailure(f"the devel image's nvcc is CUDA {release}, the variant is CUDA {want}")
    arch = _arch_for_build(torch)
    old_env = {k: os.environ.get(k) for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST")}
    os.environ["CUDA_HOME"] = cuda_home
    if arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    info["arch"] = arch or "visible GPUs"
    cpp_extension.CUDA_HOME = cuda_home  # resolved at import; the env may have been set only now
    t0 = time.monotonic()
    try:
        module = cpp_extension.load_inline(name=f"smoke_cuda_ext_{os.getpid()}", cpp_sources=CPP_SOURCE,
                                           cuda_sources=CUDA_SOURCE, functions=["scale_add"],
                                           build_directory=str(build_dir), with_cuda=True, verbose=False)
    except Exception as exc:  # the build log is in the message
        raise BuildFailure(f"the CUDA extension does not build with {cuda_home} (nvcc {release}): "
                           f"{str(exc)[-3000:]}") from exc
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    info["build_s"] = round(time.monotonic() - t0, 1)
    info["module"] = module
    info["so"] = [p.name for p in Path(build_dir).glob("*.so")]
    return info


def test_cuda_extension_compiles(cuda_extension: dict[str, Any], figures: Figures) -> None:
    if "error" in cuda_extension:
        pytest.fail(cuda_extension["error"], pytrace=False)
    figures.update({k: v for k, v in cuda_extension.items() if k != "module"})
    assert cuda_extension["so"], "load_inline returned, but no shared object was built"
    assert hasattr(cuda_extension["module"], "scale_add")


def test_cuda_extension_runs_on_every_gpu(torch: ModuleType, cuda_extension: dict[str, Any],
                                          cuda_devices: list[Any], figures: Figures) -> None:
    if "error" in cuda_extension:
        pytest.skip("the extension did not build (test_cuda_extension_compiles says why)")
    scale_add = cuda_extension["module"].scale_add
    for d in cuda_devices:
        x = torch.arange(100_003, dtype=torch.float32, device=d)  # not a multiple of the block size
        y = scale_add(x, 2.0, 0.5)
        torch.cuda.synchronize(d)
        expected = x * 2.0 + 0.5
        assert torch.equal(y, expected), f"{d}: the extension's kernel computed wrong values"
        figures[f"{d.type}{d.index}"] = "ok"
