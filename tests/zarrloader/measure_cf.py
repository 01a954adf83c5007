"""Measure what ``decode="cf"`` costs inside the loader against raw (stored values), same run, same
store, interleaved epochs; plus the decode kernel alone against a plain copy (``cf.cf_cost``).

    .venv/bin/python tests/zarrloader/measure_cf.py [--workdir DIR] [--repeats 5]

Not a test (no assertions on speed). The store is written by xarray: int16 ``tas`` packed with
scale_factor/add_offset and a _FillValue (decoded to float64, as xarray does), float32 ``pr`` with a
_FillValue, int64 hours for ``time``. Also checks every decoded batch against xarray for one epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def make_store(path: Path, nt: int) -> None:
    import pandas as pd
    import xarray as xr

    rng = np.random.default_rng(0)
    tas = (rng.standard_normal((nt, 90, 180)) * 10 + 280).astype("float32")
    tas[rng.random(tas.shape) < 0.01] = np.nan
    pr = rng.random((nt, 90, 180)).astype("float32")
    pr[pr < 0.05] = np.nan
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), tas), "pr": (("time", "lat", "lon"), pr)},
                    coords={"time": pd.date_range("2000-01-01", periods=nt, freq="h"),
                            "lat": np.linspace(-89, 89, 90), "lon": np.linspace(0, 358, 180)})
    ds["tas"].encoding.update(dtype="int16", scale_factor=0.01, add_offset=280.0, _FillValue=-32767, chunks=(64, 90, 180))
    ds["pr"].encoding.update(_FillValue=1e20, chunks=(64, 90, 180))
    ds["time"].encoding.update(units="hours since 1970-01-01", dtype="int64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(str(path), zarr_format=3, consolidated=True, mode="w")


def epoch_seconds(path: Path, decode: str | None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds, all threads) of one shuffled epoch. CPU per epoch is the
    steadier figure on a loaded host: it does not count time spent waiting for a core."""
    from zarrloader import ZarrSource, make_loader

    ld = make_loader(ZarrSource(path, decode=decode), batch_size=64, shuffle=True, seed=1, concurrency=4,
                     pin_memory=False)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in ld:
        pass
    return time.perf_counter() - t0, time.process_time() - c0


def check(path: Path) -> int:
    import xarray as xr

    from zarrloader import ZarrSource, make_loader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(str(path), decode_times=False).load()
    rows = 0
    for b in make_loader(ZarrSource(path, decode="cf"), batch_size=64, shuffle=True, return_index=True, pin_memory=False):
        idx = b["index"].numpy()
        for k in ("tas", "pr", "time"):
            want = ds[k].values[idx]
            assert b[k].numpy().dtype == want.dtype and np.array_equal(b[k].numpy(), want, equal_nan=True), k
        rows += len(idx)
    return rows


def main() -> None:
    from zarrloader.cf import cf_cost

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--times", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ns = ap.parse_args()
    work = ns.workdir or Path(tempfile.mkdtemp(prefix="measure_cf_"))
    path = work / "cf.zarr"
    if not path.exists():
        make_store(path, ns.times)
    stored_mib = ns.times * 90 * 180 * (2 + 4 + 0) / 2**20
    epoch_seconds(path, None)  # warm the page cache
    raw, cf = [], []
    for _ in range(ns.repeats):
        raw.append(epoch_seconds(path, None))
        cf.append(epoch_seconds(path, "cf"))
    r, c = statistics.median(x[0] for x in raw), statistics.median(x[0] for x in cf)
    rc, cc = statistics.median(x[1] for x in raw), statistics.median(x[1] for x in cf)
    print(json.dumps({"what": "loader epoch, shuffled, batch 64, local store", "stored_mib": round(stored_mib, 1),
                      "raw_s": round(r, 3), "cf_s": round(c, 3), "ratio_wall_cf_over_raw": round(c / r, 3),
                      "raw_cpu_s": round(rc, 3), "cf_cpu_s": round(cc, 3), "ratio_cpu_cf_over_raw": round(cc / rc, 3),
                      "raw_mib_s": round(stored_mib / r, 1), "cf_mib_s": round(stored_mib / c, 1),
                      "runs_raw": [[round(a, 2), round(b, 2)] for a, b in raw],
                      "runs_cf": [[round(a, 2), round(b, 2)] for a, b in cf]}))
    k = cf_cost((64, 90, 180), "int16", repeats=15)
    print(json.dumps({"what": "decode kernel vs plain copy (int16 packed + fill -> float64)", **k.to_dict()}))
    print(json.dumps({"check": "decoded rows equal xarray.open_zarr rows", "rows": check(path)}))


if __name__ == "__main__":
    main()
