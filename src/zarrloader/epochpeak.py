"""The allocation peak of one loader epoch, measured under tracemalloc in a fresh child process.

Why a child: on the Pythons this project runs on the host (3.11) ``tracemalloc.stop()`` can crash
the process when another thread is attaching to the interpreter at that moment (CPython
gh-128679, fixed in 3.12.9 and 3.13.2, never in 3.11): obstore's Rust threads attach every time a
request completes, so stopping the trace while any read is in flight anywhere in the process, say
a loader abandoned mid-epoch, is a segfault in ``traceback_new`` (seen in CI, reproduced here with
a core dump). The child starts tracing once, runs one epoch, reports, and leaves with
``os._exit`` so tracing is never stopped at all; the caller's process never traces. A fresh process
also measures what the epoch allocates and nothing a previous test or run left behind.

``epoch_peak(source, loader_kwargs)`` runs a child Python (this interpreter, the same zarrloader
package) with the pickled source and keyword arguments of ``make_loader`` on stdin (credentials in
the storage options travel through the pipe, never the command line or environment), waits at most
``timeout`` seconds, and returns an ``EpochPeak``. A failure in the child comes back as ``EpochPeakError``
with the child's last lines.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ZarrLoaderError

#: the default limit on one measured epoch, child start-up (imports) included
DEFAULT_TIMEOUT_S = 900.0


class EpochPeakError(ZarrLoaderError):
    """The child measuring an epoch failed or ran past its deadline (the message says which)."""


@dataclass(frozen=True)
class EpochPeak:
    """What the child measured: ``peak_bytes`` allocated (numpy buffers, Python objects, obstore buffers
    the loader adopts: all reported to tracemalloc) above what was allocated before a fresh loader was
    made, after one untraced epoch that loaded the modules the loader imports on first use; over
    ``samples`` samples in ``batches`` batches."""

    peak_bytes: int
    samples: int
    batches: int


def epoch_peak(source: Any, loader_kwargs: dict[str, Any], timeout: float = DEFAULT_TIMEOUT_S) -> EpochPeak:
    """One epoch of ``make_loader(source, **loader_kwargs)`` in a fresh process under tracemalloc."""
    import zarrloader

    package = str(Path(zarrloader.__file__).resolve().parent)
    payload = pickle.dumps({"source": source, "kwargs": dict(loader_kwargs), "package": package})
    # -P: no working directory on sys.path; the folder holding this zarrloader goes first in the
    # child alone (not PYTHONPATH, which its own children would inherit), and the child checks it
    # imported the same package
    boot = ("import sys; d = sys.argv[1]; sys.path.insert(0, d) if d not in sys.path else None; "
            "from zarrloader.epochpeak import main; main()")
    cmd = [sys.executable, "-P", "-c", boot, str(Path(package).parent)]
    try:
        done = subprocess.run(cmd, input=payload, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise EpochPeakError(
            f"measuring one epoch's allocation peak took longer than {timeout:g} s (child process killed). "
            "Fix: check that the storage is reachable, or measure a smaller dataset") from None
    tail = "\n".join(done.stderr.decode(errors="replace").strip().splitlines()[-15:]) or "(no output)"
    if done.returncode != 0:
        raise EpochPeakError(f"the child measuring one epoch's allocation peak exited with status "
                             f"{done.returncode}:\n{tail}")
    try:
        got = json.loads(done.stdout.decode(errors="replace").strip().splitlines()[-1])
        return EpochPeak(int(got["peak_bytes"]), int(got["samples"]), int(got["batches"]))
    except (ValueError, KeyError, TypeError, IndexError):
        raise EpochPeakError(f"the child measuring one epoch's allocation peak reported no result "
                             f"(stdout {done.stdout[-200:]!r}):\n{tail}") from None


def _epoch(source: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
    from .loader import make_loader

    ld = make_loader(source, **kwargs)
    samples = batches = 0
    for b in ld:
        batches += 1
        samples += len(next(iter(b.values())))
    ld.source.close()
    return samples, batches


def _measure(job: bytes) -> EpochPeak:
    import tracemalloc

    # an untraced epoch first, on its own copy of the source: the modules the loader imports on
    # first use (codecs, the storage client, torch's) are then loaded, as in a process that has
    # trained before, and the traced epoch counts the loader's allocations, not the imports
    warm = pickle.loads(job)
    _epoch(warm["source"], warm["kwargs"])
    fresh = pickle.loads(job)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    samples, batches = _epoch(fresh["source"], fresh["kwargs"])  # a fresh loader: opening included
    return EpochPeak(max(0, tracemalloc.get_traced_memory()[1] - base), samples, batches)


def main() -> None:
    # the result goes to the original stdout alone: anything the loader or a library prints (to
    # Python's or C's stdout) lands on stderr instead, so it cannot corrupt the JSON line
    result = os.dup(1)
    os.dup2(2, 1)
    job = sys.stdin.buffer.read()
    if not job:
        sys.stderr.write("zarrloader.epochpeak is not a command: zarrloader.epochpeak.epoch_peak() runs it with "
                         "a job on stdin. Fix: call epoch_peak(source, loader_kwargs), or use `zarrloader bench`\n")
        os._exit(2)
    try:
        import zarrloader

        want = pickle.loads(job)["package"]
        have = str(Path(zarrloader.__file__).resolve().parent)
        if have != want:
            raise EpochPeakError(f"the child imported zarrloader from {have}, the caller from {want}")
        got = _measure(job)
    except BaseException as exc:  # the parent reads stderr: the message, not a traceback
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(1)
    line = json.dumps({"peak_bytes": got.peak_bytes, "samples": got.samples, "batches": got.batches}) + "\n"
    os.write(result, line.encode())
    sys.stderr.flush()
    # never tracemalloc.stop(), not even at interpreter exit (see the module docstring)
    os._exit(0)


if __name__ == "__main__":
    main()
