"""The opt-in obstore backend, against the same real S3 server: formats read value by value, the
direct chunk path stays active, and bad input names cause and fix."""

from __future__ import annotations

import dataclasses

import fsspec
import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore
from zl_helpers import BUCKET, Datasets, N, images, labels

from zarrloader import StorageOptions, ZarrSource, make_loader
from zarrloader.errors import AccessDeniedError, ChunkReadError, StorageUnavailableError, StoreNotFoundError
from zarrloader.objstore import BackendOptionError, obstore_config
from zarrloader.s3server import S3Server
from zarrloader.storage import parse_url


def _opts(server: S3Server, **kw: object) -> StorageOptions:
    return StorageOptions(extra=server.storage_options(), backend="obstore", **kw)


@pytest.mark.parametrize("name", ["v3.zarr", "v2.zarr", "zstd.zarr", "v3_consolidated.zarr", "blosc_lz4.zarr"])
def test_formats_read_through_obstore(datasets: Datasets, name: str) -> None:
    src = ZarrSource(datasets.url(name), storage_options=_opts(datasets.server))
    assert type(src.open()._handles()["images"].store).__name__ == "ObjectStore"
    batches = list(make_loader(src, batch_size=32, return_index=True, concurrency=4, seed=2))
    index = np.concatenate([b["index"].numpy() for b in batches])
    order = np.argsort(index)
    np.testing.assert_array_equal(index[order], np.arange(N))
    np.testing.assert_array_equal(np.concatenate([b["images"].numpy() for b in batches])[order], images())
    np.testing.assert_array_equal(np.concatenate([b["labels"].numpy() for b in batches])[order], labels())
    assert "images" in src.direct_arrays


def test_sharded_reads_on_a_server_without_range_support_say_so(datasets: Datasets) -> None:
    """rclone answers obstore's suffix-range GETs (shard indexes) with the whole object: a clear error
    pointing at the fsspec backend, not a 'corrupt chunk'. (AWS S3 honours them.)"""
    src = ZarrSource(datasets.url("sharded.zarr"), storage_options=_opts(datasets.server))
    with pytest.raises(StorageUnavailableError, match=r"range request with the whole object.*sharded.*backend='fsspec'"):
        list(make_loader(src, batch_size=32, concurrency=2))


def test_bad_input_names_cause_and_fix(datasets: Datasets) -> None:
    server = datasets.server
    with pytest.raises(StoreNotFoundError, match="no Zarr array or group"):
        ZarrSource(f"s3://{BUCKET}/absent.zarr", storage_options=_opts(server)).open()
    with pytest.raises(StoreNotFoundError, match="bucket 'nobucket' does not exist"):
        ZarrSource("s3://nobucket/v3.zarr", storage_options=_opts(server)).open()
    wrong = StorageOptions(extra={**server.storage_options(), "secret": "wrong"}, backend="obstore")
    with pytest.raises(AccessDeniedError, match="credentials"):
        ZarrSource(datasets.url("v3.zarr"), storage_options=wrong).open()
    down = StorageOptions(extra={**server.storage_options(), "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}},
                          backend="obstore", retries=2, connect_timeout=1, read_timeout=2)
    with pytest.raises(StorageUnavailableError, match="cannot reach storage"):
        ZarrSource(datasets.url("v3.zarr"), storage_options=down).open()
    with pytest.raises(BackendOptionError, match="profile"):
        ZarrSource(datasets.url("v3.zarr"), storage_options=dataclasses.replace(_opts(server), profile="dev")).open()
    with pytest.raises(BackendOptionError, match="s3:// URLs"):
        obstore_config(parse_url("gs://bucket/x.zarr"), StorageOptions(backend="obstore"))
    with pytest.raises(BackendOptionError, match="does not understand"):
        obstore_config(parse_url("s3://b/x"), StorageOptions(backend="obstore", extra={"use_ssl": False}))
    with pytest.raises(ValueError, match="unknown storage backend 'boto'"):
        StorageOptions(backend="boto")


def test_options_map_onto_obstore() -> None:
    kw = obstore_config(parse_url("s3://bkt/some/prefix.zarr"),
                        StorageOptions(anon=True, requester_pays=True, region="eu-west-1", retries=4,
                                       endpoint_url="http://minio:9000", backend="obstore"))
    assert kw["bucket"] == "bkt" and kw["prefix"] == "some/prefix.zarr"
    assert kw["config"] == {"endpoint": "http://minio:9000", "region": "eu-west-1", "skip_signature": True,
                            "request_payer": True}
    assert kw["client_options"]["allow_http"] is True and kw["retry_config"]["max_retries"] == 3


def test_corrupt_chunk_is_named_through_obstore(scratch_s3: S3Server) -> None:
    url = f"s3://{BUCKET}/bad.zarr"
    store = FsspecStore.from_url(url, storage_options=scratch_s3.storage_options(), read_only=False)
    zarr.create_array(store, shape=(24, 4), chunks=(6, 4), dtype="f4")[:] = np.ones((24, 4), dtype="f4")
    fs = fsspec.filesystem("s3", **scratch_s3.storage_options())
    fs.pipe_file(f"{BUCKET}/bad.zarr/c/1/0", b"not zstd at all")
    src = ZarrSource(url, storage_options=_opts(scratch_s3))
    with pytest.raises(ChunkReadError, match=r"c/1/0"):
        list(make_loader(src, batch_size=4, shuffle=False, concurrency=2))


def _child_epoch(url: str, opts: StorageOptions, q: object) -> None:
    try:
        ld = make_loader(ZarrSource(url, storage_options=opts), batch_size=32, concurrency=2)
        q.put(("read", sum(len(b["labels"]) for b in ld)))  # type: ignore[attr-defined]
    except Exception as exc:
        q.put((type(exc).__name__, str(exc)))  # type: ignore[attr-defined]


def test_a_forked_child_after_the_parent_used_obstore_fails_fast_not_hangs(datasets: Datasets) -> None:
    """obstore's Rust runtime does not survive fork: a child of a parent that used it would hang on its
    first request (this test timed out at 60 s before the check). It must raise with the fix instead."""
    import multiprocessing as mp

    opts = _opts(datasets.server)
    assert sum(len(b["labels"]) for b in make_loader(datasets.url("v3.zarr"), storage_options=opts, batch_size=64)) == N
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_epoch, args=(datasets.url("v3.zarr"), opts, q))
    p.start()
    try:
        kind, detail = q.get(timeout=60)
    finally:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    assert kind == "BackendOptionError", detail
    assert "spawn" in detail and "backend='fsspec'" in detail


def test_raw_options_win_and_unmapped_botocore_options_are_refused() -> None:
    opts = StorageOptions(endpoint_url="http://a:1", region="r1", backend="obstore",
                          extra={"client_kwargs": {"endpoint_url": "http://b:2", "region_name": "r2"},
                                 "config_kwargs": {"response_checksum_validation": "when_required"}})
    assert obstore_config(parse_url("s3://b/x"), opts)["config"] == {"endpoint": "http://b:2", "region": "r2"}
    unsigned = StorageOptions(backend="obstore", extra={"config_kwargs": {"signature_version": "UNSIGNED"}})
    with pytest.raises(BackendOptionError, match="signature_version"):
        obstore_config(parse_url("s3://b/x"), unsigned)


def test_bench_keeps_the_backend_of_the_options_it_is_given(datasets: Datasets) -> None:
    from zarrloader.bench import BenchConfig, run_benchmark

    cfg = BenchConfig(url=f"s3://{BUCKET}/benchdir", storage_options=_opts(datasets.server), chunk_sizes=(1 << 20,),
                      total_bytes=2 << 20, readers=("raw", "loader_sequential"), repeats=1)
    report = run_benchmark(cfg)
    assert {r.reader for r in report.results} == {"raw", "loader_sequential"}
    assert report.server.endswith("(obstore backend)"), report.server
