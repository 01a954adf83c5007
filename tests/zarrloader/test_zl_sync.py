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
from zarrloader.subset import MANIFEST, PARTIAL_SUFFIX, parse_select, sync_subset


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
    assert r.objects_total == r.copied_raw + r.reencoded
    # metadata kept the format and codecs, only the length changed
    s_info, d_info = ZarrSource(datasets.url(name), storage_options=datasets.options).infos[0], ZarrSource(str(dst)).infos[0]
    assert (d_info.zarr_format, d_info.chunks, d_info.shards, d_info.codecs) == (s_info.zarr_format, s_info.chunks, s_info.shards, s_info.codecs)
    assert d_info.shape == (b - a, *s_info.shape[1:])


def test_aligned_selection_copies_only_touched_objects_byte_for_byte(datasets: Datasets, tmp_path: Path) -> None:
    dst = tmp_path / "out.zarr"
    r = sync_subset(datasets.url("raw.zarr"), str(dst), "32:80", arrays=["images"], src_options=datasets.options,
                    progress=False)
    assert r.copied_raw == 3 and r.reencoded == 0  # chunk rows 2, 3, 4 of 16 rows each
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
    assert len(json.loads((staged / MANIFEST).read_text())["done"]) == 3
    r = sync_subset(datasets.url("v3.zarr"), str(dst), "0:160", src_options=datasets.options, progress=False)
    assert r.skipped_done == 3 and r.copied_raw + r.reencoded == r.objects_total - 3
    np.testing.assert_array_equal(read_all(str(dst))["images"], images()[:160])
    with pytest.raises(ValueError):
        sync_subset(datasets.url("v3.zarr"), str(tmp_path / "x.zarr"), "5:5", src_options=datasets.options)


def test_failed_sync_from_corrupt_source_leaves_no_store(datasets: Datasets, tmp_path: Path) -> None:
    dst = tmp_path / "bad.zarr"
    with pytest.raises(ChunkReadError, match="images/c/3/0/0/0"):
        sync_subset(datasets.url("corrupt.zarr"), str(dst), "1:100", src_options=datasets.options, progress=False)
    assert not dst.exists()


def test_parse_select() -> None:
    assert parse_select("0:1000", 50) == (0, 50)
    assert parse_select("-10:", 50) == (40, 50)
    assert parse_select(None, 7) == (0, 7)
    for bad in ("1:2:3", "a:b", "9:3"):
        with pytest.raises(ValueError):
            parse_select(bad, 50)
