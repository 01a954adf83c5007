"""Bad input gives a clear error naming cause and fix, raised promptly, never a hang."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore
from zl_helpers import BUCKET, Datasets

from zarrloader import (
    AccessDeniedError,
    ChunkReadError,
    DatasetLayoutError,
    InvalidURLError,
    StorageOptions,
    StorageUnavailableError,
    StoreNotFoundError,
    ZarrSource,
    make_loader,
)
from zarrloader.s3server import S3Server


def test_missing_bucket_names_the_bucket(datasets: Datasets) -> None:
    with pytest.raises(StoreNotFoundError, match="bucket 'nosuchbucket' does not exist"):
        ZarrSource("s3://nosuchbucket/x.zarr", storage_options=datasets.options).open()


def test_missing_key_says_nothing_is_there(datasets: Datasets) -> None:
    with pytest.raises(StoreNotFoundError, match=r"no Zarr array or group at s3://data/nope\.zarr"):
        ZarrSource(datasets.url("nope.zarr"), storage_options=datasets.options).open()


def test_missing_array_in_group_lists_the_available_ones(datasets: Datasets) -> None:
    with pytest.raises(StoreNotFoundError, match=r"no array 'masks'.*\['images', 'labels'\]"):
        ZarrSource(datasets.url("v3.zarr"), arrays=["masks"], storage_options=datasets.options).open()


def test_wrong_credentials_are_access_denied_with_fix(datasets: Datasets) -> None:
    opts = {**datasets.options, "secret": "wrong-secret"}
    with pytest.raises(AccessDeniedError, match="check the credentials"):
        ZarrSource(datasets.url("v3.zarr"), storage_options=opts).open()


def test_corrupt_chunk_error_names_the_chunk_key(datasets: Datasets) -> None:
    ld = make_loader(ZarrSource(datasets.url("corrupt.zarr"), storage_options=datasets.options),
                     batch_size=16, shuffle=False, concurrency=2)
    with pytest.raises(ChunkReadError) as info:
        list(ld)
    assert info.value.key == "s3://data/corrupt.zarr/images/c/3/0/0/0"
    assert "corrupt or undecodable chunk s3://data/corrupt.zarr/images/c/3/0/0/0" in str(info.value)


def test_misaligned_arrays_are_rejected_with_lengths(datasets: Datasets) -> None:
    with pytest.raises(DatasetLayoutError, match=r"not aligned on axis 0.*'images': 203, 'labels': 200"):
        ZarrSource(datasets.url("misaligned.zarr"), storage_options=datasets.options).open()
    # selecting one of them is fine
    assert len(ZarrSource(datasets.url("misaligned.zarr"), arrays=["labels"], storage_options=datasets.options)) == 200


@pytest.mark.parametrize("url", ["ftp://host/x.zarr", "s3:///nobucket", ""])
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidURLError):
        ZarrSource(url)


def test_patch_larger_than_array(datasets: Datasets) -> None:
    ld = make_loader(ZarrSource(datasets.url("stack.zarr"), storage_options=datasets.options), batch_size=2,
                     patch_size=(64, 64))
    with pytest.raises(DatasetLayoutError, match="exceeds the array extent"):
        next(iter(ld))


def test_unreachable_endpoint_fails_fast_with_bounded_retries() -> None:
    opts = StorageOptions(endpoint_url="http://127.0.0.1:9", retries=2, connect_timeout=1, read_timeout=2,
                          extra={"key": "k", "secret": "s"})
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="cannot reach storage"):
        ZarrSource("s3://data/x.zarr", storage_options=opts).open()
    assert time.monotonic() - t0 < 60


def test_server_stopped_mid_read_raises_not_hangs(scratch_s3: S3Server) -> None:
    store = FsspecStore.from_url(f"s3://{BUCKET}/big.zarr", storage_options=scratch_s3.storage_options(), read_only=False)
    z = zarr.create_array(store, shape=(400, 64, 64), chunks=(4, 64, 64), dtype="float32", compressors=None)
    z[:] = np.random.default_rng(0).random((400, 64, 64), dtype=np.float32)
    opts = StorageOptions(retries=2, connect_timeout=1, read_timeout=3, extra=scratch_s3.storage_options())
    ld = make_loader(ZarrSource(f"s3://{BUCKET}/big.zarr", storage_options=opts), batch_size=4, concurrency=2,
                     shuffle_buffer_chunks=1)
    result: dict[str, object] = {}

    def consume() -> None:
        try:
            for i, _ in enumerate(ld):
                if i == 3:
                    scratch_s3.stop()
            result["error"] = None
        except Exception as exc:
            result["error"] = exc

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the loader hung after the server stopped"
    assert isinstance(result["error"], StorageUnavailableError), result
    assert "cannot reach storage" in str(result["error"])


def test_no_credentials_at_all_names_the_chain_and_anon(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    opts = StorageOptions(endpoint_url="http://127.0.0.1:9", retries=1, connect_timeout=1, read_timeout=1)
    with pytest.raises(AccessDeniedError, match=r"AWS_PROFILE.*anon=True"):
        ZarrSource("s3://data/x.zarr", storage_options=opts).open()
