"""One rank of a multi-node torchrun job: all-reduce, broadcast, and report what this rank saw.

Started by torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, GROUP_RANK, MASTER_ADDR/PORT) in each
node's container; bind-mounted read-only into the image by tests/release/test_release_multinode.py.
Backend: NCCL when this rank has a GPU, gloo otherwise (override with MULTINODE_BACKEND).
Prints one line `MULTINODE_RESULT {json}` and exits non-zero when the collectives disagree.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist


def main() -> int:
    backend = os.environ.get("MULTINODE_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    t0 = time.monotonic()
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    # all-reduce: every rank contributes rank+1; the sum is world*(world+1)/2 everywhere.
    x = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(x)
    expected = world * (world + 1) / 2
    allreduce_ok = bool(torch.all(x == expected).item())

    # broadcast: rank 0's random tensor must arrive bit-identical on every node.
    g = torch.Generator().manual_seed(1234)
    ref = torch.rand(256, generator=g)
    y = (ref if rank == 0 else torch.zeros(256)).to(device)
    dist.broadcast(y, src=0)
    broadcast_ok = bool(torch.equal(y.cpu(), ref))

    result = {
        "rank": rank, "world_size": world, "backend": backend, "node_rank": int(os.environ.get("GROUP_RANK", -1)),
        "hostname": socket.gethostname(), "allreduce_value": float(x[0].item()), "expected": expected,
        "allreduce_ok": allreduce_ok, "broadcast_ok": broadcast_ok, "torch": torch.__version__,
        "seconds": round(time.monotonic() - t0, 3),
    }
    print("MULTINODE_RESULT " + json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if allreduce_ok and broadcast_ok else 1


if __name__ == "__main__":
    sys.exit(main())
