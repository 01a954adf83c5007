"""The backend protocol (zarrloader.backends), each backend against real storage: the same objects
through obstore, s3fs and local files; the registry and defaults; the deadline; error classification
of real failures; the compatibility wrappers other modules still use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zl_helpers import BUCKET, Datasets, labels

from zarrloader import AccessDeniedError, StorageOptions, StorageUnavailableError, ZarrSource
from zarrloader.backends import (
    DEFAULTS,
    REGISTRY,
    WRITE_DEFAULTS,
    Backend,
    Deadline,
    ErrorKind,
    backend_class,
    choose_backend,
    open_backend,
)
from zarrloader.errors import BackendOptionError
from zarrloader.s3server import S3Server
from zarrloader.storage import BACKENDS, close_store, parse_url, zarr_store


def _backend(server: S3Server | None, tmp_path: Path, name: str, prefix: str = "proto") -> Backend:
    if name == "local":
        return open_backend(parse_url(str(tmp_path / prefix)), StorageOptions())
    assert server is not None
    return open_backend(parse_url(f"s3://{BUCKET}/{prefix}"), StorageOptions(extra=server.storage_options(), backend=name))


@pytest.mark.parametrize("name", ["obstore", "fsspec", "local"])
def test_objects_round_trip_through_every_backend(scratch_s3: S3Server, tmp_path: Path, name: str) -> None:
    b = _backend(scratch_s3, tmp_path, name)
    assert b.name == name
    b.put("a/one", b"1" * 10)
    b.put("a/two", memoryview(b"2" * 20))
    b.put("top", b"t")
    assert b.get("a/one") == b"1" * 10 and b.get("missing") is None
    assert b.size("a/two") == 20 and b.size("missing") is None
    assert [(o.key, o.size) for o in b.list_objects()] == [("a/one", 10), ("a/two", 20), ("top", 1)]
    assert [o.key for o in b.list_objects("a")] == ["a/one", "a/two"]
    b.delete("a/one")
    b.delete("a/one")  # deleting what is not there is no error
    assert [o.key for o in b.list_objects("a")] == ["a/two"]
    raw = b.run(b.get_async("top"), "reading top") if name != "local" else b.get("top")
    assert bytes(raw) == b"t"
    b.close()


@pytest.mark.parametrize("name", ["obstore", "fsspec"])
def test_bucket_probe(scratch_s3: S3Server, name: str) -> None:
    opts = StorageOptions(extra=scratch_s3.storage_options(), backend=name)
    assert open_backend(parse_url(f"s3://{BUCKET}/x"), opts).bucket_exists() is True
    assert open_backend(parse_url("s3://nobucket/x"), opts).bucket_exists() is False


@pytest.mark.parametrize("name", ["obstore", "fsspec"])
def test_one_zarr_store_per_backend_reads_what_the_others_wrote(scratch_s3: S3Server, tmp_path: Path, name: str) -> None:
    writer = _backend(scratch_s3, tmp_path, "fsspec" if name == "obstore" else "obstore", "arr.zarr")
    z = zarr.create_array(writer.zarr_store(read_only=False), shape=(30, 4), chunks=(7, 4), dtype="i4")
    z[:] = np.arange(120).reshape(30, 4)
    reader = _backend(scratch_s3, tmp_path, name, "arr.zarr")
    np.testing.assert_array_equal(zarr.open_array(reader.zarr_store(), mode="r")[:], np.arange(120).reshape(30, 4))
    writer.close()
    reader.close()


def test_registry_defaults_and_choice(datasets: Datasets) -> None:
    assert set(BACKENDS) == {"obstore", "fsspec"} and set(REGISTRY) == {"obstore", "fsspec", "local"}
    assert DEFAULTS["s3"][0] == "obstore" and DEFAULTS["gcs"] == ("obstore", "fsspec") and DEFAULTS["http"] == ("fsspec",)
    assert WRITE_DEFAULTS == {"gcs": ("fsspec",)}
    for name in REGISTRY:
        assert backend_class(name).name == name
    assert choose_backend(parse_url("s3://b/k"), StorageOptions()) == "obstore"
    assert choose_backend(parse_url("s3://b/k"), StorageOptions(backend="fsspec")) == "fsspec"
    assert choose_backend(parse_url("/tmp/x"), StorageOptions(backend="obstore")) == "local"
    # raw s3fs options obstore cannot honour: the default falls back, an explicit choice refuses
    odd = StorageOptions(extra={"use_ssl": False})
    assert choose_backend(parse_url("s3://b/k"), odd) == "fsspec"
    with pytest.raises(BackendOptionError, match="does not understand"):
        open_backend(parse_url("s3://b/k"), StorageOptions(extra={"use_ssl": False}, backend="obstore"))
    with pytest.raises(BackendOptionError, match=r"unknown storage backend 'boto'"):
        backend_class("boto")


def test_deadline_bound_and_defaults() -> None:
    d = Deadline(1.0, 2.0, 3)
    assert d.attempts == 4 and d.request_seconds == 9.0 and d.seconds == 9.0 + d.grace
    assert "connect_timeout=1 s, read_timeout=2 s, retries=3" in d.settings()
    default = Deadline.from_options(StorageOptions())
    assert (default.connect_timeout, default.read_timeout, default.retries) == (5.0, 20.0, 2)
    assert default.seconds == 67.0 <= 90
    assert open_backend(parse_url("/tmp/x"), StorageOptions()).deadline is None  # local files need none
    for bad in ({"read_timeout": 0}, {"connect_timeout": -1}, {"retries": -1}):
        with pytest.raises(ValueError, match="StorageOptions"):
            StorageOptions(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["obstore", "fsspec"])
def test_real_failures_are_classified(datasets: Datasets, name: str) -> None:
    server = datasets
    good = open_backend(parse_url(f"s3://{BUCKET}/v3.zarr"), StorageOptions(extra=server.options, backend=name))

    def kind(backend: Backend, coro: object) -> ErrorKind:
        try:
            backend.submit(coro).result(60)  # type: ignore[arg-type]
        except Exception as exc:
            return backend.classify_chain(exc)
        raise AssertionError("no error")

    wrong = open_backend(parse_url(f"s3://{BUCKET}/v3.zarr"),
                         StorageOptions(extra={**server.options, "secret": "wrong"}, backend=name))
    assert kind(wrong, wrong.list_async()) is ErrorKind.DENIED
    down = open_backend(parse_url(f"s3://{BUCKET}/v3.zarr"), StorageOptions(
        extra={**server.options, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}, backend=name,
        connect_timeout=1, read_timeout=1, retries=0))
    assert kind(down, down.list_async()) is ErrorKind.UNAVAILABLE
    with pytest.raises(StorageUnavailableError, match=r"cannot reach storage while listing .*127\.0\.0\.1:9.*retries=0"):
        down.list_objects()
    with pytest.raises(AccessDeniedError, match="check the credentials"):
        wrong.get("zarr.json")
    assert good.get("zarr.json") is not None
    for b in (good, wrong, down):
        b.close()


def test_a_source_exposes_its_backend(datasets: Datasets) -> None:
    src = ZarrSource(datasets.url("v3.zarr"), storage_options=datasets.options)
    assert src.backend_name == "obstore" and not src.is_open
    assert src.backend.name == "obstore" and src.is_open
    assert src.backend.size("labels/zarr.json")
    src.close()
    assert src.read_rows(0, 2)["labels"].tolist() == labels()[:2].tolist()  # reopens lazily


@pytest.mark.parametrize("backend", [None, "fsspec"])
def test_compatibility_wrappers(datasets: Datasets, backend: str | None) -> None:
    from zarrloader.objstore import s3_store

    opts = StorageOptions(extra=datasets.options, backend=backend)
    store = zarr_store(parse_url(datasets.url("v3.zarr")), opts)
    assert zarr.open_group(store, mode="r")["labels"][:3].tolist() == labels()[:3].tolist()
    close_store(store)
    close_store(store)  # twice is harmless
    assert type(s3_store(parse_url(datasets.url("v3.zarr")), opts)).__name__ == "S3Store"
