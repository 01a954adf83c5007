"""Registry side of a release: a loopback registry for tests and local dry runs, and manifest lookups.

`LocalRegistry` runs Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with its storage in a
temporary folder; the Docker engine treats 127.0.0.0/8 as an insecure (plain HTTP) registry by
default, so `docker push 127.0.0.1:PORT/...` needs no daemon configuration.

`manifest_info` asks the registry itself, through the Docker CLI (`docker manifest inspect`, which
uses the same credentials as `docker push`), which digest a tag has and which image config that
digest carries: the config digest of a pushed image equals its local image ID, which is how the
push proves the registry holds the exact image that passed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY_BIN = "docker-registry"
INSTALL_HINT = "install it with `apt-get install docker-registry` (Debian's distribution 2.8 package)"

_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)


class RegistryError(RuntimeError):
    """The registry could not be started or asked; the message says why and what to do."""


@dataclass(frozen=True)
class ManifestInfo:
    digest: str  # the manifest digest (what `NAME@sha256:...` pins)
    config_digest: str  # == the local image ID of the image that was pushed
    media_type: str


def is_insecure_loopback(registry: str) -> bool:
    host = registry.split("/")[0].rsplit(":", 1)[0]
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def manifest_info(ref: str, docker: str = "docker", timeout: float = 60) -> ManifestInfo | None:
    """Digest and config digest of `ref` (NAME:TAG or NAME@DIGEST) in its registry; None if absent."""
    registry = ref.split("/")[0]
    cmd = [docker, "manifest", "inspect", "--verbose"]
    if is_insecure_loopback(registry):
        cmd.append("--insecure")
    try:
        res = subprocess.run([*cmd, ref], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise RegistryError(f"`{docker}` not found: install the Docker CLI") from exc
    except subprocess.TimeoutExpired as exc:
        raise RegistryError(f"the registry of {ref} did not answer within {timeout:.0f} s") from exc
    if res.returncode != 0:
        err = res.stderr.strip()
        if "no such manifest" in err.lower() or "manifest unknown" in err.lower() or "not found" in err.lower():
            return None
        raise RegistryError(f"cannot read the manifest of {ref}: {err or 'no output'} "
                            "(is the registry reachable, and are you logged in: `docker login REGISTRY`?)")
    data = json.loads(res.stdout)
    if isinstance(data, list):  # a manifest list: not something `imagectl push` writes
        raise RegistryError(f"{ref} is a manifest list; expected a single-platform image manifest")
    desc = data.get("Descriptor") or {}
    manifest = data.get("SchemaV2Manifest") or data.get("OCIManifest") or {}
    return ManifestInfo(digest=desc.get("digest", ""), config_digest=(manifest.get("config") or {}).get("digest", ""),
                        media_type=desc.get("mediaType", ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class LocalRegistry:
    """A real registry on 127.0.0.1:PORT, started by `start()` and removed (with its data) by `stop()`."""

    port: int = 0
    workdir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> LocalRegistry:
        binary = shutil.which(REGISTRY_BIN)
        if binary is None:
            raise RegistryError(f"no `{REGISTRY_BIN}` on PATH: {INSTALL_HINT}")
        if self.workdir is None:
            self.workdir, self._own_dir = Path(tempfile.mkdtemp(prefix="imagectl-registry-")), True
        self.port = self.port or _free_port()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(_CONFIG.format(root=self.workdir / "data", port=self.port))
        log = (self.workdir / "registry.log").open("wb")
        self._proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(f"{REGISTRY_BIN} exited with {self._proc.returncode}: "
                                    f"{(self.workdir / 'registry.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RegistryError(f"{REGISTRY_BIN} did not answer on {self.address} within {timeout:.0f} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def tags(self, repository: str) -> list[str]:
        """Tags of `repository` as the registry lists them (the HTTP API, no Docker involved)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/{repository}/tags/list", timeout=10) as r:
                return sorted(json.load(r).get("tags") or [])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def catalog(self) -> list[str]:
        with urllib.request.urlopen(f"http://{self.address}/v2/_catalog", timeout=10) as r:
            return sorted(json.load(r).get("repositories") or [])

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
