"""All-reduce harness: one spawned process per rank, TCP rendezvous on loopback, a hard timeout.

NCCL on GPUs (one process per visible GPU) or gloo on CPU (same launcher, rendezvous, timeout and
correctness logic). Rank r contributes r+1 everywhere; every element of every buffer must equal
n(n+1)/2. Bandwidth: algbw = bytes / time, busbw = algbw * 2(n-1)/n (the nccl-tests convention).

    python -m smokesuite.allreduce --backend gloo --world-size 2     # run it by hand
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MIB = 1024 * 1024
NCCL_SWEEP = [1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB]  # n >= 2: bandwidth sweep up to 256 MiB
NCCL_SINGLE = [1 * MIB, 64 * MIB]                              # n == 1: correctness only
GLOO_SIZES = [4096, 1 * MIB, 8 * MIB]
DEFAULT_TIMEOUT_S = 60.0
TEARDOWN_GRACE_S = 5.0  # after every rank reported its result, how long teardown may take


@dataclass
class SizeResult:
    nbytes: int
    correct: bool
    mismatches: int
    time_s: float | None = None
    algbw_gbps: float | None = None
    busbw_gbps: float | None = None


@dataclass
class AllReduceResult:
    backend: str
    world_size: int
    ok: bool
    timed_out: bool = False
    duration_s: float = 0.0
    sizes: list[SizeResult] = field(default_factory=list)  # rank 0's view
    errors: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # overrides this run used
    notes: list[str] = field(default_factory=list)  # not failures (e.g. a rank reaped after reporting)

    def summary(self) -> str:
        if self.ok:
            return f"{self.backend} all-reduce over {self.world_size} rank(s) correct"
        return "; ".join(self.errors) or "failed"

    def figures(self) -> dict[str, object]:
        fig: dict[str, object] = {"world_size": self.world_size, "duration_s": round(self.duration_s, 2)}
        if self.notes:
            fig["notes"] = "; ".join(self.notes)
        for s in self.sizes:
            if s.busbw_gbps is not None:
                tag = f"{s.nbytes // MIB}MiB" if s.nbytes >= MIB else f"{s.nbytes}B"
                fig[f"algbw_gbps_{tag}"] = round(s.algbw_gbps or 0.0, 3)
                fig[f"busbw_gbps_{tag}"] = round(s.busbw_gbps, 3)
        return fig


def bus_bandwidth(algbw: float, world_size: int) -> float:
    return algbw * 2 * (world_size - 1) / world_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_env(overrides: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # make smokesuite importable in the children
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("NCCL_DEBUG", "WARN")
    # gloo: keep rendezvous and data on loopback, whatever the hostname resolves to (host networking)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _kill(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


def run_allreduce(
    backend: str,
    world_size: int,
    sizes: list[int],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    measure: bool = True,
    env_overrides: dict[str, str] | None = None,
    inject: str | None = None,
    python: str = sys.executable,
) -> AllReduceResult:
    """Spawn ``world_size`` ranks and collect their results; kill them all at ``timeout_s``.

    ``inject`` ("hang:RANK" or "corrupt:RANK") plants a fault, so tests can prove that a hang
    times out and a wrong element is caught.
    """
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    t0 = time.monotonic()
    result = AllReduceResult(backend=backend, world_size=world_size, ok=False, env=dict(env_overrides or {}))
    with tempfile.TemporaryDirectory(prefix="smoke-allreduce-") as tmp:
        tmpdir = Path(tmp)
        port = free_port()
        env = _worker_env(env_overrides)
        procs: list[subprocess.Popen[bytes]] = []
        for rank in range(world_size):
            cmd = [python, "-m", "smokesuite.allreduce", "--worker", "--backend", backend,
                   "--rank", str(rank), "--world-size", str(world_size), "--port", str(port),
                   "--sizes", ",".join(str(s) for s in sizes), "--timeout", str(timeout_s),
                   "--result", str(tmpdir / f"rank{rank}.json")]
            if not measure:
                cmd.append("--no-measure")
            if inject:
                cmd += ["--inject", inject]
            with open(tmpdir / f"rank{rank}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = t0 + timeout_s
        first_failure: float | None = None
        all_reported: float | None = None
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if any(p.returncode not in (None, 0) for p in procs) and first_failure is None:
                first_failure = now  # peers of a dead rank usually hang: give them 10 s, not the whole timeout
            if all_reported is None and all((tmpdir / f"rank{r}.json").is_file() for r in range(world_size)):
                all_reported = now  # every rank passed the final barrier: only teardown is left
            if all_reported is not None and now - all_reported > TEARDOWN_GRACE_S:
                stuck = [r for r, p in enumerate(procs) if p.poll() is None]
                result.notes.append(f"rank(s) {stuck} reported but did not exit within "
                                    f"{TEARDOWN_GRACE_S:.0f} s of teardown; killed")
                _kill(procs)
                break
            if now >= deadline or (first_failure is not None and now - first_failure > 10):
                stuck = [r for r, p in enumerate(procs) if p.poll() is None]
                if now >= deadline:
                    result.timed_out = True
                    logs = "; ".join(f"rank {r}: {_tail(tmpdir / f'rank{r}.log', 3) or '(no output)'}" for r in stuck)
                    result.errors.append(f"timed out after {timeout_s:.0f} s: rank(s) {stuck} still running "
                                         f"(a hang in rendezvous or in the collective) [{logs}]")
                _kill(procs)
                break
            time.sleep(0.05)
        for rank, p in enumerate(procs):
            path = tmpdir / f"rank{rank}.json"
            data = json.loads(path.read_text()) if path.is_file() else None
            if data is None:
                if not result.timed_out or p.returncode not in (None, -signal.SIGKILL):
                    result.errors.append(f"rank {rank} exited with {p.returncode}: {_tail(tmpdir / f'rank{rank}.log')}")
                continue
            if data.get("error"):
                result.errors.append(f"rank {rank}: {data['error']}")
            sizes_r = [SizeResult(**s) for s in data.get("sizes", [])]
            bad = [s for s in sizes_r if not s.correct]
            for s in bad:
                result.errors.append(f"rank {rank}: wrong result for {s.nbytes} bytes: {s.mismatches} element(s) "
                                     f"differ from n(n+1)/2")
            if rank == 0:
                result.sizes = sizes_r
    result.duration_s = time.monotonic() - t0
    result.ok = not result.errors and len(result.sizes) == len(sizes)
    if not result.ok and not result.errors:
        result.errors.append("rank 0 reported no result")
    return result


def classify_failure(first: AllReduceResult, retry_without_p2p: AllReduceResult | None) -> str:
    """'ok', 'p2p' (works only with NCCL_P2P_DISABLE=1), 'hang', or 'nccl' (fails either way)."""
    if first.ok:
        return "ok"
    if retry_without_p2p is not None and retry_without_p2p.ok:
        return "p2p"
    return "hang" if first.timed_out else "nccl"


# ---------------------------------------------------------------------------------------------
# worker side


def _worker(args: argparse.Namespace) -> int:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    out: dict[str, object] = {"rank": args.rank, "sizes": [], "error": None}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kind, _, target = (args.inject or "").partition(":")
    inject_rank = int(target) if target else -1
    n = args.world_size
    try:
        if args.backend == "nccl":
            torch.cuda.set_device(args.rank)
            device = torch.device("cuda", args.rank)
        else:
            device = torch.device("cpu")
        dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                                world_size=n, timeout=timedelta(seconds=args.timeout))

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def barrier() -> None:
            if device.type == "cuda":
                dist.barrier(device_ids=[args.rank])  # NCCL: on this rank's GPU, not GPU 0
            else:
                dist.barrier()

        expected = float(n * (n + 1) // 2)
        for nbytes in sizes:
            numel = max(1, nbytes // 4)
            buf = torch.full((numel,), float(args.rank + 1), dtype=torch.float32, device=device)
            if kind == "corrupt" and args.rank == inject_rank:
                buf[numel // 2] = 0.0
            if kind == "hang" and args.rank == inject_rank:
                time.sleep(3600)
            dist.all_reduce(buf)
            sync()
            mismatches = int((buf != expected).sum().item())
            res = SizeResult(nbytes=numel * 4, correct=mismatches == 0, mismatches=mismatches)
            if args.measure and n >= 1:
                iters = max(3, min(20, (512 * MIB) // max(nbytes, 1)))
                barrier()
                sync()
                t = time.perf_counter()
                for _ in range(iters):
                    dist.all_reduce(buf)
                sync()
                res.time_s = (time.perf_counter() - t) / iters
                res.algbw_gbps = res.nbytes / res.time_s / 1e9
                res.busbw_gbps = bus_bandwidth(res.algbw_gbps, n)
            out["sizes"].append(asdict(res))  # type: ignore[union-attr]
            del buf
        barrier()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    # The result is written once every rank passed the final barrier, before teardown: a rank whose
    # destroy_process_group then stalls (seen with gloo once the rank hosting the TCP store has
    # exited) has still proven the collective; the launcher reaps it after a short grace period.
    tmp = Path(args.result + ".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(args.result)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return 0 if out["error"] is None else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smokesuite.allreduce", description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=("nccl", "gloo"), default="gloo")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--sizes", default=",".join(str(s) for s in GLOO_SIZES))
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    p.add_argument("--no-measure", dest="measure", action="store_false")
    p.add_argument("--result", default="")
    p.add_argument("--inject", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    res = run_allreduce(args.backend, args.world_size, sizes, timeout_s=args.timeout, measure=args.measure,
                        inject=args.inject)
    print(json.dumps(asdict(res), indent=2))
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
