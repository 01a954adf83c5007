"""The bundled NVIDIA libraries load, and cuDNN at run time is the one torch was compiled against."""

from __future__ import annotations

import ctypes
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest

from smokesuite.buildinfo import BuildInfo
from smokesuite.expect import gpu_skip
from smokesuite.plugin import Figures
from smokesuite.versions import cudnn_int_to_tuple

# Libraries every CUDA build of torch needs (the rest of a wheel's libraries only count when the
# image's build record names the wheel). libnvblas is never loaded: it would hijack host BLAS.
CORE_PREFIXES = ("libcudart", "libcublas", "libcublasLt", "libcudnn.", "libnccl", "libcufft.", "libcurand",
                 "libcusolver.", "libcusparse.", "libnvrtc.", "libnvJitLink")
SKIP_PREFIXES = ("libnvblas",)


def _nvidia_libraries(names: set[str] | None) -> dict[str, list[Path]]:
    """Shared libraries shipped by nvidia-* distributions (those in ``names``, or all of them)."""
    found: dict[str, list[Path]] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if not name.startswith("nvidia-") or name == "nvidia-ml-py" or (names is not None and name not in names):
            continue
        libs = [Path(str(dist.locate_file(f))) for f in (dist.files or [])
                if ".so" in f.name and f.name.startswith("lib") and not f.name.startswith(SKIP_PREFIXES)]
        found[name] = sorted(libs)
    return found


def test_nvidia_libraries_load(cuda_build: ModuleType, build_info: BuildInfo | None, figures: Figures) -> None:
    cuda_build.zeros(1)  # torch loads its own CUDA dependencies first, as in real use
    pinned = {n.lower() for n in build_info.wheels if n.lower().startswith("nvidia-")} if build_info else None
    libs = _nvidia_libraries(pinned)
    if not libs:
        gpu_skip("no nvidia-* runtime wheels are installed")
    if pinned:
        missing = sorted(pinned - set(libs))
        assert not missing, f"pinned wheels not installed: {missing}; rebuild the image"
    failures, required_failures, loaded = [], [], 0
    for dist, paths in libs.items():
        for path in paths:
            try:
                ctypes.CDLL(str(path))
                loaded += 1
            except OSError as exc:
                failures.append(f"{dist}: {path.name}: {exc}")
                if pinned or path.name.startswith(CORE_PREFIXES):
                    required_failures.append(failures[-1])
    figures.update({"libraries_loaded": loaded, "libraries_failed": len(failures), "wheels": len(libs)})
    if failures:
        figures["failed"] = failures[:20]
    assert not required_failures, "NVIDIA libraries fail to load: " + "; ".join(required_failures[:10])
    assert loaded > 0


def test_cudnn_runtime_matches_compile_time(cuda_build: ModuleType, figures: Figures) -> None:
    torch = cuda_build
    runtime = torch.backends.cudnn.version()
    if runtime is None:
        pytest.fail("cuDNN cannot be loaded by torch (torch.backends.cudnn.version() is None): the cudnn "
                    "wheel is missing or a broken libcudnn is found first; run `doctor`", pytrace=False)
    compiled = tuple(torch._C._cudnn.getCompileVersion())
    got = cudnn_int_to_tuple(runtime)
    figures.update({"runtime": ".".join(map(str, got)), "compiled": ".".join(map(str, compiled))})
    assert got == compiled, (
        f"cuDNN {'.'.join(map(str, got))} is loaded but torch was compiled against "
        f"{'.'.join(map(str, compiled))}: a system cuDNN on LD_LIBRARY_PATH shadows the bundled one? run `doctor`")
