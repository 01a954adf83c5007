"""The loader against frozen and stalled stores: every backend ends in ``StorageUnavailableError`` naming
the endpoint, the operation and the settings, within connect + read x (retries + 1) + grace, never a
hang. Real servers: ``rclone serve s3`` frozen with SIGSTOP, Python's HTTP server and a black-hole
endpoint behind a stalling TCP proxy."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from faultkit import BUCKET, StallingProxy, data, frozen, run_bounded

from zarrloader import AccessDeniedError, StorageOptions, StorageUnavailableError, ZarrSource, make_loader
from zarrloader.backends import Deadline
from zarrloader.s3server import S3Server

FAST = {"connect_timeout": 1.0, "read_timeout": 2.0, "retries": 1}
BOUND = Deadline(1.0, 2.0, 1).seconds  # 1 + 2 x 2 + grace
MARGIN = 3.0  # thread hand-offs and the error path, on a loaded 2-core machine


def _opts(server: S3Server, backend: str | None, **kw: object) -> StorageOptions:
    return StorageOptions(extra=server.storage_options(), backend=backend, **{**FAST, **kw})  # type: ignore[arg-type]


def _loader(url: str, opts: StorageOptions, shuffle: bool) -> object:
    return make_loader(ZarrSource(url, storage_options=opts), batch_size=8, shuffle=shuffle, concurrency=2,
                       shuffle_buffer_chunks=1, min_read_bytes=1, pin_memory=False)


def _assert_clear(err: BaseException | None, endpoint: str, operation: str) -> None:
    assert isinstance(err, StorageUnavailableError), repr(err)
    text = str(err)
    for needle in (endpoint, operation, "read_timeout=2 s", "retries=1", "Fix:"):
        assert needle in text, f"{needle!r} missing from: {text}"


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
@pytest.mark.parametrize("store", ["plain.zarr", "zstd.zarr"])  # plain: the receivers; zstd: zarr's store.get
def test_frozen_s3_server_mid_epoch_raises_within_the_bound(s3: S3Server, backend: str, store: str) -> None:
    ld = _loader(f"s3://{BUCKET}/{store}", _opts(s3, backend), shuffle=store == "zstd.zarr")
    it = iter(ld)
    first = [next(it) for _ in range(3)]
    assert all(len(b[""]) == 8 for b in first)
    assert s3.process is not None
    with frozen(s3.process):
        outcome = run_bounded(lambda: list(it), BOUND + 60)
    assert outcome.done, f"the loader hung on a frozen server ({backend}, {store})"
    _assert_clear(outcome.error, s3.endpoint_url, "fetching rows")
    assert outcome.elapsed <= BOUND + MARGIN, f"error after {outcome.elapsed:.1f} s, bound {BOUND:g} s"


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_frozen_s3_server_at_open_raises_within_the_bound(s3: S3Server, backend: str) -> None:
    src = ZarrSource(f"s3://{BUCKET}/plain.zarr", storage_options=_opts(s3, backend))
    assert s3.process is not None
    with frozen(s3.process):
        outcome = run_bounded(src.open, BOUND + 60)
    assert outcome.done, f"opening hung on a frozen server ({backend})"
    _assert_clear(outcome.error, s3.endpoint_url, "opening s3://data/plain.zarr")
    assert outcome.elapsed <= BOUND + MARGIN


@pytest.mark.parametrize("backend", ["obstore", "fsspec"])
def test_s3_body_stalled_mid_transfer_raises_within_the_bound(s3: S3Server, backend: str) -> None:
    """The server answers, then the body stops half-way on an open connection."""
    with StallingProxy(("127.0.0.1", s3.port)) as proxy:
        extra = {**s3.storage_options(), "client_kwargs": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
        opts = StorageOptions(extra=extra, backend=backend, **FAST)  # type: ignore[arg-type]
        ld = _loader(f"s3://{BUCKET}/plain.zarr", opts, shuffle=False)
        it = iter(ld)
        next(it)
        proxy.stall_responses_after(16 * 1024)  # half of a 32 KiB chunk, headers included
        outcome = run_bounded(lambda: list(it), BOUND + 60)
        assert outcome.done, f"the loader hung on a stalled body ({backend})"
        _assert_clear(outcome.error, proxy.url, "")
        assert outcome.elapsed <= BOUND + MARGIN


def test_http_store_stalled_mid_epoch_raises_within_the_bound(http_root: tuple[str, int]) -> None:
    with StallingProxy(http_root) as proxy:
        ld = _loader(f"{proxy.url}/plain.zarr", StorageOptions(**FAST), shuffle=True)  # type: ignore[arg-type]
        it = iter(ld)
        next(it)
        proxy.stall()
        outcome = run_bounded(lambda: list(it), BOUND + 60)
        assert outcome.done, "the loader hung on a stalled HTTP server"
        _assert_clear(outcome.error, proxy.url, "fetching rows")
        assert outcome.elapsed <= BOUND + MARGIN


def test_http_store_read_whole_through_the_proxy(http_root: tuple[str, int]) -> None:
    """The proxy itself is transparent: the same epoch without a stall reads every value."""
    with StallingProxy(http_root) as proxy:
        src = ZarrSource(f"{proxy.url}/plain.zarr")
        batches = list(make_loader(src, batch_size=50, shuffle=False, concurrency=2))
    np.testing.assert_array_equal(np.concatenate([b[""].numpy() for b in batches]), data())


@pytest.mark.parametrize("backend", [None, "fsspec"])  # None: the default for gs:// reads, obstore
def test_gcs_endpoint_that_never_answers_raises_within_the_bound(backend: str | None) -> None:
    with StallingProxy(None, black_hole=True) as proxy:
        opts = StorageOptions(anon=True, endpoint_url=proxy.url, backend=backend, **FAST)  # type: ignore[arg-type]
        src = ZarrSource("gs://bucket/x.zarr", storage_options=opts)
        assert src.backend_name == (backend or "obstore")
        outcome = run_bounded(src.open, BOUND + 60)
        assert outcome.done, "opening gs:// hung on an endpoint that never answers"
        _assert_clear(outcome.error, proxy.url, "opening gs://bucket/x.zarr")
        assert outcome.elapsed <= BOUND + MARGIN
        assert proxy.connections >= 1


def test_gcs_credentials_file_that_does_not_exist_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    t0 = time.monotonic()
    with pytest.raises(AccessDeniedError, match=r"GOOGLE_APPLICATION_CREDENTIALS=.*missing\.json does not exist.*Fix"):
        ZarrSource("gs://bucket/x.zarr").open()
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
@pytest.mark.parametrize("backend", [None, "fsspec"])
def test_frozen_server_with_the_default_settings_ends_within_90_s(s3: S3Server, backend: str | None) -> None:
    """The documented defaults: 5 + 20 x 3 + 2 = 67 s, under the 90 s promised."""
    default = Deadline.from_options(StorageOptions())
    assert default.seconds <= 90
    ld = make_loader(ZarrSource(f"s3://{BUCKET}/plain.zarr",
                                storage_options=StorageOptions(extra=s3.storage_options(), backend=backend)),
                     batch_size=8, shuffle=False, concurrency=2, min_read_bytes=1)
    it = iter(ld)
    next(it)
    assert s3.process is not None
    with frozen(s3.process):
        outcome = run_bounded(lambda: list(it), 150)
    assert outcome.done, "the loader hung with the default settings"
    assert isinstance(outcome.error, StorageUnavailableError), repr(outcome.error)
    assert outcome.elapsed <= default.seconds + MARGIN


def test_no_unclosed_session_noise_on_gc_or_at_exit(s3: S3Server) -> None:
    """An S3-backed source read through fsspec, garbage-collected mid-script, then the script exits:
    aiohttp must never print "Unclosed client session" / "Unclosed connector"."""
    import json

    code = ("import gc, json, sys, warnings\nwarnings.simplefilter('always')\n"
            "from zarrloader import StorageOptions, ZarrSource, make_loader\n"
            "opts = StorageOptions(extra=json.loads(sys.argv[2]), backend=sys.argv[3])\n"
            "for _ in range(3):\n"
            "    src = ZarrSource(sys.argv[1], storage_options=opts)\n"
            "    print(sum(len(b['']) for b in make_loader(src, batch_size=50)))\n"
            "    del src\n    gc.collect()\n"
            "kept = ZarrSource(sys.argv[1], storage_options=opts)\nkept.open()\n")  # left open at exit
    for backend in ("fsspec", "obstore"):
        r = subprocess.run([sys.executable, "-c", code, f"s3://{BUCKET}/plain.zarr", json.dumps(s3.storage_options()),
                            backend], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["400"] * 3
        assert "Unclosed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
