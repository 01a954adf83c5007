"""Helpers for the zarrloader tests: real Zarr data written by zarr-python, served by a real ``rclone serve s3`` on loopback.

Datasets are written to the server's root directory *before* the server starts (rclone caches
directory listings), then read over S3 like any bucket.
"""

from __future__ import annotations

import http.server
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from zarrloader.s3server import S3Server

BUCKET = "data"
N = 203  # not a multiple of any chunk length: partial last chunks everywhere


def images(n: int = N) -> np.ndarray:
    """Deterministic content where every sample is recognisable: sample i is filled from i."""
    base = np.arange(n, dtype=np.int64)[:, None, None, None]
    grid = np.arange(3 * 12 * 10, dtype=np.int64).reshape(1, 3, 12, 10)
    return ((base * 7 + grid) % 65521).astype(np.uint16)


def labels(n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 3 + 1


@dataclass(frozen=True)
class Datasets:
    server: S3Server
    root: Path

    def url(self, name: str) -> str:
        return f"s3://{BUCKET}/{name}"

    @property
    def options(self) -> dict[str, object]:
        return self.server.storage_options()

    def path(self, name: str) -> Path:
        return self.root / BUCKET / name


def _group(path: Path, fmt: int, img_chunks: tuple[int, ...], lbl_chunks: tuple[int, ...], *,
           shards: tuple[int, ...] | None = None, compressors: object = "auto", consolidated: bool = False,
           label_len: int = N) -> None:
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    kw = {} if compressors == "auto" else {"compressors": compressors}
    a = g.create_array("images", shape=(N, 3, 12, 10), chunks=img_chunks, shards=shards, dtype="uint16", **kw)
    a[:] = images()
    b = g.create_array("labels", shape=(label_len,), chunks=lbl_chunks, dtype="int64")
    b[:] = labels(label_len)
    if consolidated:
        zarr.consolidate_metadata(str(path))


def write_all(root: Path) -> None:
    base = root / BUCKET
    base.mkdir(parents=True)
    _group(base / "v3.zarr", 3, (16, 3, 12, 10), (20,))
    _group(base / "v2.zarr", 2, (16, 3, 12, 10), (20,))
    _group(base / "v3_consolidated.zarr", 3, (10, 3, 12, 10), (10,), consolidated=True)
    _group(base / "v2_consolidated.zarr", 2, (10, 3, 12, 10), (10,), consolidated=True)
    _group(base / "sharded.zarr", 3, (4, 3, 6, 5), (20,), shards=(16, 3, 12, 10))
    _group(base / "zstd.zarr", 3, (16, 3, 12, 10), (20,), compressors=ZstdCodec(level=3))
    _group(base / "blosc_lz4.zarr", 3, (16, 3, 12, 10), (20,), compressors=BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"))
    _group(base / "gzip.zarr", 3, (16, 3, 12, 10), (20,), compressors=GzipCodec(level=1))
    _group(base / "raw.zarr", 3, (16, 3, 12, 10), (20,), compressors=None)
    _group(base / "misaligned.zarr", 3, (16, 3, 12, 10), (20,), label_len=N - 3)
    # single array, chunk length 1 on axis 0 (image-stack layout) for patch mode
    z = zarr.create_array(str(base / "stack.zarr"), shape=(24, 2, 40, 36), chunks=(1, 2, 16, 16), dtype="float32")
    z[:] = np.arange(24 * 2 * 40 * 36, dtype=np.float32).reshape(24, 2, 40, 36)
    # corrupt copy: chunk 3 of images overwritten with garbage
    _group(base / "corrupt.zarr", 3, (16, 3, 12, 10), (20,), compressors=ZstdCodec(level=3))
    (base / "corrupt.zarr" / "images" / "c" / "3" / "0" / "0" / "0").write_bytes(b"\x00garbage" * 40)
    (root / "other").mkdir()




class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def copy_dataset(datasets: Datasets, name: str, dest_root: Path) -> Path:
    dest = dest_root / name
    shutil.copytree(datasets.path(name), dest)
    return dest
