"""CF decoding against xarray's own decoding of the same stored values (bit-exact), written by
zarr-python (v2 and v3) and read back both ways."""

from __future__ import annotations

import base64
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from zarrloader.cf import CFDecodeError, CFDecoder, TimeUnits, cf_cost, decode_times, decoders_for

xr = pytest.importorskip("xarray")

N = 200_003  # more than one decode block, not a multiple of it


def b64(x: float) -> str:
    """A float _FillValue as xarray encodes it in zarr v3 attributes."""
    return base64.standard_b64encode(struct.pack("<d", float(x))).decode()


def _values(dtype: str, n: int = N, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=n, endpoint=True, dtype=dt.newbyteorder("=")).astype(dt)
    return (rng.standard_normal(n) * 100).astype(dt)


def _write(path: Path, fmt: int, name: str, data: np.ndarray, attrs: dict[str, Any], fill: Any = None) -> zarr.Array:
    g = zarr.open_group(str(path), mode="a", zarr_format=fmt)
    kw: dict[str, Any] = {"dimension_names": ["x"]} if fmt == 3 else {}
    a = g.create_array(name, shape=data.shape, chunks=(65536,), dtype=data.dtype, fill_value=fill, **kw)
    a[:] = data
    a.attrs.update({**attrs, **({"_ARRAY_DIMENSIONS": ["x"]} if fmt == 2 else {})})
    return a


# (stored dtype, attrs, zarr fill value, fill values to plant in the data)
CASES_V3: dict[str, tuple[str, dict[str, Any], Any, list[Any]]] = {
    "int16_packed_fill": ("int16", {"scale_factor": 0.01, "add_offset": 273.15, "_FillValue": -32767}, 0, [-32767]),
    "int16_scale_only": ("int16", {"scale_factor": 0.5}, 0, []),
    "int16_offset_only": ("int16", {"add_offset": 10.0}, 0, []),
    "int32_packed": ("int32", {"scale_factor": 0.001, "add_offset": -5.0, "_FillValue": -2147483647}, 0, [-2147483647]),
    "uint8_fill": ("uint8", {"_FillValue": 255}, 0, [255]),
    "int8_unsigned": ("int8", {"_Unsigned": "true", "_FillValue": -1}, 0, [-1]),
    "int8_unsigned_packed": ("int8", {"_Unsigned": "true", "_FillValue": -1, "scale_factor": 0.1}, 0, [-1]),
    "uint16_signed": ("uint16", {"_Unsigned": "false", "_FillValue": -1}, 0, [-1]),
    "float32_fill_b64": ("float32", {"_FillValue": b64(np.float32(1e20))}, float("nan"), [np.float32(1e20)]),
    "float32_missing_value": ("float32", {"missing_value": -999.0}, float("nan"), [-999.0]),
    "float64_fill_and_missing": ("float64", {"_FillValue": b64(1e20), "missing_value": -1.0}, float("nan"), [1e20, -1.0]),
    "float32_packed_nan_fill": ("float32", {"_FillValue": b64(float("nan")), "scale_factor": 2.0}, float("nan"), []),
    "float64_scale_offset": ("float64", {"scale_factor": 0.1, "add_offset": 3.0}, float("nan"), []),
    "int64_fill": ("int64", {"_FillValue": -9999}, 0, [-9999]),
    "uint32_fill": ("uint32", {"_FillValue": 4294967295}, 0, [4294967295]),
}

CASES_V2: dict[str, tuple[str, dict[str, Any], Any, list[Any]]] = {
    "v2_float32_zarr_fill": ("float32", {}, np.float32(1e20), [np.float32(1e20)]),
    "v2_int16_packed": ("int16", {"scale_factor": 0.01, "add_offset": 273.15}, -32767, [-32767]),
    "v2_big_endian_packed": (">i2", {"scale_factor": 0.25, "add_offset": 1.0}, -32767, [-32767]),
    "v2_int32_no_fill": ("int32", {"scale_factor": 2.0}, None, []),
    "v2_float64_nan": ("float64", {}, float("nan"), []),
}


def _plant(data: np.ndarray, fills: list[Any]) -> np.ndarray:
    data = data.copy()
    for k, fv in enumerate(fills):
        data[k::97] = np.asarray(fv).astype(data.dtype)
    return data


def _check_against_xarray(store: Path, fmt: int, cases: dict[str, tuple[str, dict[str, Any], Any, list[Any]]]) -> None:
    for name, (dtype, attrs, fill, fills) in cases.items():
        _write(store, fmt, name, _plant(_values(dtype), fills), attrs, fill)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata "not part of the v3 spec"
        zarr.consolidate_metadata(str(store))
        ds = xr.open_zarr(str(store), zarr_format=fmt, decode_times=False).load()
    g = zarr.open_group(str(store), mode="r")
    decs = decoders_for({n: g[n] for n in cases})
    for name in cases:
        arr = g[name]
        stored = arr[:]
        dec = decs[name]
        got = dec.decode(stored, copy=True)
        want = ds[name].values
        assert dec.out_dtype == want.dtype, (name, dec.out_dtype, want.dtype)
        assert got.dtype == want.dtype, name
        # bit-exact, NaNs included
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name
        # the attributes left are xarray's too (encoding attributes moved out)
        left = {k: v for k, v in dec.attrs.items() if k != "_ARRAY_DIMENSIONS"}
        assert set(left) == set(ds[name].attrs), name


def test_matches_xarray_v3(tmp_path: Path) -> None:
    _check_against_xarray(tmp_path / "v3.zarr", 3, CASES_V3)


def test_matches_xarray_v2(tmp_path: Path) -> None:
    _check_against_xarray(tmp_path / "v2.zarr", 2, CASES_V2)


def test_packed_dtype_rule() -> None:
    """xarray's _choose_float_dtype: float32 for small ints with float32 scale+offset, else float64."""
    f32 = np.float32
    assert CFDecoder.from_attrs({"scale_factor": f32(0.01), "add_offset": f32(1)}, "int16").out_dtype == np.float32
    assert CFDecoder.from_attrs({"scale_factor": f32(0.01), "add_offset": f32(1)}, "int32").out_dtype == np.float64
    assert CFDecoder.from_attrs({"scale_factor": 0.01, "add_offset": 1.0}, "int16").out_dtype == np.float64
    assert CFDecoder.from_attrs({"scale_factor": f32(0.01), "add_offset": 1.0}, "int8").out_dtype == np.float64
    assert CFDecoder.from_attrs({"scale_factor": f32(0.01)}, "int16").out_dtype == np.float32
    assert CFDecoder.from_attrs({"_FillValue": -1}, "int16").out_dtype == np.float32
    assert CFDecoder.from_attrs({"_FillValue": -1}, "int32").out_dtype == np.float64
    assert CFDecoder.from_attrs({}, "int16").is_identity


def test_in_place_and_out() -> None:
    dec = CFDecoder.from_attrs({"_FillValue": b64(np.float32(1e20))}, "float32")
    x = np.array([1.0, 1e20, 3.0], np.float32)
    y = dec.decode(x)
    assert y is x and np.isnan(x[1])  # same dtype, writable: in place
    ro = np.array([1.0, 1e20], np.float32)
    ro.flags.writeable = False
    z = dec.decode(ro)
    assert z is not ro and np.isnan(z[1]) and ro[1] == np.float32(1e20)
    attrs = {"scale_factor": np.float32(0.5), "add_offset": np.float32(1), "_FillValue": np.int16(-1)}
    packed = CFDecoder.from_attrs(attrs, "int16")
    out = np.empty((2, 3), np.float32)
    r = packed.decode(np.array([[0, 2, -1], [4, -1, 6]], np.int16), out=out)
    assert r is out
    np.testing.assert_array_equal(out, np.array([[1, 2, np.nan], [3, np.nan, 4]], np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        packed.decode(np.zeros(3, np.int16), out=np.empty(3, np.float64))
    with pytest.raises(CFDecodeError, match="stored dtype"):
        packed.decode(np.zeros(3, np.float64))


def test_non_contiguous_batch_matches_contiguous() -> None:
    dec = CFDecoder.from_attrs({"scale_factor": 0.01, "add_offset": 5.0, "_FillValue": -7}, "int16")
    data = _plant(_values("int16", 300_000), [-7]).reshape(300, 1000)
    view = data.T  # a transposed view (as after moving a sample axis first)
    np.testing.assert_array_equal(dec.decode(view), dec.decode(np.ascontiguousarray(view)))


def _time_store(path: Path, name: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
    _write(path, 3, name, values, attrs, 0)


def test_times_match_xarray(tmp_path: Path) -> None:
    store = tmp_path / "t.zarr"
    hours = (np.arange(N, dtype=np.int32) * 6) - 1000
    days = np.linspace(-400.25, 9000.5, N)
    _time_store(store, "hours", hours, {"units": "hours since 1970-01-01 00:00:00", "calendar": "standard"})
    _time_store(store, "days", days, {"units": "days since 2000-01-01T12:00:00Z", "calendar": "proleptic_gregorian"})
    filled = hours.copy()
    filled[::10] = -99
    _time_store(store, "filled", filled, {"units": "hours since 1900-1-1", "_FillValue": -99})
    _time_store(store, "tz", hours.copy(), {"units": "minutes since 2001-06-01 06:30:00+02:00"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(str(store)).load()
    g = zarr.open_group(str(store), mode="r")
    for name in ("hours", "days", "filled", "tz"):
        dec = decoders_for({name: g[name]}, times="datetime64")[name]
        got = dec.decode(g[name][:])
        want = ds[name].values
        assert got.dtype == want.dtype == np.dtype("datetime64[ns]"), name
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64), err_msg=name)
        numeric = decoders_for({name: g[name]})[name]
        assert numeric.time is not None and numeric.time.units == g[name].attrs["units"]
        assert numeric.out_dtype != np.dtype("datetime64[ns]")


def test_time_units_parse_and_errors() -> None:
    tu = TimeUnits.parse("Hours since 1970-01-01", None)
    assert tu is not None and tu.unit == "h" and tu.calendar == "standard"
    assert TimeUnits.parse("degrees_north") is None
    assert TimeUnits.parse(b"days since 2000-01-01", b"noleap").calendar == "noleap"  # type: ignore[union-attr]
    with pytest.raises(CFDecodeError, match=r"calendar 'noleap'.*times='numeric'"):
        CFDecoder.from_attrs({"units": "days since 2000-01-01", "calendar": "noleap"}, "float64", times="datetime64")
    # numeric stays possible for any calendar, units and calendar kept
    dec = CFDecoder.from_attrs({"units": "days since 2000-01-01", "calendar": "360_day"}, "float64")
    assert dec.time is not None and dec.time.calendar == "360_day" and dec.attrs["calendar"] == "360_day"
    with pytest.raises(CFDecodeError, match="months since"):
        decode_times(np.arange(3), "months since 2000-01-01")
    # a reference before the Gregorian reform is a Julian date in the standard calendar (as cftime and
    # xarray read it), a Gregorian one in proleptic_gregorian: two days apart in year 1
    hours = np.array([17_000_000, 17_500_000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = xr.coding.times.decode_cf_datetime(hours, "hours since 0001-01-01", "standard")
    np.testing.assert_array_equal(decode_times(hours, "hours since 0001-01-01", "standard"), want)
    shifted = decode_times(hours, "hours since 0001-01-01", "proleptic_gregorian") - want
    assert (shifted == np.timedelta64(2, "D")).all()
    with pytest.raises(CFDecodeError, match="outside what datetime64"):
        decode_times(np.arange(3), "days since 1500-01-01", "standard")
    with pytest.raises(CFDecodeError, match="outside what datetime64"):
        decode_times(np.array([1e6]), "days since 2000-01-01")
    with pytest.raises(CFDecodeError, match="reference date"):
        decode_times(np.arange(3), "days since yesterday")
    with pytest.raises(CFDecodeError, match="base64"):
        CFDecoder.from_attrs({"_FillValue": "not-base64!"}, "float32")


def test_cf_cost_reports_both() -> None:
    c = cf_cost((8, 128, 128), repeats=3)
    assert c.stored_dtype == "int16" and c.out_dtype == "float64"
    assert c.copy_s > 0 and c.decode_s > 0 and c.ratio > 0
    assert c.to_dict()["decoded_bytes"] == 8 * 128 * 128 * 8


@pytest.mark.parametrize("fmt", [2, 3])
def test_loader_batches_match_xarray_bit_exact(tmp_path: Path, fmt: int) -> None:
    """decode="cf" inside the loader's batch gather: every shuffled row, NaNs included, is xarray's."""
    from zarrloader import ZarrSource, make_loader

    cases = CASES_V3 if fmt == 3 else CASES_V2
    store = tmp_path / f"l{fmt}.zarr"
    for name, (dtype, attrs, fill, fills) in cases.items():
        _write(store, fmt, name, _plant(_values(dtype), fills), attrs, fill)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))
        ds = xr.open_zarr(str(store), zarr_format=fmt, decode_times=False).load()
    src = ZarrSource(store, decode="cf")
    assert set(src.names) == set(cases) and not src.static
    seen = 0
    for batch in make_loader(src, batch_size=40_000, shuffle=True, seed=1, return_index=True, pin_memory=False):
        idx = batch["index"].numpy()
        seen += len(idx)
        for name in cases:
            got, want = batch[name].numpy(), ds[name].values[idx]
            assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name
    assert seen == N


def test_decode_batch_passes_index_and_is_identity_without_decoding(tmp_path: Path) -> None:
    from zarrloader import ZarrSource

    store = tmp_path / "d.zarr"
    _write(store, 3, "t", _plant(_values("float32", 100), [np.float32(-999.0)]), {"missing_value": -999.0}, float("nan"))
    raw = ZarrSource(store)
    batch = raw.read_rows(0, 100)
    assert raw.decode_batch(batch) is batch and (batch["t"] == -999.0).any()
    src = ZarrSource(store, decode="cf")
    index = np.arange(100)
    out = src.decode_batch({**src.read_rows(0, 100), "index": index})
    assert out["index"] is index and np.isnan(out["t"]).sum() == (batch["t"] == -999.0).sum()
