"""The embedded ``rclone serve s3``: what its clients need to never hang on it (``zarrloader.loopback_puts``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import s3fs
from zl_helpers import BUCKET

from zarrloader.s3server import S3Server, S3ServerError, start_s3_server


def _put(server: S3Server, key: str, body: bytes) -> dict[str, object]:
    """One s3fs PUT in a thread, waited on for 30 s: a hang fails the test instead of stalling it."""
    fs = s3fs.S3FileSystem(**server.storage_options(), skip_instance_cache=True)
    out: dict[str, object] = {}

    def put() -> None:
        try:
            fs.pipe(f"{BUCKET}/{key}", body)
            out["result"] = "stored"
        except Exception as exc:  # what s3fs raised is the outcome under test
            out["result"] = exc

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"PUT {key!r} got no answer within 30 s (client and rclone waiting on each other)"
    return out


def test_a_put_rclone_refuses_before_reading_its_body_fails_at_once(scratch_s3: S3Server) -> None:
    """rclone refuses key ``a/../b`` before reading the body, as it does the loser of two PUTs racing
    to make the same new folder (a zarr write of several chunks at once). With botocore's
    ``Expect: 100-continue`` that PUT hung for ever; sent at once, the refusal comes back."""
    out = _put(scratch_s3, "a/../b", b"x" * 2000)
    assert isinstance(out["result"], OSError) and "unsupported characters" in str(out["result"]), out
    assert _put(scratch_s3, "a/b", b"x" * 2000)["result"] == "stored"  # the server still serves


def test_the_fsspec_backend_puts_to_a_loopback_server_at_once_in_a_process_of_its_own(scratch_s3: S3Server) -> None:
    """``zarrloader sync`` writing with the fsspec backend, in a process that never started the
    embedded server, gets the same: the backend's refused PUT is rclone's refusal, not the backend's
    deadline (a ``StorageUnavailableError``, after the small deadline set here so that a regression
    fails in seconds)."""
    code = textwrap.dedent(f"""
        import time
        from zarrloader import StorageOptions
        from zarrloader.backends.fsspec import FsspecBackend
        from zarrloader.storage import parse_url
        backend = FsspecBackend(parse_url("s3://{BUCKET}/x.zarr"), StorageOptions(extra={scratch_s3.storage_options()!r},
                                 connect_timeout=2, read_timeout=2, retries=0))
        t = time.monotonic()
        try:
            backend.put("a/../b", b"x" * 2000)
        except Exception as exc:
            print(type(exc).__name__, exc)
        print(f"after {{time.monotonic() - t:.1f}} s of a {{backend.deadline.seconds:g}} s deadline")
        backend.close()
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "unsupported characters" in r.stdout and "StorageUnavailableError" not in r.stdout, r.stdout


def test_only_loopback_requests_lose_the_expect_header(scratch_s3: S3Server) -> None:
    """The change is for the embedded server's sake: a botocore client made after it started still
    sends ``Expect: 100-continue`` to any other host. The request is caught before it is sent."""
    import botocore.session

    sent: dict[str, bytes | None] = {}

    class Caught(Exception):
        pass

    for endpoint in ("https://objects.example.org", scratch_s3.endpoint_url):
        def catch(request: Any, endpoint: str = endpoint, **kwargs: object) -> None:
            sent[endpoint] = request.headers.get("Expect")
            raise Caught

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
        client.meta.events.register("before-send.s3.PutObject", catch)
        with pytest.raises(Caught):
            client.put_object(Bucket=BUCKET, Key="k", Body=b"x" * 2000)
    assert sent == {"https://objects.example.org": b"100-continue", scratch_s3.endpoint_url: None}, sent


def test_what_counts_as_loopback() -> None:
    from zarrloader.loopback_puts import is_loopback

    for host in ("127.0.0.1", "127.0.1.1", "localhost", "LOCALHOST", "localhost.", "bkt.localhost", "::1",
                 "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in (None, "", "10.0.0.1", "objects.example.org", "localhost.example.org", "::ffff:10.0.0.1"):
        assert not is_loopback(host), host


def test_rclone_exiting_at_start_is_named_by_its_last_words(tmp_path: Path) -> None:
    """rclone's stderr goes to a file (a pipe nobody reads would stop the server once full); when it
    exits at start the error quotes its fatal line, not the usage text printed before it."""
    with pytest.raises(S3ServerError, match=r"(?s)rclone serve s3 exited with \d+: .*unknown flag: --no-such-flag") as err:
        start_s3_server(tmp_path / "s3", extra_args=["--no-such-flag"])
    assert len(str(err.value)) < 500, str(err.value)
