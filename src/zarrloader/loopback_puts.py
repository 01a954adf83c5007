"""PUTs to loopback hosts without ``Expect: 100-continue``, for S3-compatible servers on the same
machine (the embedded ``rclone serve s3`` first).

``rclone serve s3`` makes an object's parent folders with a look then a mkdir, so two PUTs into one
new folder (zarr writing chunks ``c/0/0``, ``c/1/0``... at once) race, and the loser fails before it
reads its body, as does a PUT of a key it refuses (``a/../b``). Go's server then drains that body
before it answers, while botocore's client holds the body back until it hears ``100 Continue``, and
aiohttp waits for that without any timeout: both wait for ever (a zarr write in a test hung CI so).
Sent at once, the body is drained, the error comes back, and a retryable one (the race's 500) is
retried by botocore. The header only saves sending a body the server would refuse, which costs
nothing on loopback; other hosts keep it.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _expect_continue_unless_loopback(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's own ``add_expect_header``, skipped for requests to a loopback host."""
    from botocore import handlers

    if urllib.parse.urlsplit(str(params.get("url", ""))).hostname in LOOPBACK_HOSTS:
        return
    handlers.add_expect_header(model, params, **kwargs)


def send_loopback_put_bodies_at_once() -> bool:
    """Make the botocore clients (s3fs's among them) that this process creates from now on send a
    request body to a loopback host at once, without ``Expect: 100-continue`` first (other hosts
    keep it); True when botocore is installed. Called when the embedded server starts and when the
    fsspec backend makes options for ``s3://``. Idempotent; sessions made earlier keep sending the
    header (see the module docstring for why)."""
    try:
        from botocore import handlers
    except ImportError:
        return False
    # botocore copies this list into every new session's event hooks; entries are (event, handler, ...)
    handlers.BUILTIN_HANDLERS[:] = [
        (h[0], _expect_continue_unless_loopback, *h[2:]) if h[1] is handlers.add_expect_header else h
        for h in handlers.BUILTIN_HANDLERS
    ]
    return True
