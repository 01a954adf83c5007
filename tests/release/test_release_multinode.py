"""Two containers of the built image run one torchrun job as two nodes and agree on an all-reduce.

Each container is one "node": host networking on loopback, c10d rendezvous hosted by node 0,
gloo on CPU (NCCL when the host has >= 2 GPUs and the NVIDIA runtime: one GPU per node).
The worker script is bind-mounted read-only; nothing is installed into the image.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from imagectl.matrix import load_matrix

WORKER_DIR = Path(__file__).resolve().parent / "multinode"
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gpu_count() -> int:
    """GPUs usable by containers: needs nvidia-smi on the host and the nvidia runtime in Docker."""
    if shutil.which("nvidia-smi") is None:
        return 0
    runtimes = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    if "nvidia" not in runtimes.stdout:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def torchrun_node_command(*, node: int, nnodes: int, endpoint: str, job: str) -> list[str]:
    """The torchrun line each node runs (the same line works across real machines: see docs/multinode.md)."""
    return ["torchrun", f"--nnodes={nnodes}", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={job}", f"--rdzv-conf=is_host={int(node == 0)},join_timeout=120",
            f"--local-addr={node_addr(node)}", "--max-restarts=0", "/opt/multinode/allreduce_worker.py"]


def node_addr(node: int) -> str:
    """Each node's own address, as on real machines. Two containers on one host share the hostname and
    (in their PID namespaces) the agent's PID, which is what c10d rendezvous tells nodes apart by; a
    distinct loopback address per node (127.0.0.1, 127.0.0.2: all of 127/8 is local) keeps them apart."""
    return f"127.0.0.{node + 1}"


@pytest.fixture(scope="module")
def image(built_image: str) -> str:
    return built_image


def test_two_nodes_agree_on_allreduce(image: str) -> None:
    gpus = _gpu_count()
    use_nccl = gpus >= 2
    job, port = f"mn-{uuid.uuid4().hex[:8]}", _free_port()
    names = [f"pushtest-{job}-node{i}" for i in range(2)]
    procs = []
    try:
        for node, name in enumerate(names):
            cmd = ["docker", "run", "--rm", "--name", name, "--network", "host", "--ipc", "host",
                   "-v", f"{WORKER_DIR}:/opt/multinode:ro",
                   "-e", "OMP_NUM_THREADS=1", "-e", "GLOO_SOCKET_IFNAME=lo", "-e", "NCCL_SOCKET_IFNAME=lo",
                   "-e", "TORCH_NCCL_ASYNC_ERROR_HANDLING=1"]
            if use_nccl:
                cmd += ["--gpus", f"device={node}"]
            cmd += [image, *torchrun_node_command(node=node, nnodes=2, endpoint=f"127.0.0.1:{port}", job=job)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = []
        for p in procs:
            out, _ = p.communicate(timeout=240)
            outputs.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)

    results = []
    for code, out in outputs:
        assert code == 0, f"a node failed (exit {code}):\n{out[-3000:]}"
        lines = [ln for ln in out.splitlines() if "MULTINODE_RESULT " in ln]
        assert len(lines) == 1, out[-3000:]
        results.append(json.loads(lines[0].split("MULTINODE_RESULT ", 1)[1]))

    assert sorted(r["rank"] for r in results) == [0, 1]
    assert sorted(r["node_rank"] for r in results) == [0, 1]  # two nodes, not two local ranks
    assert {r["world_size"] for r in results} == {2}
    assert {r["backend"] for r in results} == {"nccl" if use_nccl else "gloo"}
    assert all(r["allreduce_ok"] and r["allreduce_value"] == 3.0 for r in results)
    assert all(r["broadcast_ok"] for r in results)
    assert {r["torch"].split("+")[0] for r in results} == {load_matrix().torch["torch"]}
