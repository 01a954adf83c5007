"""What the host offers: driver versions and GPUs, read through NVML (nvidia-ml-py)."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

from smokesuite.versions import cuda_driver_int_to_str


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    sm: str  # "sm_90"
    memory_mib: int


@dataclass(frozen=True)
class HostInfo:
    driver: str | None = None
    cuda_driver: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    error: str | None = None  # why NVML could not answer (no driver, no GPU runtime)

    def to_report(self) -> dict[str, object]:
        return {"driver": self.driver, "cuda_driver": self.cuda_driver,
                "gpus": [asdict(g) for g in self.gpus]}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def query_nvml() -> HostInfo:
    """Driver, CUDA driver version and every visible GPU; an empty HostInfo with ``error`` on failure."""
    try:
        import pynvml
    except ImportError as exc:
        return HostInfo(error=f"nvidia-ml-py is not installed ({exc})")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return HostInfo(error=f"NVML unavailable: {exc}")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_driver = cuda_driver_int_to_str(pynvml.nvmlSystemGetCudaDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(GpuInfo(index=i, name=_text(pynvml.nvmlDeviceGetName(h)), sm=f"sm_{major}{minor}",
                                memory_mib=int(mem.total) // (1024 * 1024)))
        return HostInfo(driver=driver, cuda_driver=cuda_driver, gpus=gpus)
    except Exception as exc:
        return HostInfo(error=f"NVML query failed: {exc}")
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
