"""The safe destination writer: atomic commit, object-granular resume, refusal to destroy, full disk.
Local folders, a real tmpfs for the full disk, and a real ``rclone serve s3`` for object stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from zl_helpers import BUCKET

from zarrloader.errors import StoreNotFoundError, WriteError
from zarrloader.s3server import S3Server
from zarrloader.staging import (
    JOURNAL,
    MARKER,
    PARTIAL_SUFFIX,
    DestinationExistsError,
    DiskFullError,
    StagedWriter,
    StagingMismatchError,
    check_not_inside,
    metadata_order,
)

JOB = {"src": "test", "n": 1}
ROOT_DOC = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()


def _write_store(dst: str, n: int = 4, options: object = None, **kw: object) -> StagedWriter:
    w = StagedWriter(dst, options, job=JOB, **kw)  # type: ignore[arg-type]
    with w:
        for i in range(n):
            w.put(f"a/c/{i}", bytes([i]) * 100)
            w.mark(f"a@{i}")
        w.set_metadata("a/zarr.json", b'{"zarr_format": 3, "node_type": "array"}')
        w.set_metadata("zarr.json", ROOT_DOC)
        w.commit()
    return w


def test_local_commit_is_atomic_and_clean(tmp_path: Path) -> None:
    dst = tmp_path / "out.zarr"
    w = StagedWriter(str(dst), job=JOB).open()
    w.put("a/c/0", b"x" * 10)
    assert not dst.exists() and (tmp_path / ("out.zarr" + PARTIAL_SUFFIX) / "a" / "c" / "0").exists()
    w.set_metadata("zarr.json", ROOT_DOC)
    w.commit()
    w.close()
    assert sorted(p.name for p in dst.iterdir()) == ["a", "zarr.json"]
    assert not (tmp_path / ("out.zarr" + PARTIAL_SUFFIX)).exists()
    assert w.stats.objects_written == 1 and w.stats.bytes_written == 10
    with pytest.raises(ValueError, match="metadata document"):
        StagedWriter(str(tmp_path / "o2"), job=JOB).open().put("zarr.json", b"{}")


def test_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DestinationExistsError, match="is a file"):
        StagedWriter(str(tmp_path / "notes.txt"), job=JOB, overwrite=True).open()
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "paper.tex").write_text("precious")
    (folder / "figs").mkdir()
    for ow in (False, True):
        with pytest.raises(DestinationExistsError, match=r"not a Zarr store.*2 entries: figs/, paper.tex"):
            StagedWriter(str(folder), job=JOB, overwrite=ow).open()
    assert (folder / "paper.tex").read_text() == "precious" and (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / ("results" + PARTIAL_SUFFIX)).exists()
    # a staging folder someone else made is not ours to touch
    (tmp_path / ("out.zarr" + PARTIAL_SUFFIX)).mkdir()
    (tmp_path / ("out.zarr" + PARTIAL_SUFFIX) / "keep.txt").write_text("x")
    with pytest.raises(DestinationExistsError, match="not left by zarrloader"):
        StagedWriter(str(tmp_path / "out.zarr"), job=JOB, restart=True).open()
    assert (tmp_path / ("out.zarr" + PARTIAL_SUFFIX) / "keep.txt").exists()


def test_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _write_store(str(tmp_path / "empty"))
    assert (tmp_path / "empty" / "zarr.json").exists()


def test_overwrite_replaces_only_a_zarr_store_and_only_at_commit(tmp_path: Path) -> None:
    dst = tmp_path / "s.zarr"
    sibling = tmp_path / "s.zarr2"
    sibling.mkdir()
    (sibling / "zarr.json").write_bytes(ROOT_DOC)
    _write_store(str(dst), n=2)
    with pytest.raises(DestinationExistsError, match=r"already exists.*--overwrite"):
        StagedWriter(str(dst), job=JOB).open()
    w = StagedWriter(str(dst), job={"src": "other"}, overwrite=True).open()
    w.put("b/c/0", b"new")
    assert (dst / "a" / "c" / "0").exists()  # the old store stays readable until the commit
    w.set_metadata("zarr.json", ROOT_DOC)
    w.commit()
    assert (dst / "b" / "c" / "0").read_bytes() == b"new" and not (dst / "a").exists()
    assert (sibling / "zarr.json").exists() and not list(tmp_path.glob("*zarrloader-old*"))


def test_resume_keeps_objects_and_refuses_other_jobs(tmp_path: Path) -> None:
    dst = str(tmp_path / "r.zarr")
    w = StagedWriter(dst, job=JOB).open()
    for i in range(3):
        w.put(f"a/c/{i}", b"d" * 50)
    w.mark("a@0")
    w.close()  # interrupted: no commit
    staging = tmp_path / ("r.zarr" + PARTIAL_SUFFIX)
    with open(staging / JOURNAL, "a") as f:
        f.write('{"o": "a/c/9", "n"')  # a line cut off by the interrupt
    (staging / "a" / "c" / "1").write_bytes(b"short")  # lost / damaged after journalling: redone
    w2 = StagedWriter(dst, job=JOB).open()
    assert w2.resumed and w2.unit_done("a@0") and w2.is_done("a/c/0") and w2.is_done("a/c/2")
    assert not w2.is_done("a/c/1") and not w2.is_done("a/c/9")
    assert w2.put("a/c/0", b"d" * 50) is False and w2.put("a/c/1", b"d" * 50) is True
    w2.close()
    with pytest.raises(StagingMismatchError, match=r"other parameters.*--restart"):
        StagedWriter(dst, job={"src": "else"}).open()
    w3 = StagedWriter(dst, job={"src": "else"}, restart=True).open()
    assert not w3.resumed and not w3.is_done("a/c/0") and not (staging / "a").exists()
    w3.close()


_KILLED = textwrap.dedent("""
    import sys, time
    from zarrloader.staging import StagedWriter
    w = StagedWriter(sys.argv[1], job={"src": "kill"}).open()
    for i in range(100000):
        w.put(f"a/c/{i}", b"x" * 4096)
        if i == 20:
            print("ready", flush=True)
""")


def test_sigkill_keeps_every_journalled_object(tmp_path: Path) -> None:
    dst = str(tmp_path / "k.zarr")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, dst], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    staging = tmp_path / ("k.zarr" + PARTIAL_SUFFIX)
    files = {p.name for p in (staging / "a" / "c").iterdir() if ".tmp-" not in p.name}
    w = StagedWriter(dst, job={"src": "kill"}).open()
    done = {k.rsplit("/", 1)[-1] for k in w.done_keys}
    # at most the object being written when the kill came is not journalled
    assert len(done) >= 21 and files - done <= {str(max(int(n) for n in files))}
    assert done <= files
    assert not [p for p in (staging / "a" / "c").iterdir() if ".tmp-" in p.name]  # stale temporaries gone
    w.close()


def test_overlap_and_order() -> None:
    with pytest.raises(WriteError, match="overlaps the source"):
        check_not_inside("/data/a.zarr", "/data/a.zarr/sub")
    with pytest.raises(WriteError, match="overlaps"):
        check_not_inside("s3://b/x", "s3://b/x")
    check_not_inside("/data/a.zarr", "/data/a.zarr2")
    order = metadata_order(["zarr.json", "a/zarr.json", "g/b/zarr.json", "g/zarr.json", ".zattrs"])
    assert order[-1] == "zarr.json" and order.index("g/b/zarr.json") < order.index("g/zarr.json")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs (root can mount one here); skipped with the reason where it cannot."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_names_dst_and_bytes_needed(small_disk: Path) -> None:
    dst = str(small_disk / "full.zarr")
    left = {"n": 40 * (1 << 20)}
    w = StagedWriter(dst, job=JOB, remaining_bytes=lambda: left["n"]).open()
    with pytest.raises(DiskFullError) as info:
        for i in range(100):
            w.put(f"a/c/{i}", os.urandom(1 << 20))
            left["n"] -= 1 << 20
    msg = str(info.value)
    assert dst in msg and "MiB still to write" in msg and "rerun the same command" in msg
    assert info.value.needed_bytes is not None and info.value.needed_bytes > 0
    w.close()
    staging = small_disk / ("full.zarr" + PARTIAL_SUFFIX)
    assert not [p for p in staging.rglob("*") if ".tmp-" in p.name]  # the cut-off object is removed
    w2 = StagedWriter(dst, job=JOB).open()
    assert len(w2.done_keys) >= 5  # what fitted is kept for the rerun
    w2.close()


# -- object store ------------------------------------------------------------------------------------
def _objects(server: S3Server, prefix: str) -> set[str]:
    base = server.root / BUCKET / prefix
    return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()} if base.exists() else set()


def test_s3_commit_metadata_last_and_resume(scratch_s3: S3Server) -> None:
    url = f"s3://{BUCKET}/ds.zarr"
    opts = scratch_s3.storage_options()
    w = StagedWriter(url, opts, job=JOB).open()
    w.put("a/c/0", b"x" * 10)
    w.put("a/c/1", b"y" * 10)
    w.mark("a@0")
    w.close()  # flushes the unit journal
    assert "zarr.json" not in _objects(scratch_s3, "ds.zarr") and MARKER in _objects(scratch_s3, "ds.zarr")
    w2 = StagedWriter(url, opts, job=JOB).open()
    assert w2.resumed and w2.is_done("a/c/0") and w2.is_done("a/c/1") and w2.unit_done("a@0")
    assert w2.put("a/c/0", b"x" * 10) is False
    w2.set_metadata("zarr.json", ROOT_DOC)
    w2.commit()
    assert _objects(scratch_s3, "ds.zarr") == {"a/c/0", "a/c/1", "zarr.json"}
    with pytest.raises(DestinationExistsError, match="already exists"):
        StagedWriter(url, opts, job=JOB).open()


def test_s3_refuses_foreign_prefix_and_overwrites_store(scratch_s3: S3Server) -> None:
    opts = scratch_s3.storage_options()
    (scratch_s3.root / BUCKET / "mine").mkdir()
    (scratch_s3.root / BUCKET / "mine" / "thesis.pdf").write_bytes(b"pdf")
    (scratch_s3.root / BUCKET / "mine2").mkdir()
    (scratch_s3.root / BUCKET / "mine2" / "zarr.json").write_bytes(ROOT_DOC)
    for ow in (False, True):
        with pytest.raises(DestinationExistsError, match=r"holds 1 entry: thesis.pdf.*not a Zarr store"):
            StagedWriter(f"s3://{BUCKET}/mine", opts, job=JOB, overwrite=ow).open()
    assert (scratch_s3.root / BUCKET / "mine" / "thesis.pdf").exists()
    _write_store(f"s3://{BUCKET}/old.zarr", n=3, options=opts)
    _write_store(f"s3://{BUCKET}/old.zarr", n=1, options=opts, overwrite=True)
    assert _objects(scratch_s3, "old.zarr") == {"a/c/0", "a/zarr.json", "zarr.json"}
    assert (scratch_s3.root / BUCKET / "mine2" / "zarr.json").exists()  # a sibling prefix is untouched
    with pytest.raises(StoreNotFoundError, match="bucket 'nobucket' does not exist"):
        StagedWriter("s3://nobucket/x.zarr", opts, job=JOB).open()
