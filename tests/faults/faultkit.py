"""Fault injection for tests against real servers: freeze a server process, stall a TCP link, and run
the code under test with a hard deadline so that a hang fails the test instead of hanging it.

This kernel has no netem/tbf qdisc, so faults are made in user space:

* ``frozen(proc)`` stops a server with SIGSTOP (its TCP connections stay open, no byte flows, new
  connections still complete in the kernel's backlog) and always resumes it with SIGCONT.
* ``StallingProxy`` is a loopback TCP proxy in front of any server; ``stall()`` stops forwarding in
  both directions with every connection kept open, ``stall_responses_after(n)`` lets each response
  through up to ``n`` bytes and then stops mid-body, ``black_hole=True`` accepts connections and never
  answers (a server that is up but hung).
* ``run_bounded(fn, limit)`` runs ``fn`` in a daemon thread and reports what happened within
  ``limit`` seconds: its result or exception and the time it took, or that it was still running.

Used by the loader fault tests here and meant for the inspect/sync/bench ones.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def frozen(proc: subprocess.Popen[Any] | int) -> Iterator[float]:
    """SIGSTOP ``proc`` (a Popen or a pid) for the duration of the block; yields the monotonic time
    of the freeze. SIGCONT always follows, even when the block fails."""
    pid = proc if isinstance(proc, int) else proc.pid
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        yield t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class Outcome:
    """What ``run_bounded`` saw: ``done`` False means still running at the limit (a hang)."""

    done: bool
    elapsed: float
    result: Any = None
    error: BaseException | None = None


def run_bounded(fn: Callable[[], Any], limit: float) -> Outcome:
    """Run ``fn()`` in a daemon thread; wait at most ``limit`` seconds. Never hangs the caller."""
    box: dict[str, Any] = {}
    t0 = time.monotonic()

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # reported to the test, not raised in the thread
            box["error"] = exc
        box["t"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True, name="faultkit-run")
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        return Outcome(done=False, elapsed=time.monotonic() - t0)
    return Outcome(done=True, elapsed=box["t"] - t0, result=box.get("result"), error=box.get("error"))


class StallingProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` (host, port) that can stop forwarding on demand.

    ``url`` is ``http://127.0.0.1:PORT``. Use as a context manager; ``close()`` drops every connection."""

    def __init__(self, target: tuple[str, int] | None, *, black_hole: bool = False) -> None:
        if target is None and not black_hole:
            raise ValueError("a proxy needs a target unless black_hole=True")
        self.target = target
        self.black_hole = black_hole
        self._stalled = threading.Event()
        self._response_limit: int | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peer: dict[socket.socket, socket.socket] = {}
        self._sent_back: dict[socket.socket, int] = {}  # client socket -> response bytes of its request
        self._stop = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="faultkit-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> float:
        """From now on nothing is forwarded, in either direction; connections stay open. Returns the
        monotonic time of the stall."""
        self._stalled.set()
        return time.monotonic()

    def resume(self) -> None:
        self._stalled.clear()

    def stall_responses_after(self, nbytes: int) -> None:
        """Forward each connection's responses up to ``nbytes`` bytes, then stop mid-body (per
        connection; requests still flow to the server)."""
        self._response_limit = nbytes

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif not self._stalled.is_set():
                    self._forward(sock, key.data)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.connections += 1
        if self.black_hole:
            client.setblocking(False)
            self._sel.register(client, selectors.EVENT_READ, "sink")
            self._peer[client] = client
            return
        assert self.target is not None
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
        self._peer[client], self._peer[upstream] = upstream, client
        self._sent_back[client] = 0
        self._sel.register(client, selectors.EVENT_READ, "client")
        self._sel.register(upstream, selectors.EVENT_READ, "upstream")

    def _forward(self, sock: socket.socket, role: str) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if role == "sink":  # read and drop, never answer
            if not data:
                self._drop(sock)
            return
        if not data:
            self._drop(sock)
            return
        peer = self._peer.get(sock)
        if peer is None:
            return
        if role == "upstream" and self._response_limit is not None:
            room = self._response_limit - self._sent_back.get(peer, 0)
            if room <= 0:
                return  # swallow: the client waits mid-body on an open connection
            data = data[:room]
        if role == "client":
            self._sent_back[sock] = 0  # a new request on this connection: its response counts afresh
        else:
            self._sent_back[peer] = self._sent_back.get(peer, 0) + len(data)
        try:
            peer.setblocking(True)
            peer.settimeout(5)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        for s in {sock, self._peer.pop(sock, sock)}:
            self._peer.pop(s, None)
            self._sent_back.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in list(self._peer):
            with contextlib.suppress(OSError):
                s.close()
        self._peer.clear()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._sel.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the fault tests' data: one bucket, two small stores written by zarr-python ------------------
# Here, not in conftest.py: tests import these by module name, and `conftest` is a name every test
# folder has (imported from there, the first folder's conftest wins).

BUCKET = "data"
SHAPE, CHUNKS = (400, 32, 32), (8, 32, 32)  # 50 chunks of 32 KiB


def data() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


def write_stores(root: Path) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    for name, compressors in (("plain.zarr", None), ("zstd.zarr", ZstdCodec(level=1))):
        z = zarr.create_array(str(root / BUCKET / name), shape=SHAPE, chunks=CHUNKS, dtype="float32",
                              compressors=compressors)
        z[:] = data()
