"""The real ``zarrloader`` command under faults and bad input: each case ends with exit code 2 (or
130 interrupted), one message naming cause and fix, no traceback unless ``--debug``, and no
"Unclosed client session" at exit. Real ``rclone serve s3``, SIGSTOP, a closed port, /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import BUCKET

from zarrloader.backends import Deadline
from zarrloader.s3server import S3Server

FAST = ["--connect-timeout", "1", "--read-timeout", "2", "--retries", "1"]
BOUND = Deadline(1.0, 2.0, 1).seconds
STARTUP = 20.0  # interpreter + zarr/obstore imports on a loaded 2-core machine


def zl(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zarrloader.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_clean_error(r: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    for n in needles:
        assert n in r.stderr, f"{n!r} missing from: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert "Unclosed" not in r.stderr, r.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_inspect_and_sync_on_a_frozen_server_exit_2_within_the_bound(s3: S3Server, tmp_path: Path,
                                                                     backend: str) -> None:
    assert s3.process is not None
    os.kill(s3.process.pid, signal.SIGSTOP)
    try:
        for args in (["inspect", f"s3://{BUCKET}/zstd.zarr", *FAST, "--backend", backend],
                     ["sync", f"s3://{BUCKET}/zstd.zarr", str(tmp_path / "o.zarr"), "--no-progress",
                      *[a.replace("--", "--src-", 1) for a in FAST], "--src-backend", backend]):
            t0 = time.monotonic()
            r = zl(*args, env=s3.env())
            assert time.monotonic() - t0 <= BOUND + STARTUP
            assert_clean_error(r, "cannot reach storage", s3.endpoint_url, "read_timeout=2 s", "Fix:")
    finally:
        os.kill(s3.process.pid, signal.SIGCONT)


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_unreachable_endpoint_is_one_clear_line(backend: str) -> None:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1"}
    r = zl("inspect", "s3://b/x.zarr", "--endpoint-url", f"http://127.0.0.1:{closed_port()}", *FAST,
           "--backend", backend, env=env)
    assert_clean_error(r, "cannot reach storage", "Fix:")
    assert "different Context" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_bucket_unwritable_and_virtual_destinations(s3: S3Server, tmp_path: Path) -> None:
    src = str(tmp_path / "s3" / BUCKET / "plain.zarr")
    assert_clean_error(zl("sync", src, "s3://nobucket/o.zarr", "--no-progress", env=s3.env()),
                       "bucket 'nobucket' does not exist", "Fix:")
    assert_clean_error(zl("sync", "s3://nobucket/x.zarr", str(tmp_path / "o.zarr"), env=s3.env()),
                       "bucket 'nobucket' does not exist", "Fix:")
    assert_clean_error(zl("sync", src, "/proc/x.zarr"), "proc filesystem", "Fix:")
    assert_clean_error(zl("sync", src, "/sys/x.zarr"), "sysfs filesystem", "Fix:")
    (tmp_path / "afile").write_text("x")
    assert_clean_error(zl("sync", src, str(tmp_path / "afile" / "o.zarr")), "is a file, not a folder", "Fix:")
    assert_clean_error(zl("sync", src, src + "/inner.zarr"), "overlaps the source", "Fix:")
    if os.geteuid() == 0 and subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        r = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
                            "zarrloader.cli", "sync", src, str(locked / "o.zarr")], capture_output=True, text=True,
                           timeout=120)
        assert_clean_error(r, "permission denied", "Fix:")


def test_bad_arguments_are_refused_not_clamped(s3: S3Server, tmp_path: Path) -> None:
    src = str(tmp_path / "s3" / BUCKET / "plain.zarr")  # 400 samples
    assert_clean_error(zl("sync", src, str(tmp_path / "o.zarr"), "--select", "0:99999"),
                       "outside the 400 samples", "Fix: use e.g. --select 0:400")
    assert not (tmp_path / "o.zarr").exists()
    for flag, value in (("--concurrency", "0"), ("--src-retries", "-1"), ("--src-read-timeout", "0")):
        r = zl("sync", src, str(tmp_path / "o.zarr"), flag, value)
        assert_clean_error(r, flag)
    for flag, value in (("--epochs", "0"), ("--target-mib-s", "0"), ("--latency-ms", "-5")):
        assert_clean_error(zl("inspect", src, flag, value), flag)


def test_debug_shows_the_traceback_and_exit_codes_are_documented(tmp_path: Path) -> None:
    r = zl("sync", str(tmp_path / "absent.zarr"), str(tmp_path / "o.zarr"))
    assert_clean_error(r, "no Zarr array or group", "Fix:")
    r = zl("--debug", "sync", str(tmp_path / "absent.zarr"), str(tmp_path / "o.zarr"))
    assert r.returncode == 2 and "Traceback" in r.stderr
    r = zl("sync", str(tmp_path / "absent.zarr"), str(tmp_path / "o.zarr"), "--debug")  # anywhere on the line
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert "130 interrupted" in zl("--help").stdout


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_s3_commands_exit_without_unclosed_session_noise(s3: S3Server, tmp_path: Path, backend: str) -> None:
    env = {**s3.env(), "PYTHONWARNINGS": "always"}
    r = zl("inspect", f"s3://{BUCKET}/zstd.zarr", "--backend", backend, env=env)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "Unclosed" not in r.stderr, r.stderr
    r = zl("sync", f"s3://{BUCKET}/zstd.zarr", f"s3://{BUCKET}/copy-{backend}.zarr", "--select", "0:40",
           "--no-progress", "--src-backend", backend, "--dst-backend", backend, env=env)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "Unclosed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "s3" / BUCKET / f"copy-{backend}.zarr" / "zarr.json").is_file()
