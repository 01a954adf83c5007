"""Measure ``zarrloader convert`` against ``xarray.open_dataset(SRC).to_zarr(DST)`` on the same NetCDF
file, in the same run, each in its own process under ``/usr/bin/time -v`` (wall time, peak RSS).

    .venv/bin/python tests/zarrloader/measure_convert.py [--workdir DIR] [--times 1000]

Not a test (no assertions on speed); prints one JSON line per tool and checks both outputs read
back equal to the source on a few rows. Writes only inside --workdir (a new temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_netcdf(path: Path, nt: int) -> None:
    import xarray as xr

    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-89.5, 89.5, 180), np.linspace(0.5, 359.5, 360)
    base = (np.cos(np.deg2rad(lat))[:, None] * 30 + 250).astype("float32") + np.zeros((1, 360), "float32")
    tas = np.empty((nt, 180, 360), "float32")
    pr = np.empty((nt, 180, 360), "float32")
    for t in range(nt):  # smooth fields plus noise, written once
        tas[t] = base + rng.standard_normal((180, 360)).astype("float32")
        pr[t] = rng.gamma(0.5, 2.0, (180, 360)).astype("float32")
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), tas, {"units": "K"}),
                     "pr": (("time", "lat", "lon"), pr, {"units": "mm/day"}),
                     "orog": (("lat", "lon"), rng.random((180, 360)).astype("float32"))},
                    coords={"time": np.arange(nt, dtype="int64"), "lat": lat, "lon": lon})
    ds["time"].attrs["units"] = "hours since 1970-01-01"
    enc = {"tas": {"zlib": False, "chunksizes": (1, 180, 360)},
           "pr": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 300.0, "_FillValue": -32767,
                  "zlib": False, "chunksizes": (1, 180, 360)}}
    ds.to_netcdf(path, engine="netcdf4", unlimited_dims=["time"], encoding=enc)


def timed(cmd: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))  # type: ignore[union-attr]
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", res.stderr).group(1))  # type: ignore[union-attr]
    sys_t = float(re.search(r"System time \(seconds\): ([\d.]+)", res.stderr).group(1))  # type: ignore[union-attr]
    return {"wall_s": wall, "peak_rss_mib": rss / 1024, "cpu_s": user + sys_t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--times", type=int, default=1000)
    ns = ap.parse_args()
    work = ns.workdir or Path(tempfile.mkdtemp(prefix="measure_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "src.nc"
    if not src.exists():
        make_netcdf(src, ns.times)
    size_mib = src.stat().st_size / 2**20
    py = sys.executable
    zl = str(Path(py).with_name("zarrloader"))
    runs = {
        "zarrloader convert": [zl, "convert", str(src), str(work / "zl.zarr"), "--no-progress"],
        "xarray open_dataset().to_zarr()": [py, "-c", "import sys, warnings, xarray as xr; warnings.simplefilter('ignore'); "
                                            "xr.open_dataset(sys.argv[1]).to_zarr(sys.argv[2], zarr_format=3)",
                                            str(src), str(work / "xr.zarr")],
    }
    results = {}
    for name, cmd in runs.items():
        out = work / ("zl.zarr" if "zarrloader" in name else "xr.zarr")
        if out.exists():
            sys.exit(f"{out} exists from an earlier run: pass a new --workdir")
        r = timed(cmd)
        r["mib_s"] = size_mib / r["wall_s"]
        results[name] = r
        print(json.dumps({"tool": name, "src_mib": round(size_mib, 1), **{k: round(v, 2) for k, v in r.items()}}))
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = xr.open_dataset(src)
        for out in ("zl.zarr", "xr.zarr"):
            got = xr.open_zarr(str(work / out))
            for v in ("tas", "pr", "orog"):
                sel = {"time": [0, ns.times // 2, ns.times - 1]} if "time" in ref[v].dims else {}
                a, b = ref[v].isel(sel).values, got[v].isel(sel).values
                assert np.array_equal(a, b, equal_nan=True), (out, v)
    print(json.dumps({"check": "both outputs equal the source on rows 0, mid, last", "workdir": str(os.fspath(work))}))


if __name__ == "__main__":
    main()
