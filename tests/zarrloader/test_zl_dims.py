"""Dimension names and the dataset layout: the pure function over plain metadata, and the reader over
real stores written by xarray (zarr v2 and v3, consolidated) and by zarr-python (no names)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from zarrloader.dims import (
    DIMENSION_KEY,
    ArrayMeta,
    dataset_layout,
    default_sample_dim,
    dims_from_metadata,
    layouts_by_dimension,
    read_layout,
)
from zarrloader.errors import DatasetLayoutError, StoreNotFoundError

xr = pytest.importorskip("xarray")


def climate() -> list[ArrayMeta]:
    """The issue's dataset: time series, coordinates, a static field, bounds with the time axis second."""
    return [
        ArrayMeta("tas", (100, 18, 36), ("time", "lat", "lon"), (10, 18, 36), "float32"),
        ArrayMeta("pr", (100, 18, 36), ("time", "lat", "lon"), (25, 18, 36), "float32"),
        ArrayMeta("time", (100,), ("time",), (100,), "int64"),
        ArrayMeta("lat", (18,), ("lat",), (18,), "float64"),
        ArrayMeta("lon", (36,), ("lon",), (36,), "float64"),
        ArrayMeta("orog", (18, 36), ("lat", "lon"), (18, 36), "float32"),
        ArrayMeta("bnds_t", (2, 100), ("nv", "time"), (2, 50), "float64"),
        ArrayMeta("crs", (), (), None, "int32"),
    ]


def test_default_layout_of_a_climate_dataset() -> None:
    lay = dataset_layout(climate())
    assert lay.sample_dim == "time" and lay.chosen == "default" and lay.length == 100
    assert set(lay.sampled_names) == {"tas", "pr", "time", "bnds_t"}
    assert set(lay.static_names) == {"lat", "lon", "orog", "crs"}
    b = lay.sampled_array("bnds_t")
    assert b.axis == 1 and b.sample_shape == (2,) and b.sample_dims == ("nv",) and b.chunk_length == 50
    assert b.selection(3, 7) == (slice(None), slice(3, 7))
    block = np.arange(2 * 4).reshape(2, 4)
    assert b.sample_major(block).shape == (4, 2) and np.shares_memory(b.sample_major(block), block)
    assert lay.axis_of("orog") is None and lay.axis_of("tas") == 0
    assert sorted(lay.chunk_lengths) == [10, 25, 50, 100]
    assert lay.dimensions == {"time": 100, "lat": 18, "lon": 36, "nv": 2}
    assert "'time'" in lay.describe() and "default" in lay.describe() and "'lat' (1)" in lay.describe()


def test_one_layout_per_candidate_dimension() -> None:
    per = layouts_by_dimension(climate())
    assert list(per) == ["time", "lat", "nv"]  # tas+pr lead time; orog leads lat; bnds_t leads nv
    assert set(per["lat"].static_names) == {"time", "lon", "crs", "bnds_t"} and per["nv"].length == 2


def test_explicit_sample_dim_and_its_errors() -> None:
    lay = dataset_layout(climate(), "lat")
    assert lay.chosen == "argument" and set(lay.sampled_names) == {"tas", "pr", "lat", "orog"}
    assert lay.sampled_array("tas").axis == 1
    with pytest.raises(DatasetLayoutError,
                       match=r"no array in s3://b/x has a dimension 'depth'.*--sample-dim / sample_dim="):
        dataset_layout(climate(), "depth", where="s3://b/x")
    cov = [*climate(), ArrayMeta("cov", (100, 100), ("time", "time"))]
    with pytest.raises(DatasetLayoutError, match=r"'cov'.*axes \[0, 1\].*--arrays / arrays=\[\.\.\.\]"):
        dataset_layout(cov)
    odd = [ArrayMeta("a", (10, 2), ("t", "x")), ArrayMeta("b", (12,), ("t",))]
    with pytest.raises(DatasetLayoutError, match="disagree on the length of dimension 't'"):
        dataset_layout(odd)


def test_ambiguous_default_and_tie_break() -> None:
    # the time series outweighs a static field of the same rank: the byte tie-break
    ocean = [ArrayMeta("temp", (100, 5, 8, 9), ("time", "depth", "lat", "lon"), dtype="float32"),
             ArrayMeta("mask", (5, 8, 9), ("depth", "lat", "lon"), dtype="int8"),
             ArrayMeta("area", (8, 9), ("lat", "lon"), dtype="float32")]
    assert default_sample_dim(ocean) == "time"
    tie = [ArrayMeta("a", (10, 3), ("x", "y"), dtype="f4"), ArrayMeta("b", (3, 10), ("y2", "x"), dtype="f4")]
    with pytest.raises(DatasetLayoutError,
                       match=r"ambiguous sample dimension.*'x'.*'y2'.*--sample-dim NAME.*sample_dim="):
        dataset_layout(tie)
    assert dataset_layout(tie, "x").sampled_array("b").axis == 1


def test_stores_without_names() -> None:
    plain = [ArrayMeta("images", (203, 3, 12, 10)), ArrayMeta("labels", (203,)), ArrayMeta("scalar", ())]
    lay = dataset_layout(plain)
    assert lay.sample_dim is None and lay.chosen == "axis0" and lay.sampled_names == ("images", "labels")
    assert lay.static_names == ("scalar",) and "axis: 0" in lay.describe()
    with pytest.raises(DatasetLayoutError, match=r"differ in length on axis 0.*--arrays / arrays=\[\.\.\.\]"):
        dataset_layout([ArrayMeta("a", (5,)), ArrayMeta("b", (6,))])
    with pytest.raises(DatasetLayoutError, match=r"no array stores dimension names.*drop --sample-dim / sample_dim="):
        dataset_layout(plain, "time")
    mixed = [ArrayMeta("a", (5, 2), ("t", "x")), ArrayMeta("b", (5,))]
    with pytest.raises(DatasetLayoutError, match=r"arrays \['b'\] store no dimension names while the others do"):
        dataset_layout(mixed)
    with pytest.raises(DatasetLayoutError, match="3 dimension names"):
        ArrayMeta("bad", (2, 2), ("a", "b", "c"))
    with pytest.raises(DatasetLayoutError, match="no arrays"):
        dataset_layout([])


def test_dims_from_metadata_documents() -> None:
    assert dims_from_metadata({"dimension_names": ["t", None]}) == ("t", None)
    assert dims_from_metadata({"zarr_format": 3, "attributes": {DIMENSION_KEY: ["t"]}}) == ("t",)
    assert dims_from_metadata({"zarr_format": 2}, {DIMENSION_KEY: ["a", "b"]}) == ("a", "b")
    assert dims_from_metadata({"zarr_format": 2}, {}) is None
    with pytest.raises(DatasetLayoutError, match="not a list"):
        dims_from_metadata({"dimension_names": "time"})


def _xarray_store(path: Path, fmt: int) -> None:
    nt = 40
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), np.zeros((nt, 4, 5), "f4")),
         "orog": (("lat", "lon"), np.ones((4, 5), "f4")),
         "tb": (("nv", "time"), np.zeros((2, nt)))},
        coords={"time": np.arange(nt), "lat": np.arange(4.0), "lon": np.arange(5.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), zarr_format=fmt, consolidated=True)


@pytest.mark.parametrize("fmt", [2, 3])
def test_read_layout_of_xarray_stores(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / f"v{fmt}.zarr"
    _xarray_store(path, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_consolidated(str(path), zarr_format=fmt)
    lay = read_layout(g, where=str(path))
    assert lay.sample_dim == "time" and set(lay.sampled_names) == {"tas", "tb", "time"}
    assert lay.sampled_array("tb").axis == 1 and set(lay.static_names) == {"lat", "lon", "orog"}
    assert read_layout(g, arrays=["orog", "tas"]).static_names == ("orog",)
    with pytest.raises(StoreNotFoundError, match="no array 'nope'"):
        read_layout(g, arrays=["nope"])


def test_read_layout_of_a_plain_zarr_group(tmp_path: Path) -> None:
    g = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    g.create_array("x", shape=(7, 2), dtype="f4")
    g.create_array("y", shape=(7,), dtype="i8")
    lay = read_layout(zarr.open_group(str(tmp_path / "p.zarr"), mode="r"))
    assert lay.sample_dim is None and lay.sampled_names == ("x", "y") and lay.length == 7


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_source_follows_the_layout(tmp_path: Path, fmt: int) -> None:
    """ZarrSource samples what read_layout samples, at the same axes; the others are static."""
    from zarrloader import ZarrSource

    path = tmp_path / f"s{fmt}.zarr"
    _xarray_store(path, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lay = read_layout(zarr.open_consolidated(str(path), zarr_format=fmt))
    src = ZarrSource(path)
    assert src.layout.sample_dim == lay.sample_dim == "time"
    assert {i.name: i.sample_axis for i in src.infos} == {a.name: a.axis for a in lay.sampled}
    assert set(src.static) == set(lay.static_names)
    tb = next(i for i in src.infos if i.name == "tb")
    assert tb.major_shape == (tb.length, *tb.sample_shape) and tb.sample_chunk == tb.chunks[1]
    rows = src.read_rows(2, 5)
    assert rows["tb"].shape == (3, *tb.sample_shape) and rows["tb"].flags.c_contiguous
    with pytest.raises(DatasetLayoutError, match="dimensions present"):
        ZarrSource(path, sample_dim="nope").open()
