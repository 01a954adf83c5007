"""Helpers of the release tests: layered test images and smoke reports (imported by conftest and tests)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from imagectl.matrix import Matrix

REVISION = "0123456789abcdef0123456789abcdef01234567"
CREATED = "2026-11-30T12:00:00Z"
_DOCKERFILE = """\
FROM scratch AS base
COPY base.txt /base.txt
COPY status /var/lib/dpkg/status
LABEL io.pytorch-cuda.variant=cu124 io.pytorch-cuda.layer=base \
      org.opencontainers.image.revision={rev} org.opencontainers.image.created={created}
FROM base AS torch
COPY torch.txt /torch.txt
LABEL io.pytorch-cuda.layer=torch
FROM torch AS data
COPY data.txt /data.txt
COPY suite-checks.json /opt/pytorch-cuda/suite-checks.json
LABEL io.pytorch-cuda.layer=data
"""
# The test image's suite, recorded as `smoke --list-checks` records a real image's.
SUITE = [("test_smoke_cuda.py::test_cuda_available_on_every_gpu", True),
         ("test_smoke_cuda.py::test_matmul_matches_cpu_reference", True),
         ("test_smoke_versions.py::test_torch_matches_pin", False),
         ("test_smoke_s3.py::test_s3_zarr_read_benchmark", False)]
H200 = {"driver": "580.159.04", "cuda_driver": "13.0",
        "gpus": [{"index": 0, "name": "NVIDIA H200", "sm": "sm_90", "memory_mib": 143771}]}


@dataclass
class GateImages:
    """Builds the three layers as NAME:<matrix tag> in `ctx`; `rebuild` changes content -> new IDs."""

    name: str
    ctx: Path
    matrix: Matrix
    built: set[str] = field(default_factory=set)  # every ID built, so superseded ones are removed too

    def ref(self, layer: str) -> str:
        return f"{self.name}:{self.matrix.tags_for(self.matrix.variant('cu124'), layer)[0]}"

    def build(self, data_content: str = "data v1", rev: str = REVISION, layers: tuple[str, ...] = ("base", "torch", "data"),
              base_content: str | None = None) -> dict[str, str]:
        self.ctx.mkdir(parents=True, exist_ok=True)
        (self.ctx / "Dockerfile").write_text(_DOCKERFILE.format(rev=rev, created=CREATED))
        (self.ctx / "base.txt").write_text(base_content or f"base {self.name}\n")
        (self.ctx / "torch.txt").write_text("torch\n")
        (self.ctx / "data.txt").write_text(data_content + "\n")
        (self.ctx / "suite-checks.json").write_text(json.dumps(
            {"schema": 1, "checks": [{"name": n, "gpu": g} for n, g in SUITE]}))
        # A real dpkg database (the host's first 40 packages, to keep the SBOM step quick).
        status = Path("/var/lib/dpkg/status")
        stanzas = status.read_text().split("\n\n")[:40] if status.is_file() else []
        (self.ctx / "status").write_text("\n\n".join(stanzas) + "\n")
        ids = {}
        for layer in layers:
            subprocess.run(["docker", "build", "-q", "--target", layer, "-t", self.ref(layer), str(self.ctx)],
                           check=True, capture_output=True, env={"DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"})
            ids[layer] = image_id(self.ref(layer))
            self.built.add(ids[layer])
        return ids

    def remove(self) -> None:
        out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                             capture_output=True, text=True).stdout.split()
        mine = [r for r in out if r.startswith(self.name + ":") or f"/{self.name}:" in r]
        if mine:
            subprocess.run(["docker", "rmi", "-f", *mine], capture_output=True)
        for image in sorted(self.built):  # superseded builds are dangling now; data before its parents
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def image_id(ref: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def write_report(path: Path, image_id: str, *, passed: bool = True, mode: str = "gpu", expect: str | None = "gpu",
                 variant: str = "cu124", failed: int = 0, host: dict[str, object] | None = None,
                 checks: list[dict[str, object]] | None = None, gpu_outcome: str | None = None) -> Path:
    """A smoke report in the schema the suite writes, over SUITE: GPU checks pass in GPU mode and skip
    in CPU mode (or take ``gpu_outcome``); ``failed`` CPU checks fail; ``passed`` is the summary claim
    (the gate must ignore it); ``checks`` replaces the whole list."""
    if checks is None:
        checks = []
        for i, (name, gpu) in enumerate(SUITE):
            outcome = (gpu_outcome or ("passed" if mode == "gpu" else "skipped")) if gpu else "passed"
            if not gpu and i - 2 < failed:
                outcome = "failed"
            checks.append({"name": name, "outcome": outcome, "duration_s": 0.1, "gpu": gpu,
                           "reason": "boom" if outcome == "failed" else None, "figures": {}})
    summary = {"passed": sum(c["outcome"] == "passed" for c in checks),
               "failed": sum(c["outcome"] == "failed" for c in checks),
               "skipped": sum(c["outcome"] == "skipped" for c in checks), "errors": 0}
    doc = {"schema": 1, "image_id": image_id, "image_ref": "test", "variant": variant,
           "build_info": {"variant": variant}, "mode": mode, "expect": expect, "passed": passed,
           "summary": summary, "host": host if host is not None else (H200 if mode == "gpu" else {"gpus": []}),
           "checks": checks, "started_at": "2026-11-30T12:00:00+00:00", "finished_at": "2026-11-30T12:01:00+00:00",
           "duration_s": 60.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
