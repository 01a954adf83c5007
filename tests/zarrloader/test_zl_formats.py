"""Formats, codecs, layouts and URL schemes, all read through the loader and checked value by value."""

from __future__ import annotations

import numpy as np
import pytest
from zl_helpers import BUCKET, Datasets, N, images, labels

from zarrloader import StorageOptions, ZarrSource, make_loader
from zarrloader.s3server import S3Server
from zarrloader.storage import fsspec_options, parse_url

DATASETS = ["v3.zarr", "v2.zarr", "v3_consolidated.zarr", "v2_consolidated.zarr", "sharded.zarr", "zstd.zarr",
            "blosc_lz4.zarr", "gzip.zarr", "raw.zarr"]


def full_epoch(src: ZarrSource, **kw) -> dict[str, np.ndarray]:
    ld = make_loader(src, batch_size=kw.pop("batch_size", 64), return_index=True, concurrency=3, seed=1, **kw)
    batches = list(ld)
    out = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
    order = np.argsort(out["index"])
    return {k: v[order] for k, v in out.items()}


@pytest.mark.parametrize("backend", [None, "fsspec"])  # None: the default, obstore for s3://
@pytest.mark.parametrize("name", DATASETS)
def test_every_format_and_codec_over_s3(datasets: Datasets, name: str, backend: str | None) -> None:
    src = ZarrSource(datasets.url(name), storage_options=StorageOptions(extra=datasets.options, backend=backend))
    assert src.backend_name == (backend or "obstore")
    got = full_epoch(src)
    np.testing.assert_array_equal(got["index"], np.arange(N))
    np.testing.assert_array_equal(got["images"], images())
    np.testing.assert_array_equal(got["labels"], labels())
    assert src.names == ("images", "labels")


def test_metadata_reports_format_sharding_and_codecs(datasets: Datasets) -> None:
    v2 = ZarrSource(datasets.url("v2.zarr"), storage_options=datasets.options).infos[0]
    assert v2.zarr_format == 2 and v2.shards is None and v2.codecs
    sh = ZarrSource(datasets.url("sharded.zarr"), storage_options=datasets.options).infos[0]
    assert sh.zarr_format == 3 and sh.shards == (16, 3, 12, 10) and sh.chunks == (4, 3, 6, 5)
    assert sh.n_objects == 13 and sh.n_read_chunks == 51 * 2 * 2
    lz4 = ZarrSource(datasets.url("blosc_lz4.zarr"), storage_options=datasets.options).infos[0]
    assert any("lz4" in c for c in lz4.codecs)


def test_single_array_url_and_group_member_url(datasets: Datasets) -> None:
    src = ZarrSource(datasets.url("v3.zarr") + "/labels", storage_options=datasets.options)
    assert src.names == ("",)
    got = full_epoch(src, batch_size=50)
    np.testing.assert_array_equal(got[""], labels())


def test_local_path_and_file_url(datasets: Datasets) -> None:
    path = datasets.path("v2.zarr")
    for url in (str(path), path.as_uri()):
        got = full_epoch(ZarrSource(url))
        np.testing.assert_array_equal(got["images"], images())


def test_read_only_http(datasets: Datasets, http_url: str) -> None:
    src = ZarrSource(f"{http_url}/v3_consolidated.zarr", arrays=["images", "labels"])
    got = full_epoch(src)
    np.testing.assert_array_equal(got["images"], images())
    np.testing.assert_array_equal(got["labels"], labels())


def test_standard_credential_chain_from_environment(datasets: Datasets, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key in code: AWS_* variables (what an IRSA/instance role or profile also feeds) are used."""
    for k, v in datasets.server.env().items():
        monkeypatch.setenv(k, v)
    src = ZarrSource(f"s3://{BUCKET}/v3.zarr", storage_options=StorageOptions(profile=None))
    assert src.backend_name == "obstore"  # the default for s3://, endpoint from AWS_ENDPOINT_URL
    assert len(src) == N
    np.testing.assert_array_equal(src.read_rows(10, 12)["labels"], labels()[10:12])


def test_storage_options_map_to_fsspec() -> None:
    s3 = fsspec_options(parse_url("s3://b/k"), StorageOptions(anon=True, requester_pays=True, endpoint_url="http://x:1",
                                                             region="eu-west-1", max_connections=64, retries=4))
    assert s3["anon"] is True and s3["requester_pays"] is True
    assert s3["client_kwargs"] == {"endpoint_url": "http://x:1", "region_name": "eu-west-1"}
    cfg = s3["config_kwargs"]
    # retries counts retries after the first attempt
    assert cfg["max_pool_connections"] == 64 and cfg["retries"] == {"max_attempts": 5, "mode": "standard"}
    assert cfg["response_checksum_validation"] == "when_required"
    gs = fsspec_options(parse_url("gs://b/k"), StorageOptions(anon=True, requester_pays=True))
    assert gs["token"] == "anon" and gs["requester_pays"] is True
    # raw dicts are merged over the defaults, one level deep
    merged = fsspec_options(parse_url("s3://b/k"), StorageOptions.coerce({"config_kwargs": {"read_timeout": 5}}))
    assert merged["config_kwargs"]["read_timeout"] == 5 and merged["config_kwargs"]["connect_timeout"] == 5.0


@pytest.mark.parametrize("fmt", [2, 3])
def test_sample_dimension_on_axis_1_sharded_and_compressed_over_s3(scratch_s3: S3Server, fmt: int) -> None:
    """Dimension names written by zarr-python itself (v3 dimension_names, v2 _ARRAY_DIMENSIONS):
    ``x(feature, time)`` is sampled on axis 1 (sharded in v3, big-endian in v2), ``y(time)`` on axis
    0, ``c(feature)`` is static; read over S3 through the default backend."""
    from pathlib import Path

    import zarr

    path = Path(scratch_s3.root) / BUCKET / f"ax1_v{fmt}.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    rng = np.random.default_rng(fmt)
    x = rng.standard_normal((6, 200)).astype(">f8" if fmt == 2 else "f8")
    y = np.arange(200, dtype="i4")
    c = np.linspace(0, 1, 6)
    if fmt == 3:
        ax = g.create_array("x", shape=x.shape, chunks=(6, 16), shards=(6, 64), dtype=x.dtype,
                            dimension_names=("feature", "time"))
        ay = g.create_array("y", shape=y.shape, chunks=(50,), dtype=y.dtype, dimension_names=("time",))
        ac = g.create_array("c", shape=c.shape, chunks=(6,), dtype=c.dtype, dimension_names=("feature",))
    else:
        ax = g.create_array("x", shape=x.shape, chunks=(3, 16), dtype=x.dtype, attributes={"_ARRAY_DIMENSIONS": ["feature", "time"]})
        ay = g.create_array("y", shape=y.shape, chunks=(50,), dtype=y.dtype, attributes={"_ARRAY_DIMENSIONS": ["time"]})
        ac = g.create_array("c", shape=c.shape, chunks=(6,), dtype=c.dtype, attributes={"_ARRAY_DIMENSIONS": ["feature"]})
    ax[:], ay[:], ac[:] = x, y, c
    zarr.consolidate_metadata(str(path))
    # the default would be "feature" (it leads x, the larger array): ask for time
    assert ZarrSource(str(path)).layout.sample_dim == "feature"
    src = ZarrSource(f"s3://{BUCKET}/{path.name}", storage_options=scratch_s3.storage_options(), sample_dim="time")
    assert src.layout.sample_dim == "time" and {i.name: i.sample_axis for i in src.infos} == {"x": 1, "y": 0}
    assert src.direct_arrays == ("y",)  # x is not sampled on axis 0: zarr's read path
    got = full_epoch(src, batch_size=24)
    np.testing.assert_array_equal(got["index"], np.arange(200))
    np.testing.assert_array_equal(got["x"], x.T)
    np.testing.assert_array_equal(got["y"], y)
    np.testing.assert_array_equal(src.static["c"].values, c)
    assert src.static["c"].dims == ("feature",)
