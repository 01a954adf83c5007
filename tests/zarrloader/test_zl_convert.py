"""``convert``: real NetCDF4/HDF5 files written by netCDF4, h5py and xarray -> Zarr v3, checked with
xarray itself: ``xarray.open_zarr(DST)`` equals ``xarray.open_dataset(SRC)`` (and equals xarray's own
``to_zarr`` round trip bit for bit). Also: memory bound on a file far larger than the bound, resume,
atomicity, a real full disk (tmpfs), S3 source and destination on a real rclone server, the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zl_helpers import BUCKET

from zarrloader import convert_cli
from zarrloader.convert import (
    ConvertError,
    UnsupportedVariableError,
    choose_chunks,
    choose_shards,
    convert,
    netcdf_dims,
)
from zarrloader.errors import DatasetLayoutError
from zarrloader.s3server import S3Server
from zarrloader.staging import PARTIAL_SUFFIX, DestinationExistsError, DiskFullError, StagingMismatchError

xr = pytest.importorskip("xarray")
h5py = pytest.importorskip("h5py")
netCDF4 = pytest.importorskip("netCDF4")
h5netcdf = pytest.importorskip("h5netcdf")

MiB = 1 << 20


# -- source files ----------------------------------------------------------------------------------
def make_netcdf(path: Path, nt: int = 50, ny: int = 18, nx: int = 36) -> Path:
    """netCDF4-python: unlimited time, packed int16 with scale/offset and a fill value, compressed and
    contiguous variables, a scalar coordinate, bounds, a dimension without a variable, a group."""
    ds = netCDF4.Dataset(path, "w")
    ds.title = "test"
    ds.version = np.float32(1.5)
    ds.refs = np.array([1, 2, 3], "i4")
    ds.createDimension("time", None)
    ds.createDimension("lat", ny)
    ds.createDimension("lon", nx)
    ds.createDimension("bnds", 2)
    t = ds.createVariable("time", "i4", ("time",))
    t.units = "hours since 1970-01-01 00:00:00"
    t.calendar = "standard"
    t[:] = np.arange(nt) * 6
    lat = ds.createVariable("lat", "f4", ("lat",))
    lat[:] = np.linspace(-85, 85, ny)
    lat.units = "degrees_north"
    lon = ds.createVariable("lon", "f8", ("lon",), contiguous=True)
    lon[:] = np.linspace(0, 350, nx)
    pr = ds.createVariable("pr", "f4", ("time", "lat", "lon"), zlib=True, complevel=4, fill_value=np.float32(1e20))
    pr[:] = np.random.default_rng(0).random((nt, ny, nx)).astype("f4")
    pr[0, 0, :5] = np.ma.masked
    pr.units = "kg m-2 s-1"
    tas = ds.createVariable("tas", "i2", ("time", "lat", "lon"), fill_value=np.int16(-32767), chunksizes=(7, 5, nx),
                            zlib=True, shuffle=True)
    tas.scale_factor = np.float32(0.01)
    tas.add_offset = np.float32(273.15)
    tas.coordinates = "height"
    ds.set_auto_maskandscale(False)
    tas[:] = np.random.default_rng(1).integers(-3000, 3000, (nt, ny, nx)).astype("i2")
    tas[1, 1, 1] = -32767
    h = ds.createVariable("height", "f8", ())
    h[()] = 2.0
    orog = ds.createVariable("orog", "f4", ("lat", "lon"))
    orog[:] = 5.0
    tb = ds.createVariable("time_bnds", "f8", ("time", "bnds"))
    tb[:] = np.stack([np.arange(nt), np.arange(nt) + 1], 1)
    lt = ds.createVariable("lat_time", "f4", ("lat", "time"))  # sample dimension on axis 1
    lt[:] = np.arange(ny * nt, dtype="f4").reshape(ny, nt)
    g = ds.createGroup("sub")
    g.note = "inner"
    g.createDimension("x", 7)
    sv = g.createVariable("val", "u1", ("time", "x"), fill_value=np.uint8(255))
    sv[:] = np.arange(nt * 7).reshape(nt, 7) % 200
    ds.close()
    return path


def make_h5(path: Path) -> Path:
    """Plain h5py: no dimension scales (phony dims), big-endian gzip+shuffle, contiguous, strings,
    an empty resizable dataset, nested groups, a scalar."""
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "h5py"
        f.attrs["ints"] = np.arange(3)
        f.create_dataset("images", data=np.arange(40 * 6 * 5, dtype=">u2").reshape(40, 6, 5), chunks=(3, 6, 5),
                         compression="gzip", shuffle=True)
        f.create_dataset("labels", data=np.arange(40, dtype="i8") * 3, fillvalue=-1)
        f.create_dataset("contig", data=np.linspace(0, 1, 30).reshape(6, 5))
        f.create_dataset("names", data=np.array(["a", "bb", "ccc"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("fixed", data=np.array([b"ab", b"cd", b"ef"], dtype="S2"))
        f.create_dataset("grow", shape=(0, 4), maxshape=(None, 4), dtype="f4", chunks=(8, 4))
        g = f.create_group("inner/deep")
        g.attrs["k"] = b"bytes"
        g.create_dataset("x", data=np.ones((40, 2), "f4"))
        g.create_dataset("scalar", data=3.5)
    return path


def make_xarray_file(path: Path, engine: str) -> Path:
    nt = 30
    ds = xr.Dataset(
        {"temp": (("time", "y", "x"), np.random.default_rng(2).normal(280, 5, (nt, 8, 9))),
         "mask": (("y", "x"), np.arange(72).reshape(8, 9) % 2 == 0),
         "station": (("s",), np.array(["alpha", "beta"], dtype=object))},
        coords={"time": np.arange("2000-01-01", nt, dtype="datetime64[D]").astype("datetime64[ns]"),
                "y": np.arange(8.0), "x": np.arange(9.0)},
        attrs={"Conventions": "CF-1.8"})
    ds["temp"].values[0, 0, 0] = np.nan
    enc = {"temp": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0, "_FillValue": -9999,
                    "zlib": True, "chunksizes": (10, 8, 9)},
           "time": {"units": "days since 2000-01-01", "calendar": "proleptic_gregorian"}}
    ds.to_netcdf(path, engine=engine, encoding=enc, unlimited_dims=["time"])
    return path


def _open_src(src: Path, group: str | None, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_dataset(src, group=group, **kw).load()


def _open_dst(dst: Path, group: str | None, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(str(dst), group=group, **kw).load()


def assert_same_as_xarray(src: Path, dst: Path, tmp: Path, groups: tuple[str | None, ...] = (None,),
                          **kw: Any) -> None:
    """Stored values, dims and attributes identical; decoded values identical, except that packed
    variables decode to float64 from zarr (JSON attributes) where netCDF gives float32 -- exactly what
    xarray's own to_zarr round trip gives, which is checked bit for bit."""
    own = tmp / "xarray-own.zarr"
    for g in groups:
        xr.testing.assert_identical(_open_src(src, g, decode_cf=False, **kw), _open_dst(dst, g, decode_cf=False))
        a, b = _open_src(src, g, **kw), _open_dst(dst, g)
        packed = [v for v in a.variables if {"scale_factor", "add_offset"} & set(a[v].encoding)]
        xr.testing.assert_identical(a.drop_vars(packed), b.drop_vars(packed))
        for v in packed:
            np.testing.assert_allclose(b[v].values, a[v].values, rtol=2e-7)
            assert b[v].attrs == a[v].attrs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xr.open_dataset(src, group=g, **kw).to_zarr(str(own), group=g, mode="a", zarr_format=3)
        xr.testing.assert_identical(_open_dst(own, g), b)


# -- chunk choice --------------------------------------------------------------------------------------
def test_choose_chunks_from_target_size() -> None:
    assert choose_chunks((1000, 100, 100), 4, 0, 4 * MiB) == (100, 100, 100)  # 104 rows fit: 10 even chunks
    assert choose_chunks((50, 100), 8, 1, 4 * MiB) == (50, 100)  # the whole array fits
    c = choose_chunks((365, 721, 1440), 8, 0, 4 * MiB)  # one sample (8.3 MB) > target: split lat
    assert c[0] == 1 and c[2] == 1440 and c[1] * 1440 * 8 <= 4 * MiB and c[1] >= 300
    assert choose_chunks((18, 5000), 4, 1, 4096) == (18, 56)  # sample axis 1: 72-byte samples
    assert choose_chunks((), 8, None, MiB) == ()
    assert choose_chunks((0, 10), 4, 0, MiB) == (1, 10)
    assert choose_shards((1000, 100), (10, 100), 4, 0, 16 * 4000) == (160, 100)
    assert choose_shards((25, 100), (10, 100), 4, 0, 1 << 30) == (30, 100)  # capped at the array (whole chunks)


# -- netCDF4 / h5py / xarray files --------------------------------------------------------------------
def test_netcdf4_file(tmp_path: Path) -> None:
    src = make_netcdf(tmp_path / "a.nc")
    dst = tmp_path / "a.zarr"
    r = convert(str(src), str(dst), chunk_mb=0.01, progress=False)
    assert r.sample_dims == {"": "time", "sub": "time"}
    assert r.chunks["pr"][1:] == (18, 36) and r.chunks["pr"][0] < 50  # ~10 KB chunks along time
    assert r.axes["lat_time"] == 1 and r.axes["orog"] is None and r.axes["pr"] == 0  # time on axis 1
    assert r.chunks["orog"] == (18, 36)  # static: whole
    doc = json.loads((dst / "pr" / "zarr.json").read_text())
    assert doc["dimension_names"] == ["time", "lat", "lon"] and "_ARRAY_DIMENSIONS" not in doc["attributes"]
    assert "consolidated_metadata" in json.loads((dst / "zarr.json").read_text())
    assert not (tmp_path / ("a.zarr" + PARTIAL_SUFFIX)).exists()
    assert not (dst / "bnds").exists()  # a dimension without a variable is a name, not an array
    assert_same_as_xarray(src, dst, tmp_path, groups=(None, "sub"))


def test_h5py_file_phony_dims(tmp_path: Path) -> None:
    src = make_h5(tmp_path / "c.h5")
    with h5py.File(src) as f:
        ours = netcdf_dims(f)
    with h5netcdf.File(src, "r", phony_dims="sort") as h:
        def walk(g: Any) -> Iterator[tuple[str, tuple[str, ...]]]:
            for v in g.variables.values():
                yield v.name, v.dimensions
            for sg in g.groups.values():
                yield from walk(sg)
        assert ours == dict(walk(h))
    dst = tmp_path / "c.zarr"
    r = convert(str(src), str(dst), chunk_mb=0.001, progress=False)
    assert zarr.open_array(str(dst / "images")).dtype == np.dtype("uint16")  # big-endian -> native
    assert r.chunks["images"][0] < 40
    assert_same_as_xarray(src, dst, tmp_path, groups=(None, "inner/deep"), engine="h5netcdf", phony_dims="sort")


@pytest.mark.parametrize("engine", ["netcdf4", "h5netcdf"])
def test_xarray_written_file(tmp_path: Path, engine: str) -> None:
    src = make_xarray_file(tmp_path / f"x-{engine}.nc", engine)
    dst = tmp_path / "x.zarr"
    convert(str(src), str(dst), progress=False)
    assert_same_as_xarray(src, dst, tmp_path)
    # packed int16 stays packed in the store; CF decoding is the reader's (decode="cf")
    assert zarr.open_array(str(dst / "temp")).dtype == np.dtype("int16")


@pytest.mark.parametrize(("codec", "shard"), [("blosc", None), ("none", None), ("zstd", 0.05)])
def test_codecs_and_shards(tmp_path: Path, codec: str, shard: float | None) -> None:
    src = make_netcdf(tmp_path / "a.nc", nt=120)
    dst = tmp_path / f"{codec}.zarr"
    r = convert(str(src), str(dst), chunk_mb=0.005, shard_mb=shard, codec=codec, progress=False)
    doc = json.loads((dst / "pr" / "zarr.json").read_text())
    names = [c["name"] for c in doc["codecs"]]
    if shard:
        assert names == ["sharding_indexed"] and r.shards["pr"] is not None
        assert r.shards["pr"][0] > r.chunks["pr"][0]
        inner = [c["name"] for c in doc["codecs"][0]["configuration"]["codecs"]]
        assert inner == ["bytes", "zstd"]
    else:
        assert names == {"blosc": ["bytes", "blosc"], "none": ["bytes"]}[codec]
    assert_same_as_xarray(src, dst, tmp_path, groups=(None, "sub"))


# -- memory bound ---------------------------------------------------------------------------------------
_RSS = textwrap.dedent("""
    import json, os, sys
    import numpy as np, h5py
    from zarrloader.convert import convert
    def status(key):  # this process's own memory (ru_maxrss would include the parent's, kept across exec)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
    def peak(): return status("VmHWM")
    src, dst, bound = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # warm up every import, codec and thread on a tiny file, so the baseline holds the interpreter's own
    with h5py.File(dst + ".warm.h5", "w") as f:
        f.create_dataset("x", data=np.ones((64, 64, 64), "f4"), chunks=(4, 64, 64), compression="gzip")
    convert(dst + ".warm.h5", dst + ".warm.zarr", chunk_mb=1, max_memory=bound, progress=False)
    base = peak()
    try:  # reset the high-water mark to the current RSS (Linux clear_refs 5), so the peak is this run's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS")
    except OSError:
        pass
    r = convert(src, dst, chunk_mb=1, max_memory=bound, progress=False)
    print(json.dumps({"base": base, "peak": peak(), "read": r.bytes_read, "in_flight": r.peak_in_flight}))
""")


@pytest.mark.slow
def test_memory_bound_on_a_file_much_larger_than_the_bound(tmp_path: Path) -> None:
    bound = 16 * MiB
    src = tmp_path / "big.h5"
    n = 1024  # 256 MiB of float32, 16 x the bound
    with h5py.File(src, "w") as f:
        d = f.create_dataset("field", shape=(n, 256, 256), dtype="f4", chunks=(4, 256, 256), compression="gzip",
                             compression_opts=1)
        f.create_dataset("t", data=np.arange(n))
        rng = np.random.default_rng(0)
        for i in range(0, n, 64):
            d[i : i + 64] = (rng.integers(0, 1000, (64, 256, 256)) / 7).astype("f4")
    dst = tmp_path / "big.zarr"
    out = subprocess.run([sys.executable, "-c", _RSS, str(src), str(dst), str(bound)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["read"] == n * 256 * 256 * 4 + n * 8
    assert m["in_flight"] <= bound
    growth = m["peak"] - m["base"]
    assert growth <= bound, f"peak memory grew by {growth / MiB:.1f} MiB, bound {bound / MiB:.0f} MiB"
    z = zarr.open_group(str(dst), mode="r")
    with h5py.File(src) as f:
        np.testing.assert_array_equal(z["field"][1000:1024], f["field"][1000:1024])


# -- resume, atomicity, refusal -----------------------------------------------------------------------
def test_interrupted_convert_resumes(tmp_path: Path) -> None:
    src = make_netcdf(tmp_path / "a.nc", nt=200)
    dst = tmp_path / "r.zarr"
    calls: list[int] = []

    def stop_after_5(done: int, total: int) -> None:
        calls.append(done)
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(src), str(dst), chunk_mb=0.005, concurrency=1, progress=False, on_unit=stop_after_5)
    assert not dst.exists() and (tmp_path / ("r.zarr" + PARTIAL_SUFFIX)).is_dir()
    with pytest.raises(StagingMismatchError, match="other parameters"):
        convert(str(src), str(dst), chunk_mb=0.01, progress=False)
    r = convert(str(src), str(dst), chunk_mb=0.005, progress=False)
    assert r.units_resumed >= 5 and r.units_total > r.units_resumed
    assert_same_as_xarray(src, dst, tmp_path, groups=(None, "sub"))
    with pytest.raises(DestinationExistsError, match="already exists"):
        convert(str(src), str(dst), progress=False)
    convert(str(src), str(dst), chunk_mb=0.02, overwrite=True, progress=False)
    (tmp_path / "again").mkdir()
    assert_same_as_xarray(src, dst, tmp_path / "again", groups=(None, "sub"))


def test_sigint_keeps_objects_and_rerun_resumes(tmp_path: Path) -> None:
    src = tmp_path / "mid.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("v", data=np.random.default_rng(4).random((1024, 64, 64)).astype("f4"), chunks=(8, 64, 64))
    dst = tmp_path / "mid.zarr"
    # 1024 small units, one thread, little read-ahead, slow compression: seconds of work to interrupt
    args = [sys.executable, "-m", "zarrloader.convert_cli", str(src), str(dst), "--chunk-mb", "0.015625",
            "--concurrency", "1", "--level", "19", "--max-memory", "16m", "--no-progress"]
    # SIGINT as a terminal delivers it (a parent started in the background may have it ignored)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = tmp_path / ("mid.zarr" + PARTIAL_SUFFIX) / ".zarrloader-journal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count('"u"') >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "convert finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "resume" in err and "Traceback" not in err
    kept = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    assert 3 <= sum("o" in e for e in kept) < 1024 and not dst.exists()
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "units already done" in r.stdout
    with h5py.File(src) as f:
        np.testing.assert_array_equal(zarr.open_array(str(dst / "v"))[:], f["v"][:])


def test_bad_inputs_are_clear(tmp_path: Path) -> None:
    nc3 = tmp_path / "classic.nc"
    d = netCDF4.Dataset(nc3, "w", format="NETCDF3_CLASSIC")
    d.createDimension("x", 3)
    d.createVariable("v", "f4", ("x",))[:] = 1
    d.close()
    with pytest.raises(ConvertError, match=r"classic NetCDF-3.*nccopy -k nc4"):
        convert(str(nc3), str(tmp_path / "o.zarr"), progress=False)
    with pytest.raises(FileNotFoundError, match="no file at"):
        convert(str(tmp_path / "missing.nc"), str(tmp_path / "o.zarr"), progress=False)
    comp = tmp_path / "compound.h5"
    with h5py.File(comp, "w") as f:
        f.create_dataset("rec", data=np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]))
        f.create_dataset("ok", data=np.arange(3))
    with pytest.raises(UnsupportedVariableError, match=r"compound.*--exclude rec"):
        convert(str(comp), str(tmp_path / "o.zarr"), progress=False)
    convert(str(comp), str(tmp_path / "o.zarr"), exclude=["rec"], progress=False)
    assert sorted(zarr.open_group(str(tmp_path / "o.zarr")).array_keys()) == ["ok"]
    with pytest.raises(ConvertError, match="--exclude names no variable"):
        convert(str(comp), str(tmp_path / "o2.zarr"), exclude=["rec", "nope"], progress=False)
    src = make_netcdf(tmp_path / "a.nc")
    with pytest.raises(DatasetLayoutError, match=r"no variable has a dimension 'depth'.*--sample-dim"):
        convert(str(src), str(tmp_path / "o3.zarr"), sample_dim="depth", progress=False)
    for bad, msg in (({"chunk_mb": 0}, "--chunk-mb"), ({"codec": "lzma"}, "--codec"), ({"level": 99}, "--level"),
                     ({"max_memory": 1000}, "--max-memory"), ({"shard_mb": 1, "chunk_mb": 4}, "--shard")):
        with pytest.raises(ValueError, match=msg):
            convert(str(src), str(tmp_path / "o4.zarr"), progress=False, **bad)
    wide = tmp_path / "wide.h5"
    with h5py.File(wide, "w") as f:
        f.create_dataset("v", shape=(64, 512, 512), dtype="f4", chunks=(1, 512, 512))  # 64 MiB, never written
    with pytest.raises(ConvertError, match=r"Fix: raise --max-memory"):
        convert(str(wide), str(tmp_path / "o5.zarr"), chunk_mb=8, max_memory=16 * MiB, progress=False)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(DestinationExistsError, match=r"notes\.txt"):
        convert(str(src), str(folder), overwrite=True, progress=False)
    assert (folder / "notes.txt").read_text() == "keep"
    with pytest.raises(Exception, match="overlaps the source"):
        convert(str(src), str(src), progress=False)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_netcdf(tmp_path / "a.nc")
    dst = tmp_path / "cli.zarr"
    argv = [str(src), str(dst), "--chunk-mb", "0.01", "--codec", "blosc", "--shard", "--level", "3"]
    assert convert_cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "converted" in out and "sample dims /: time, sub: time" in out
    assert "convert" in err  # the progress bar, on stderr
    assert json.loads((dst / "pr" / "zarr.json").read_text())["codecs"][0]["name"] == "sharding_indexed"
    assert convert_cli.main([str(src), str(dst), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("zarrloader convert: error:") and "--overwrite" in err and "Traceback" not in err
    assert convert_cli.main([str(tmp_path / "nope.nc"), str(tmp_path / "x.zarr"), "--no-progress"]) == 2
    assert "no file at" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "zarrloader.convert_cli", str(src), str(tmp_path / "m.zarr"),
                           "--no-progress", "--max-memory", "64m"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


# -- object storage and a full disk ---------------------------------------------------------------------
def test_s3_source_and_destination(tmp_path: Path, scratch_s3: S3Server) -> None:
    from zarrloader.storage import StorageOptions, filesystem, parse_url

    opts = scratch_s3.storage_options()
    src = make_netcdf(tmp_path / "a.nc", nt=80)
    fs = filesystem(parse_url(f"s3://{BUCKET}/in/a.nc"), StorageOptions.coerce(opts))
    fs.put_file(str(src), f"{BUCKET}/in/a.nc")
    local = tmp_path / "from-s3.zarr"
    convert(f"s3://{BUCKET}/in/a.nc", str(local), chunk_mb=0.01, src_options=opts, progress=False)
    assert_same_as_xarray(src, local, tmp_path, groups=(None, "sub"))
    r = convert(str(src), f"s3://{BUCKET}/out/a.zarr", chunk_mb=0.01, shard_mb=0.05, dst_options=opts,
                progress=False)
    assert r.objects_written > 5
    stored = scratch_s3.root / BUCKET / "out" / "a.zarr"
    assert not (stored / ".zarrloader-partial.json").exists()
    (tmp_path / "s3check").mkdir()
    assert_same_as_xarray(src, stored, tmp_path / "s3check", groups=(None, "sub"))
    with pytest.raises(FileNotFoundError, match="no file at"):
        convert(f"s3://{BUCKET}/in/missing.nc", str(tmp_path / "m.zarr"), src_options=opts, progress=False)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_then_resume(tmp_path: Path, small_disk: Path) -> None:
    src = tmp_path / "noise.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("noise", data=np.random.default_rng(3).integers(0, 255, (256, 256, 256), dtype=np.uint8))
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (12 * MiB))
    dst = small_disk / "n.zarr"
    with pytest.raises(DiskFullError) as info:
        convert(str(src), str(dst), codec="none", chunk_mb=0.5, concurrency=1, progress=False)
    msg = str(info.value)
    assert str(dst) in msg and "MiB still to write" in msg and "rerun the same command" in msg
    assert info.value.needed_bytes and 0 < info.value.needed_bytes <= 16 * MiB
    kept = list((small_disk / ("n.zarr" + PARTIAL_SUFFIX)).rglob("c/*"))
    assert kept and not dst.exists()
    filler.unlink()  # the user frees space, then reruns
    r = convert(str(src), str(dst), codec="none", chunk_mb=0.5, concurrency=1, progress=False)
    assert r.units_resumed > 0
    with h5py.File(src) as f:
        np.testing.assert_array_equal(zarr.open_array(str(dst / "noise"))[:], f["noise"][:])
