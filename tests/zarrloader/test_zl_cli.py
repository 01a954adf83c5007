"""The documented snippets and the command line, run for real."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore
from zl_helpers import Datasets, images, labels

from zarrloader.advice import CostModel, inspect_store
from zarrloader.cli import main
from zarrloader.s3server import S3Server

DOC = Path(__file__).resolve().parents[2] / "README.md"  # the article section lives there


def snippet(name: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"<!-- {name}:start -->\s*```python\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert m, f"snippet {name} missing from {DOC}"
    return m.group(1)


@pytest.fixture()
def article_bucket(scratch_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """s3://my-bucket/dataset.zarr on a real S3 endpoint, reachable through the standard AWS_* variables."""
    scratch_s3.make_bucket("my-bucket")
    store = FsspecStore.from_url("s3://my-bucket/dataset.zarr", storage_options=scratch_s3.storage_options(), read_only=False)
    g = zarr.open_group(store, mode="w")
    g.create_array("images", shape=(203, 3, 12, 10), chunks=(16, 3, 12, 10), dtype="uint16")[:] = images()
    g.create_array("labels", shape=(203,), chunks=(20,), dtype="int64")[:] = labels()
    for k, v in scratch_s3.env().items():
        monkeypatch.setenv(k, v)
    return scratch_s3


def test_article_snippet_runs_as_written(article_bucket: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict[str, object] = {}
    exec(compile(snippet("article-snippet"), str(DOC), "exec"), ns)
    np.testing.assert_array_equal(ns["sample"], images()[0])
    np.testing.assert_array_equal(ns["batch"], images()[:64])
    assert "(203, 3, 12, 10) uint16" in capsys.readouterr().out


def test_pipeline_snippet_runs_as_written(article_bucket: S3Server) -> None:
    code = snippet("pipeline-snippet").replace("    images, labels = batch", "    seen.append(batch)\n    images, labels = batch")
    ns: dict[str, object] = {"seen": []}
    exec(compile(code, str(DOC), "exec"), ns)
    batches = ns["seen"]
    got_labels = np.concatenate([b["labels"].numpy() for b in batches])  # type: ignore[union-attr]
    assert sorted(got_labels.tolist()) == labels().tolist()


def test_inspect_numbers_and_advice(datasets: Datasets) -> None:
    rep = inspect_store(datasets.url("zstd.zarr"), datasets.options,
                        model=CostModel(price_per_1000_gets=2.0, target_mib_s=100, latency_s=0.01, per_stream_mib_s=50))
    img = next(a for a in rep.arrays if a.info.name == "images")
    assert img.info.chunks == (16, 3, 12, 10) and img.stored_objects == 13 and img.info.n_objects == 13
    assert img.compressed_chunk_bytes is not None and img.compressed_chunk_bytes < img.uncompressed_chunk_bytes
    assert img.gets_per_epoch == 13 and img.cost_per_epoch == pytest.approx(13 / 1000 * 2.0)
    # Little's law: rate x (latency + transfer), images get their share of the bandwidth per sample
    wire = img.compressed_chunk_bytes
    share = (3 * 12 * 10 * 2) / (3 * 12 * 10 * 2 + 8)
    expected = 100 * share * 2**20 / wire * (0.01 + wire / (50 * 2**20))
    assert img.in_flight_needed == pytest.approx(expected)
    assert any("small enough not to matter" in t for t in img.advice)  # 146 KB in all
    sh = inspect_store(datasets.url("sharded.zarr"), datasets.options, model=CostModel(latency_s=0.01))
    sh_img = next(a for a in sh.arrays if a.info.name == "images")
    assert sh_img.gets_per_epoch == 204 + 13 * 4  # inner chunks + one shard index read per chunk row


def test_inspect_flags_small_and_large_chunks(tmp_path: Path) -> None:
    for name, chunk_rows, expect in (("small", 4, "chunks are small"), ("ok", 64, "inside the 1-16 MB sweet spot"),
                                     ("large", 512, "chunks are large")):
        z = zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=(1024, 64, 128), chunks=(chunk_rows, 64, 128),
                              dtype="float32", compressors=None, fill_value=0)
        z[:chunk_rows] = 1.0  # one stored object is enough for the size sample
        rep = inspect_store(str(tmp_path / f"{name}.zarr"))
        assert any(expect in t for t in rep.arrays[0].advice), rep.arrays[0].advice
        assert rep.arrays[0].missing_objects > 0 and not rep.latency_measured


def test_cli_inspect_and_sync(datasets: Datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in datasets.server.env().items():
        monkeypatch.setenv(k, v)
    assert main(["inspect", datasets.url("v2.zarr"), "--json", "--latency-ms", "5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [a["info"]["name"] for a in doc["arrays"]] == ["images", "labels"]
    assert main(["inspect", datasets.url("sharded.zarr")]) == 0
    out = capsys.readouterr().out
    assert "shards (16, 3, 12, 10)" in out and "Little's law" in out
    dst = tmp_path / "s.zarr"
    assert main(["sync", datasets.url("v3.zarr"), str(dst), "--select", "0:64", "--no-progress"]) == 0
    assert "0:64" in capsys.readouterr().out
    assert zarr.open_group(str(dst), mode="r")["labels"].shape == (64,)
    assert main(["sync", datasets.url("v3.zarr"), str(dst), "--select", "0:64"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["inspect", "s3://data/absent.zarr"]) == 2
    assert "no Zarr array or group" in capsys.readouterr().err


def test_cli_bench_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny bench run: every reader, JSON contract, plot file. (Ratios are printed, not asserted.)"""
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", "--chunk-sizes", "256k", "1m", "--total", "4m", "--repeats", "3", "--naive-seconds", "0.3", "--json", str(out_json),
               "--plot", str(out_png)])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    readers = {(r["reader"], r["chunk_bytes"]) for r in doc["results"]}
    assert readers == {(r, c) for r in ("raw", "naive", "zarr_default", "loader_sequential", "loader_shuffled")
                       for c in (256 * 1024, 1 << 20)}
    for r in doc["results"]:
        assert r["mib_per_s"] > 0 and r["bytes"] > 0
        if r["reader"].startswith("loader"):
            assert r["bytes"] == 4 << 20, "the loader did not deliver every byte"
        if r["reader"] != "naive":  # every repeat kept; the reported figure is their median
            runs = sorted(r["runs_mib_per_s"])
            assert len(runs) == 3 and r["mib_per_s"] == pytest.approx(runs[1], rel=1e-6)
    assert out_png.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "loader_shuffled" in table and "x raw" in table


def test_cli_bench_plot_without_matplotlib_fails_before_measuring(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from zarrloader import bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: pytest.fail("measured before checking --plot"))
    assert main(["bench", "--quick", "--plot", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "--json" in err


def test_run_quick_benchmark_contract() -> None:
    """The function the image smoke suite calls: keys and consistency, not speed."""
    from zarrloader.bench import run_quick_benchmark

    r = run_quick_benchmark(total_mib=4, chunk_mib=1, concurrency=4, repeats=1)
    assert {"raw_mib_per_s", "loader_mib_per_s", "ratio", "reader", "chunk_bytes", "total_bytes"} <= set(r)
    assert r["reader"] == "loader_shuffled" and r["chunk_bytes"] == 1 << 20 and r["total_bytes"] == 4 << 20
    assert r["ratio"] == pytest.approx(r["loader_mib_per_s"] / r["raw_mib_per_s"])
    assert r["server"].startswith("embedded rclone serve s3")


def test_cli_bench_unwritable_outputs_fail_before_measuring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--json/--plot into a folder that is missing or not writable: a clear error at once, not a
    traceback after minutes of measuring (the image runs as uid 1000; mounted folders often are not)."""
    import os
    import subprocess
    import sys

    from zarrloader import bench

    monkeypatch.setattr(bench, "run_benchmark", lambda *a, **k: pytest.fail("measured before checking outputs"))
    assert main(["bench", "--quick", "--json", str(tmp_path / "no" / "such" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["bench", "--quick", "--plot", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root may write anywhere: without its permission-override capabilities, the mode bits hold for it
    # too (the permission is real, not mocked)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    code = ("import sys; from zarrloader import bench, cli; bench.run_benchmark = lambda *a, **k: sys.exit(99); "
            f"sys.exit(cli.main(['bench', '--quick', '--json', {str(locked / 'r.json')!r}]))")
    r = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "permission denied" in r.stderr and "Fix:" in r.stderr
