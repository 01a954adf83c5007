"""Fixtures for fault tests: a real ``rclone serve s3`` of its own per test (tests freeze it), a plain
HTTP server over the same files, and small Zarr stores written by zarr-python."""

from __future__ import annotations

import functools
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # faultkit, importable by the tests beside it

from faultkit import BUCKET, write_stores

from zarrloader.s3server import S3Server, embedded_s3


@pytest.fixture()
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A server of this test's own over plain.zarr and zstd.zarr (written before it starts)."""
    write_stores(tmp_path / "s3")
    with embedded_s3(tmp_path / "s3") as server:
        yield server


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A plain HTTP server over the same stores; yields (host, port)."""
    write_stores(tmp_path / "www")
    handler = functools.partial(_Quiet, directory=str(tmp_path / "www" / BUCKET))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield ("127.0.0.1", int(httpd.server_address[1]))
    finally:
        httpd.shutdown()
        httpd.server_close()
