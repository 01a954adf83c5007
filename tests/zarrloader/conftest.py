"""Fixtures: real Zarr data written by zarr-python (see zl_helpers), served by a real
``rclone serve s3`` on loopback, and a plain HTTP server over the same files."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from zl_helpers import BUCKET, Datasets, QuietHandler, write_all

from zarrloader.s3server import S3Server, embedded_s3


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Datasets]:
    root = tmp_path_factory.mktemp("s3root")
    write_all(root)
    with embedded_s3(root) as server:
        yield Datasets(server=server, root=root)


@pytest.fixture()
def scratch_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A server of its own (tests that stop it or write to it)."""
    with embedded_s3(tmp_path / "s3") as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(scope="session")
def http_url(datasets: Datasets) -> Iterator[str]:
    """A plain read-only HTTP server (python's own) over the same files."""
    handler = functools.partial(QuietHandler, directory=str(datasets.root / BUCKET))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


