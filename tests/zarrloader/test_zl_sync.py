"""`zarrloader sync`: subset copies, byte-exact where aligned, re-encoded where not, atomic, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zl_helpers import BUCKET, Datasets, images, labels

from zarrloader import ZarrSource
from zarrloader.errors import ChunkReadError, WriteError
from zarrloader.s3server import S3Server
from zarrloader.staging import JOURNAL
from zarrloader.subset import PARTIAL_SUFFIX, parse_select, sync_subset


def read_all(url: str, **kw) -> dict[str, np.ndarray]:
    src = ZarrSource(url, **kw)
    return src.read_rows(0, len(src))


@pytest.mark.parametrize(("name", "select"), [("v3.zarr", "32:100"), ("v2_consolidated.zarr", "20:60"),
                                               ("sharded.zarr", "16:203"), ("sharded.zarr", "5:40"),
                                               ("v3.zarr", "7:50"), ("zstd.zarr", ":")])
def test_subset_matches_source(datasets: Datasets, tmp_path: Path, name: str, select: str) -> None:
    dst = tmp_path / "out.zarr"
    r = sync_subset(datasets.url(name), str(dst), select, src_options=datasets.options, progress=False)
    a, b = parse_select(select, 203)
    got = read_all(str(dst))
    np.testing.assert_array_equal(got["images"], images()[a:b])
    np.testing.assert_array_equal(got["labels"], labels()[a:b])
    assert not (tmp_path / ("out.zarr" + PARTIAL_SUFFIX)).exists()
    assert r.objects_total == r.copied_raw + r.reencoded + r.missing
    # metadata kept the format and codecs, only the length changed
    s_info, d_info = ZarrSource(datasets.url(name), storage_options=datasets.options).infos[0], ZarrSource(str(dst)).infos[0]
    assert (d_info.zarr_format, d_info.chunks, d_info.shards, d_info.codecs) == (s_info.zarr_format, s_info.chunks, s_info.shards, s_info.codecs)
    assert d_info.shape == (b - a, *s_info.shape[1:])


def test_aligned_selection_copies_only_touched_objects_byte_for_byte(datasets: Datasets, tmp_path: Path) -> None:
    dst = tmp_path / "out.zarr"
    r = sync_subset(datasets.url("raw.zarr"), str(dst), "32:80", arrays=["images"], src_options=datasets.options,
                    progress=False)
    assert r.copied_raw == 3 and r.reencoded == 0  # chunks 2, 3, 4 of 16 rows each
    src_chunk = datasets.path("raw.zarr") / "images" / "c" / "2" / "0" / "0" / "0"
    assert (dst / "images" / "c" / "0" / "0" / "0" / "0").read_bytes() == src_chunk.read_bytes()
    stored = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert [p for p in stored if "/c/" in p] == [f"images/c/{i}/0/0/0" for i in range(3)]
    root = json.loads((dst / "zarr.json").read_text())
    assert root["node_type"] == "group"
    assert not (dst / "labels").exists()


def test_consolidated_metadata_is_rewritten(datasets: Datasets, tmp_path: Path) -> None:
    dst = tmp_path / "c.zarr"
    sync_subset(datasets.url("v3_consolidated.zarr"), str(dst), "0:30", src_options=datasets.options, progress=False)
    meta = json.loads((dst / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert meta["images"]["shape"][0] == 30 and meta["labels"]["shape"] == [30]
    g = zarr.open_group(str(dst), mode="r")
    assert g["images"].shape[0] == 30


def test_to_s3_then_load(datasets: Datasets, scratch_s3: S3Server) -> None:
    url = f"s3://{BUCKET}/subset.zarr"
    sync_subset(datasets.url("v2.zarr"), url, "10:90", src_options=datasets.options,
                dst_options=scratch_s3.storage_options(), progress=False)
    got = read_all(url, storage_options=scratch_s3.storage_options())
    np.testing.assert_array_equal(got["images"], images()[10:90])
    with pytest.raises(WriteError, match="already exists"):
        sync_subset(datasets.url("v2.zarr"), url, "0:5", src_options=datasets.options,
                    dst_options=scratch_s3.storage_options(), progress=False)


def test_interrupted_sync_leaves_no_store_and_resumes(datasets: Datasets, tmp_path: Path) -> None:
    dst = tmp_path / "r.zarr"

    def stop_after_three(done: int, total: int) -> None:
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sync_subset(datasets.url("v3.zarr"), str(dst), "0:160", src_options=datasets.options, progress=False,
                    concurrency=1, on_item=stop_after_three)
    assert not dst.exists(), "an interrupted sync left a store at DST"
    staged = tmp_path / ("r.zarr" + PARTIAL_SUFFIX)
    journal = [json.loads(line) for line in (staged / JOURNAL).read_text().splitlines()]
    assert len([e for e in journal if "u" in e]) >= 3  # every finished object is journalled as it lands
    r = sync_subset(datasets.url("v3.zarr"), str(dst), "0:160", src_options=datasets.options, progress=False)
    assert r.skipped_done >= 3 and r.copied_raw + r.reencoded + r.missing == r.objects_total - r.skipped_done
    np.testing.assert_array_equal(read_all(str(dst))["images"], images()[:160])
    with pytest.raises(ValueError):
        sync_subset(datasets.url("v3.zarr"), str(tmp_path / "x.zarr"), "5:5", src_options=datasets.options)


def test_failed_sync_from_corrupt_source_leaves_no_store(datasets: Datasets, tmp_path: Path) -> None:
    dst = tmp_path / "bad.zarr"
    with pytest.raises(ChunkReadError, match="images/c/3/0/0/0"):
        sync_subset(datasets.url("corrupt.zarr"), str(dst), "1:100", src_options=datasets.options, progress=False)
    assert not dst.exists()


def test_parse_select() -> None:
    assert parse_select("0:50", 50) == (0, 50)
    assert parse_select("-10:", 50) == (40, 50)
    assert parse_select(None, 7) == (0, 7)
    for bad in ("1:2:3", "a:b", "9:3", "5:5"):
        with pytest.raises(ValueError):
            parse_select(bad, 50)
    with pytest.raises(ValueError, match=r"outside the 512 samples.*Fix: use e.g. --select 0:512"):
        parse_select("0:99999", 512)  # refused, not clipped


def _xarray_dataset():  # type: ignore[no-untyped-def]
    import pandas as pd
    import xarray as xr

    rng = np.random.default_rng(0)
    nt, ny, nx = 100, 6, 8
    ds = xr.Dataset(
        {
            "tas": (("time", "lat", "lon"), rng.normal(280, 5, (nt, ny, nx)).astype("float32"), {"units": "K"}),
            "pr": (("time", "lat", "lon"), rng.random((nt, ny, nx)).astype("float32")),
            "lat_series": (("lat", "time"), rng.random((ny, nt))),  # the sample dimension on axis 1
            "orog": (("lat", "lon"), rng.random((ny, nx)).astype("float32"), {"long_name": "orography"}),
        },
        coords={"time": pd.date_range("2000-01-01", periods=nt, freq="D"), "lat": np.linspace(-50, 50, ny),
                "lon": np.linspace(0, 350, nx)},
        attrs={"title": "sync test", "Conventions": "CF-1.8"},
    )
    return ds


@pytest.mark.parametrize("fmt", [2, 3])
@pytest.mark.parametrize("select", ["20:60", "13:57"])  # on chunk boundaries (bytes copied) and not (re-encoded)
def test_whole_xarray_dataset_sync_equals_isel(tmp_path: Path, fmt: int, select: str) -> None:
    import xarray as xr

    ds = _xarray_dataset()
    src, dst = tmp_path / "ds.zarr", tmp_path / "sub.zarr"
    enc = {v: {"chunks": (10, 3, 4)} for v in ("tas", "pr")} | {"lat_series": {"chunks": (3, 10)}, "time": {"chunks": (10,)}}
    ds.to_zarr(src, zarr_format=fmt, consolidated=True, encoding=enc)
    r = sync_subset(str(src), str(dst), select, progress=False)
    a, b = parse_select(select, 100)
    assert r.sample_dim == "time" and set(r.static) == {"lat", "lon", "orog"}
    assert (r.reencoded == 0) == (a % 10 == 0)  # static arrays are always copied as bytes
    assert r.copied_raw >= 3
    got = xr.open_zarr(dst, consolidated=True)
    xr.testing.assert_identical(got.load(), ds.isel(time=slice(a, b)))
    assert got.attrs == ds.attrs and got["orog"].attrs["long_name"] == "orography"
    # consolidated metadata was rewritten, not dropped: opening without reading arrays' own docs agrees
    assert xr.open_zarr(dst, consolidated=True).sizes["time"] == b - a


def test_select_past_the_end_is_refused_not_clipped(datasets: Datasets, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the 203 samples"):
        sync_subset(datasets.url("v3.zarr"), str(tmp_path / "x.zarr"), "0:99999", src_options=datasets.options,
                    progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_no_verify_copies_corrupt_bytes_only_when_asked(datasets: Datasets, tmp_path: Path) -> None:
    """Aligned selection: objects are copied as bytes. Verified (default) the corrupt one stops the
    sync naming its key; --no-verify copies it (the user's explicit choice)."""
    with pytest.raises(ChunkReadError, match=r"corrupt or undecodable chunk .*images/c/3/0/0/0") as err:
        sync_subset(datasets.url("corrupt.zarr"), str(tmp_path / "v.zarr"), "0:100", src_options=datasets.options,
                    progress=False, concurrency=1)
    assert err.value.key == "images/c/3/0/0/0"
    staged = tmp_path / ("v.zarr" + PARTIAL_SUFFIX)
    assert not (staged / "images" / "c" / "3" / "0" / "0" / "0").exists(), "a corrupt chunk was written"
    r = sync_subset(datasets.url("corrupt.zarr"), str(tmp_path / "nv.zarr"), "0:100", src_options=datasets.options,
                    progress=False, verify=False)
    assert not r.verified and (tmp_path / "nv.zarr" / "images" / "c" / "3" / "0" / "0" / "0").exists()


@pytest.mark.parametrize(("fmt", "backend"), [(2, "obstore"), (3, "fsspec")])
def test_whole_xarray_dataset_from_s3_to_s3_equals_isel(scratch_s3: S3Server, fmt: int, backend: str) -> None:
    """Both ends on a real S3 server: the source read and the destination written through the backends."""
    import xarray as xr

    from zarrloader import StorageOptions

    ds = _xarray_dataset()
    so = scratch_s3.storage_options()
    ds.to_zarr(f"s3://{BUCKET}/ds.zarr", zarr_format=fmt, consolidated=True, storage_options=so,
               encoding={"tas": {"chunks": (10, 3, 4)}, "time": {"chunks": (10,)}})
    opts = StorageOptions(extra=so, backend=backend)
    r = sync_subset(f"s3://{BUCKET}/ds.zarr", f"s3://{BUCKET}/sub.zarr", "25:75", src_options=opts, dst_options=opts,
                    progress=False)
    assert r.sample_dim == "time" and r.reencoded > 0
    got = xr.open_zarr(f"s3://{BUCKET}/sub.zarr", consolidated=True, storage_options=so).load()
    xr.testing.assert_identical(got, ds.isel(time=slice(25, 75)))
    left = [p for p in (scratch_s3.root / BUCKET / "sub.zarr").rglob("*") if ".zarrloader" in p.name]
    assert not left, f"the writer's own bookkeeping was left behind: {left}"
