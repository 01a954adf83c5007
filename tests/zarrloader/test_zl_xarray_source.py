"""ZarrSource and make_loader on stores written by xarray itself (``ds.to_zarr``, zarr v2 and v3,
consolidated, CF attributes): every row the loader yields equals ``xarray.open_zarr(...)`` of the same
rows -- values, NaNs and dtypes -- raw, CF-decoded and with times as datetime64; arrays with the
sample dimension on another axis; static arrays; exact resume; inspect per sample dimension; local
files and a real ``rclone serve s3``."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zl_helpers import BUCKET

from zarrloader import ZarrSource, make_loader
from zarrloader.advice import CostModel, format_report, inspect_store
from zarrloader.errors import DatasetLayoutError
from zarrloader.s3server import S3Server

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")

N = 100


def climate(n: int = N) -> Any:
    """The issue's dataset: packed int16 ``tas`` (scale_factor/add_offset, _FillValue), ``pr`` with a
    float _FillValue and NaNs, time in integer hours since an epoch, coordinates, a static field, and
    ``lat_time`` with the time axis second."""
    rng = np.random.default_rng(0)
    time = pd.date_range("2000-01-01", periods=n, freq="6h")
    lat, lon = np.linspace(-85, 85, 18), np.linspace(0, 350, 36)
    tas = (rng.standard_normal((n, 18, 36)) * 10 + 280).astype("float32")
    tas[rng.random(tas.shape) < 0.05] = np.nan
    pr = rng.random((n, 18, 36)).astype("float32")
    pr[pr < 0.1] = np.nan
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), tas, {"units": "K"}),
         "pr": (("time", "lat", "lon"), pr),
         "orog": (("lat", "lon"), rng.random((18, 36)).astype("float32") * 1000),
         "lat_time": (("lat", "time"), rng.standard_normal((18, n)))},
        coords={"time": time, "lat": lat, "lon": lon},
    )
    ds["tas"].encoding.update(dtype="int16", scale_factor=0.01, add_offset=280.0, _FillValue=-32767, chunks=(16, 18, 36))
    ds["pr"].encoding.update(_FillValue=1e20, chunks=(25, 18, 36))
    ds["time"].encoding.update(units="hours since 1970-01-01", dtype="int64")
    return ds


def write(path: Path, fmt: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in the v3 spec
        climate().to_zarr(str(path), zarr_format=fmt, consolidated=True, mode="w")
    return path


def open_xr(path: Path | str, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(str(path), **kw)


def collect(loader: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    batches = list(loader)
    index = np.concatenate([b["index"].numpy() for b in batches])
    keys = [k for k in batches[0] if k != "index"]
    return index, {k: np.concatenate([b[k].numpy() for b in batches]) for k in keys}


def assert_rows_equal(got: dict[str, np.ndarray], ds: Any, dim: str, index: np.ndarray) -> None:
    for name, values in got.items():
        expected = ds[name].transpose(dim, ...).values[index]
        if expected.dtype.kind == "M":
            expected = expected.astype("datetime64[ns]").view(np.int64)
        assert values.dtype == expected.dtype, (name, values.dtype, expected.dtype)
        assert np.array_equal(values, expected, equal_nan=True), name


@pytest.fixture(params=[2, 3], ids=["v2", "v3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write(tmp_path / f"climate_v{request.param}.zarr", request.param)


def test_default_layout_samples_time_and_keeps_coordinates_static(store: Path) -> None:
    src = ZarrSource(store)
    assert src.layout.sample_dim == "time" and src.layout.chosen == "default"
    assert set(src.names) == {"tas", "pr", "time", "lat_time"} and len(src) == N
    assert {i.name: i.sample_axis for i in src.infos}["lat_time"] == 1
    assert set(src.static) == {"lat", "lon", "orog"}
    ds = open_xr(store)
    for name, field in src.static.items():
        assert field.dims == ds[name].dims
        assert np.array_equal(field.values, ds[name].values)
    assert src.time_units["time"].units == "hours since 1970-01-01"
    assert src.block_length == 400  # lcm of the chunk lengths along time: 16, 25, 100 (lat_time: 100)


def test_cf_rows_equal_xarray_shuffled(store: Path) -> None:
    src = ZarrSource(store, decode="cf")
    index, got = collect(make_loader(src, batch_size=12, shuffle=True, seed=3, return_index=True, pin_memory=False))
    assert sorted(index.tolist()) == list(range(N)) and index.tolist() != list(range(N))
    assert_rows_equal(got, open_xr(store, decode_times=False), "time", index)
    assert got["tas"].dtype == np.float64 and np.isnan(got["tas"]).any() and np.isnan(got["pr"]).any()
    assert "scale_factor" not in src.attrs("tas") and src.attrs("tas")["units"] == "K"
    # static fields are decoded too
    assert np.array_equal(src.static["orog"].values, open_xr(store)["orog"].values)


def test_cf_datetime64_rows_equal_xarray_in_storage_order(store: Path) -> None:
    src = ZarrSource(store, decode="cf", times="datetime64")
    index, got = collect(make_loader(src, batch_size=7, shuffle=False, return_index=True, pin_memory=False))
    assert index.tolist() == list(range(N))
    ds = open_xr(store)
    assert ds["time"].dtype.kind == "M"
    assert_rows_equal(got, ds, "time", index)


def test_raw_rows_equal_xarray_without_decoding(store: Path) -> None:
    index, got = collect(make_loader(ZarrSource(store), batch_size=32, shuffle=True, return_index=True,
                                     pin_memory=False))
    raw = open_xr(store, mask_and_scale=False, decode_times=False)
    assert got["tas"].dtype == np.int16 and (got["tas"] == -32767).any()
    assert_rows_equal(got, raw, "time", index)


def test_sample_dim_on_another_axis(store: Path) -> None:
    """sample_dim='lat': tas/pr are sampled on axis 1, lat_time and orog on axis 0, lat itself too."""
    src = ZarrSource(store, sample_dim="lat", decode="cf")
    assert {i.name: i.sample_axis for i in src.infos} == {"lat_time": 0, "orog": 0, "pr": 1, "tas": 1, "lat": 0}
    assert set(src.static) == {"time", "lon"} and len(src) == 18
    index, got = collect(make_loader(src, batch_size=5, shuffle=True, return_index=True, pin_memory=False))
    assert got["tas"].shape == (18, N, 36)
    assert_rows_equal(got, open_xr(store, decode_times=False), "lat", index)


def test_patches_along_stored_axes_when_the_sample_axis_is_not_first(store: Path) -> None:
    src = ZarrSource(store, arrays=["tas", "pr"], sample_dim="lat")
    ld = make_loader(src, batch_size=6, shuffle=False, return_index=True, patch_size=(10, 8), patch_axes=(-2, -1),
                     pin_memory=False)
    raw = open_xr(store, mask_and_scale=False, decode_times=False)
    b = next(iter(ld))
    assert b["tas"].shape == (6, 10, 8)
    for i, row in enumerate(b["index"].tolist()):
        full = raw["tas"].transpose("lat", ...).values[row]  # (time, lon)
        patch = b["tas"][i].numpy()
        hits = [(t, x) for t in range(N - 9) for x in range(36 - 7) if np.array_equal(full[t : t + 10, x : x + 8], patch)]
        assert hits, f"patch of row {row} is no window of the array"


def test_exact_resume_with_layout_and_decoding(store: Path) -> None:
    def loader() -> Any:
        return make_loader(ZarrSource(store, decode="cf"), batch_size=8, shuffle=True, seed=5, return_index=True,
                           pin_memory=False)

    full = [b["index"].tolist() for b in loader()]
    ld = loader()
    it = iter(ld)
    head = [next(it)["index"].tolist() for _ in range(5)]
    state = ld.state_dict()
    again = loader()
    again.load_state_dict(state)
    rest = [b for b in again]
    assert head + [b["index"].tolist() for b in rest] == full
    ds = open_xr(store, decode_times=False)
    b = rest[0]
    assert_rows_equal({k: v.numpy() for k, v in b.items() if k != "index"}, ds, "time", b["index"].numpy())


def test_pickled_source_keeps_its_layout_and_decoding(store: Path) -> None:
    src = ZarrSource(store, decode="cf", sample_dim="time")
    _ = src.static
    clone = pickle.loads(pickle.dumps(src))
    assert not clone.is_open and clone.decode == "cf" and clone.names == src.names
    assert np.array_equal(clone.static["orog"].values, src.static["orog"].values)


def test_make_loader_opens_urls_with_sample_dim_and_decode(store: Path) -> None:
    ld = make_loader(str(store), batch_size=10, sample_dim="time", decode="cf", shuffle=False, pin_memory=False)
    assert ld.source.decode == "cf" and next(iter(ld))["tas"].dtype.is_floating_point
    with pytest.raises(ValueError, match="not make_loader"):
        make_loader(ZarrSource(store), batch_size=10, decode="cf")
    with pytest.raises(ValueError, match="decode='cf'"):
        ZarrSource(store, times="datetime64")
    with pytest.raises(DatasetLayoutError, match=r"no array .* has a dimension 'depth'.*--sample-dim"):
        ZarrSource(store, sample_dim="depth").open()


def test_rows_over_s3_equal_xarray(scratch_s3: S3Server) -> None:
    root = Path(scratch_s3.root) / BUCKET
    write(root / "climate.zarr", 3)
    src = ZarrSource(f"s3://{BUCKET}/climate.zarr", storage_options=scratch_s3.storage_options(), decode="cf")
    index, got = collect(make_loader(src, batch_size=16, shuffle=True, return_index=True, pin_memory=False,
                                     concurrency=4))
    assert_rows_equal(got, open_xr(root / "climate.zarr", decode_times=False), "time", index)
    assert set(src.static) == {"lat", "lon", "orog"}


def test_inspect_tables_per_sample_dimension(store: Path) -> None:
    rep = inspect_store(str(store), model=CostModel(latency_s=0.01))
    assert rep.sample_dim == "time" and [t.sample_dim for t in rep.tables] == ["time", "lat"]
    assert {a.info.name for a in rep.tables[0].arrays} == {"tas", "pr", "time", "lat_time"}
    assert {s.info.name for s in rep.static} == {"lat", "lon", "orog"}
    text = format_report(rep)
    assert "sample dimension 'time'" in text and "static arrays" in text and "not aligned" not in text
    assert "sample axis 1" in text  # lat_time in the time table
    rep_lat = inspect_store(str(store), model=CostModel(latency_s=0.01), sample_dim="lat")
    assert rep_lat.tables[0].sample_dim == "lat" and {s.info.name for s in rep_lat.static} == {"time", "lon"}
    assert rep.to_dict()["tables"][0]["sample_dim"] == "time"


def test_inspect_gives_no_sharding_advice_to_sharded_arrays(tmp_path: Path) -> None:
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w", zarr_format=3)
    kw = dict(dtype="float32", compressors=None, fill_value=0)
    a = g.create_array("small", shape=(4096, 64), chunks=(4, 64), dimension_names=("time", "x"), **kw)
    b = g.create_array("sharded", shape=(4096, 64), chunks=(4, 64), shards=(1024, 64), dimension_names=("time", "x"), **kw)
    a[:] = 1.0
    b[:] = 1.0
    rep = inspect_store(str(tmp_path / "s.zarr"), model=CostModel(latency_s=0.01))
    adv = {r.info.name: " ".join(r.advice) for r in rep.arrays}
    assert "shard the array" in adv["small"] and "samples per chunk along 'time'" in adv["small"]
    assert "shard the array" not in adv["sharded"] and "inner chunks are small" in adv["sharded"]


def test_stores_without_names_keep_the_axis0_error_naming_the_cli_flag(tmp_path: Path) -> None:
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="w", zarr_format=3)
    g.create_array("images", shape=(20, 4), chunks=(5, 4), dtype="float32")
    g.create_array("labels", shape=(18,), chunks=(5,), dtype="int64")
    with pytest.raises(DatasetLayoutError, match=r"not aligned on axis 0.*--arrays"):
        ZarrSource(str(tmp_path / "m.zarr")).open()
    assert len(ZarrSource(str(tmp_path / "m.zarr"), arrays=["labels"])) == 18


@pytest.mark.parametrize("fmt", [2, 3])
def test_string_labels_along_the_sample_dimension_are_carried_whole(tmp_path: Path, fmt: int) -> None:
    ds = xr.Dataset({"x": (("time",), np.arange(10.0))},
                    coords={"time": np.arange(10), "station": ("time", [f"s{i}" for i in range(10)])})
    path = tmp_path / f"str{fmt}.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), zarr_format=fmt, mode="w")
    src = ZarrSource(path)
    assert set(src.names) == {"x", "time"} and src.static["station"].dims == ("time",)
    assert src.static["station"].values.tolist() == [f"s{i}" for i in range(10)]
    batch = next(iter(make_loader(src, batch_size=4, shuffle=False, pin_memory=False)))
    assert set(batch) == {"x", "time"}
    # named explicitly, it is sampled as asked (read_rows returns strings)
    named = ZarrSource(path, arrays=["x", "station"])
    assert named.names == ("x", "station") and named.read_rows(2, 4)["station"].tolist() == ["s2", "s3"]
