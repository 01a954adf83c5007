"""Small plain chunks read by tensorstore's kvstore on the obstore backend (backends.tensorstore_reads):
which sources take that path, that what they read is exactly zarr's, writable, and that every way it
can fail ends on obstore (the same data) or in a named error within the deadline, never a hang.
Real ``rclone serve s3``, real tensorstore, SIGSTOP for the frozen server."""

from __future__ import annotations

import os
import signal
import stat
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore
from zl_helpers import BUCKET

import zarrloader.source as source_mod
from zarrloader import StorageOptions, ZarrSource, make_loader
from zarrloader.backends import tensorstore_reads
from zarrloader.backends.tensorstore_reads import TensorstoreReads, kvstore_spec
from zarrloader.errors import StorageUnavailableError
from zarrloader.s3server import S3Server

ts = pytest.importorskip("tensorstore")
rng = np.random.default_rng(11)


def _write(server: S3Server, name: str, data: np.ndarray, chunks: tuple[int, ...], **kw: Any) -> str:
    store = FsspecStore.from_url(f"s3://{BUCKET}/{name}", storage_options=server.storage_options(), read_only=False)
    z = zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype, **kw)
    z[:] = data
    return f"s3://{BUCKET}/{name}"


@pytest.fixture()
def native_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every key tensorstore is asked for (the probe included)."""
    keys: list[str] = []
    start = TensorstoreReads.start

    def counting(self: TensorstoreReads, key: str) -> Any:
        keys.append(key)
        return start(self, key)

    monkeypatch.setattr(TensorstoreReads, "start", counting)
    yield keys


def _epoch(src: ZarrSource, shuffle: bool, batch_size: int = 6) -> np.ndarray:
    ld = make_loader(src, batch_size=batch_size, shuffle=shuffle, return_index=True, concurrency=3, seed=1,
                     min_read_bytes=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor is built on read-only memory
        batches = list(ld)
        for b in batches:
            b[""].add_(0)  # in-place: every batch tensor owns writable memory
    got = np.concatenate([b[""].numpy() for b in batches])
    return got[np.argsort(np.concatenate([b["index"].numpy() for b in batches]))]


@pytest.mark.parametrize("shuffle", [False, True])
def test_small_plain_chunks_are_read_by_tensorstore_and_equal_zarrs(scratch_s3: S3Server, native_reads: list[str],
                                                                    shuffle: bool) -> None:
    data = rng.random((45, 6, 5), dtype=np.float32)  # 480-byte chunks, a partial last one
    url = _write(scratch_s3, f"small-{shuffle}.zarr", data, (4, 6, 5), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    np.testing.assert_array_equal(_epoch(src, shuffle), data)
    # keys relative to the source's URL: the probe (the array's metadata), then every chunk once
    assert native_reads[0] == "zarr.json"
    assert sorted(native_reads[1:]) == sorted(f"c/{i}/0/0" for i in range(12))
    assert src.backend.native_note == ""  # type: ignore[attr-defined]
    src.close()


def test_fetches_are_views_of_one_block_or_of_adopted_bodies(scratch_s3: S3Server, native_reads: list[str]) -> None:
    data = rng.random((64, 16, 16), dtype=np.float32)
    url = _write(scratch_s3, "views.zarr", data, (8, 16, 16), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    for contiguous in (True, False):
        fut = src.submit_ranges([(0, 8), (8, 16)], contiguous=contiguous)
        assert isinstance(fut, tensorstore_reads.NativeFetch)
        got = [g[""] for g in src.wait_fetch(fut, [(0, 8), (8, 16)])]
        assert all(g.flags.writeable for g in got)
        assert (got[1].ctypes.data == got[0].ctypes.data + got[0].nbytes) == contiguous
        np.testing.assert_array_equal(np.concatenate(got), data[:16])
        got[0][:] = 0  # ours alone: a later read of the same chunk is the stored data
    again = src.wait_fetch(src.submit_ranges([(0, 8)], contiguous=False), [(0, 8)])
    np.testing.assert_array_equal(again[0][""], data[:8])
    src.close()


@pytest.mark.parametrize("why", ["switched off", "misspelt switch", "too large", "compressed"])
def test_other_sources_stay_on_obstore(scratch_s3: S3Server, native_reads: list[str], monkeypatch: pytest.MonkeyPatch,
                                       why: str) -> None:
    data = rng.random((40, 64), dtype=np.float32)  # 2 KiB chunks
    kw: dict[str, Any] = {} if why == "compressed" else {"compressors": None}
    url = _write(scratch_s3, f"other-{why.replace(' ', '-')}.zarr", data, (8, 64), **kw)
    if why == "switched off":
        monkeypatch.setenv(tensorstore_reads.ENV_SWITCH, "0")
    if why == "misspelt switch":  # neither on nor off: obstore, and the note names the fix
        monkeypatch.setenv(tensorstore_reads.ENV_SWITCH, "flase")
    if why == "too large":
        monkeypatch.setattr(source_mod, "NATIVE_MAX_CHUNK_BYTES", 1024)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    np.testing.assert_array_equal(_epoch(src, True), data)
    assert native_reads == []
    if why == "switched off":
        assert "ZARRLOADER_TENSORSTORE=0" in src.backend.native_note  # type: ignore[attr-defined]
    if why == "misspelt switch":
        note = src.backend.native_note  # type: ignore[attr-defined]
        assert "'flase' is not one of" in note and "Fix:" in note, note
    src.close()


def test_a_failed_probe_leaves_obstore_reading(scratch_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """tensorstore pointed elsewhere (here: a closed port) fails its probe; obstore reads, nothing is
    lost, and the backend says why."""
    spec_of = tensorstore_reads.kvstore_spec

    def elsewhere(*a: Any, **kw: Any) -> Any:
        spec, creds = spec_of(*a, **kw)
        return {**spec, "endpoint": "http://127.0.0.1:9"}, creds

    monkeypatch.setattr(tensorstore_reads, "kvstore_spec", elsewhere)
    monkeypatch.setattr(tensorstore_reads, "PROBE_SECONDS", 3.0)
    data = rng.random((24, 8), dtype=np.float32)
    url = _write(scratch_s3, "probe.zarr", data, (4, 8), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    np.testing.assert_array_equal(_epoch(src, False), data)
    assert "probe read failed" in src.backend.native_note  # type: ignore[attr-defined]
    src.close()


def test_a_failing_native_read_is_redone_and_obstore_takes_over(scratch_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    data = rng.random((48, 8), dtype=np.float32)
    url = _write(scratch_s3, "fails.zarr", data, (4, 8), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    calls: list[str] = []
    start = TensorstoreReads.start

    def failing_chunks(self: TensorstoreReads, key: str) -> Any:
        calls.append(key)
        if not key.startswith("c/"):
            return start(self, key)  # the probe succeeds
        promise, future = ts.Promise.new()
        promise.set_exception(ValueError("PERMISSION_DENIED: injected"))
        return future

    monkeypatch.setattr(TensorstoreReads, "start", failing_chunks)
    ld = make_loader(src, batch_size=4, shuffle=True, return_index=True, concurrency=2, seed=1, min_read_bytes=1)
    batches = list(ld)  # one chunk per fetch, at most 2 in flight
    got = np.concatenate([b[""].numpy() for b in batches])[np.argsort(np.concatenate([b["index"].numpy() for b in batches]))]
    np.testing.assert_array_equal(got, data)
    chunk_calls = [k for k in calls if k.startswith("c/")]
    # the first fetch failed on tensorstore and was redone through zarr; the fetches already in flight
    # then, and none after, asked tensorstore (12 chunks in all)
    assert 1 <= len(chunk_calls) <= 2, chunk_calls
    assert "injected" in src.backend.native_note  # type: ignore[attr-defined]
    assert not src.backend.native_active  # type: ignore[attr-defined]
    src.close()


def test_one_byte_chunks_never_write_into_pythons_shared_bytes(scratch_s3: S3Server, native_reads: list[str]) -> None:
    """CPython shares every one-byte ``bytes``: such a body is copied, not adopted."""
    data = np.arange(1, 13, dtype=np.uint8)
    url = _write(scratch_s3, "onebyte.zarr", data, (1,), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    batches = [b[""] for b in make_loader(src, batch_size=1, shuffle=False, concurrency=2)]
    assert [k for k in native_reads if k.startswith("c/")], "the chunks should have gone through tensorstore"
    for b in batches:
        b.mul_(0)  # a view of its chunk: must not be Python's b"\x01" .. b"\x0c"
    assert [bytes([i]) for i in range(1, 13)] == [i.to_bytes(1, "little") for i in range(1, 13)]
    assert bytes([1])[0] == 1 and bytes([12])[0] == 12
    src.close()


def test_a_frozen_server_is_named_within_the_deadline(scratch_s3: S3Server, native_reads: list[str]) -> None:
    data = rng.random((800, 8), dtype=np.float32)  # 200 chunks: far more than the loader prefetches
    url = _write(scratch_s3, "frozen.zarr", data, (4, 8), compressors=None)
    opts = StorageOptions(extra=scratch_s3.storage_options(), connect_timeout=1, read_timeout=1, retries=0)
    src = ZarrSource(url, storage_options=opts)
    src.open()
    bound = 1 + 1 * 1 + 2  # connect + read x attempts + grace
    assert scratch_s3.process is not None
    ld = make_loader(src, batch_size=4, shuffle=False, concurrency=1, prefetch=1, min_read_bytes=1)
    it = iter(ld)
    next(it)  # the probe and the first fetch went through tensorstore
    os.kill(scratch_s3.process.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=r"cannot reach storage while fetching rows"):
            for _ in it:
                pass
        took = time.monotonic() - t0
    finally:
        os.kill(scratch_s3.process.pid, signal.SIGCONT)
    assert [k for k in native_reads if k.startswith("c/")], "the fetches should have gone through tensorstore"
    assert took < bound + 3, f"named after {took:.1f} s; the deadline is {bound} s"
    src.close()


def test_credentials_file_is_private_and_gone_after_the_probe(scratch_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int, str]] = []
    make = tensorstore_reads._credentials_folder

    def recording(creds: dict[str, str]) -> str:
        folder = make(creds)
        path = Path(folder, "credentials")
        seen.append((folder, stat.S_IMODE(os.stat(folder).st_mode), stat.S_IMODE(path.stat().st_mode), path.read_text()))
        return folder

    monkeypatch.setattr(tensorstore_reads, "_credentials_folder", recording)
    data = rng.random((16, 8), dtype=np.float32)
    url = _write(scratch_s3, "creds.zarr", data, (4, 8), compressors=None)
    src = ZarrSource(url, storage_options=scratch_s3.storage_options())
    np.testing.assert_array_equal(_epoch(src, False), data)
    assert src.backend.native_active  # type: ignore[attr-defined]
    [(folder, folder_mode, file_mode, text)] = seen
    assert (folder_mode, file_mode) == (0o700, 0o600) and scratch_s3.secret in text
    assert not os.path.exists(folder), "the credentials stay on disk after tensorstore read them"
    src.close()


def test_reads_opened_in_another_process_are_not_used() -> None:
    reads = TensorstoreReads(kv=object(), pid=os.getpid() + 1)
    assert not reads.usable  # forked child: tensorstore's threads stayed in the parent
    assert TensorstoreReads(kv=object(), pid=os.getpid()).usable


def test_kvstore_spec_takes_what_tensorstore_can_express() -> None:
    base = {"bucket": "b", "prefix": "p/q.zarr", "config": {"endpoint": "http://127.0.0.1:1", "region": "r1"}}
    spec, creds = kvstore_spec({**base, "config": {**base["config"], "skip_signature": True, "request_payer": True}}, 8, 2)
    assert spec["aws_credentials"] == {"type": "anonymous"} and creds is None
    assert spec["path"] == "p/q.zarr/" and spec["endpoint"] == "http://127.0.0.1:1" and spec["aws_region"] == "r1"
    assert spec["requester_pays"] is True
    assert spec["context"]["s3_request_concurrency"] == {"limit": 8}
    spec, creds = kvstore_spec({**base, "config": {**base["config"], "access_key_id": "k", "secret_access_key": "s",
                                                   "session_token": "t"}}, 8, 2)
    assert creds == {"aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_session_token": "t"}
    assert "aws_credentials" not in spec  # the caller points it at a file of ours
    frozen = {"access_key_id": "k", "secret_access_key": "s", "token": None, "expires_at": None}
    assert kvstore_spec({**base, "credential_provider": lambda: frozen}, 8, 2)[1] == {
        "aws_access_key_id": "k", "aws_secret_access_key": "s"}
    with pytest.raises(ValueError, match="refreshing"):
        kvstore_spec({**base, "credential_provider": lambda: {**frozen, "expires_at": 1}}, 8, 2)
    with pytest.raises(ValueError, match="virtual"):
        kvstore_spec({**base, "config": {"virtual_hosted_style_request": True, "access_key_id": "k"}}, 8, 2)


def test_gcs_kvstore_spec_only_for_what_tensorstore_authenticates_alike(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from zarrloader.backends.tensorstore_reads import gcs_kvstore_spec

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no application-default credentials file
    base = {"bucket": "b", "prefix": "d/x.zarr", "config": {"skip_signature": True, "base_url": "http://h:1"}}
    spec, env = gcs_kvstore_spec(base, 8, 2)
    assert spec["driver"] == "gcs" and spec["bucket"] == "b" and spec["path"] == "d/x.zarr/"
    assert spec["context"]["gcs_request_concurrency"] == {"limit": 8}
    assert spec["context"]["gcs_request_retries"]["max_retries"] == 3
    assert env == {"TENSORSTORE_GCS_HTTP_URL": "http://h:1"}

    class Provider:
        def __init__(self, method: str | None) -> None:
            self.method = method

    signed: dict[str, Any] = {"bucket": "b", "config": {}}
    with pytest.raises(ValueError, match="token="):
        gcs_kvstore_spec(signed, 8, 2)  # no provider and not anonymous: nothing tensorstore could use
    assert gcs_kvstore_spec({**signed, "credential_provider": Provider("google_default")}, 8, 2)[1] == {}
    assert gcs_kvstore_spec({**signed, "credential_provider": Provider("cloud")}, 8, 2)[0]["driver"] == "gcs"
    for method in (None, "cache"):  # a token file/dict/object, or gcsfs's own token cache
        with pytest.raises(ValueError, match="token="):
            gcs_kvstore_spec({**signed, "credential_provider": Provider(method)}, 8, 2)
    # anonymous, but an application-default credentials file exists: tensorstore would sign with it
    (tmp_path / "application_default_credentials.json").write_text("{}")
    with pytest.raises(ValueError, match="would sign"):
        gcs_kvstore_spec(base, 8, 2)
