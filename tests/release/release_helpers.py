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
LABEL io.pytorch-cuda.layer=data
"""


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
                 variant: str = "cu124", failed: int = 0) -> Path:
    """A smoke report in the schema `imagectl smoke --report` writes (only the keys the gate reads matter)."""
    checks = [{"name": "test_cuda_available", "outcome": "passed" if mode == "gpu" else "skipped",
               "duration_s": 0.1, "reason": None, "figures": {}},
              {"name": "test_versions", "outcome": "passed", "duration_s": 0.1, "reason": None, "figures": {}}]
    checks += [{"name": f"test_broken_{i}", "outcome": "failed", "duration_s": 0.1, "reason": "boom",
                "figures": {}} for i in range(failed)]
    summary = {"passed": sum(c["outcome"] == "passed" for c in checks), "failed": failed,
               "skipped": sum(c["outcome"] == "skipped" for c in checks), "errors": 0}
    doc = {"schema": 1, "image_id": image_id, "image_ref": "test", "variant": variant,
           "build_info": {"variant": variant}, "mode": mode, "expect": expect, "passed": passed and not failed,
           "summary": summary, "host": {"hostname": "test"}, "checks": checks,
           "started_at": "2026-11-30T12:00:00+00:00", "finished_at": "2026-11-30T12:01:00+00:00",
           "duration_s": 60.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path
