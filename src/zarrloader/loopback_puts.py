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

import ipaddress
import urllib.parse
from typing import Any


def is_loopback(host: str | None) -> bool:
    """``localhost``, a name under ``.localhost``, or a loopback address (127/8, ``::1``, and IPv4
    loopback mapped into IPv6)."""
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _expect_continue_unless_loopback(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's own ``add_expect_header``, skipped for requests to a loopback host."""
    from botocore import handlers

    if is_loopback(urllib.parse.urlsplit(str(params.get("url", ""))).hostname):
        return
    handlers.add_expect_header(model, params, **kwargs)


_installed = False


def send_loopback_put_bodies_at_once() -> bool:
    """Make the botocore sessions (s3fs's among them) that this process creates from now on send a
    request body to a loopback host at once, without ``Expect: 100-continue`` first (other hosts
    keep it); True when it is in place. Called when the embedded server starts and when the fsspec
    backend makes options for ``s3://``. Idempotent; sessions made earlier keep sending the header
    (see the module docstring for why). A botocore without ``add_expect_header`` is left as it is."""
    global _installed
    if _installed:
        return True
    try:
        from botocore import handlers
    except ImportError:
        return False
    original = getattr(handlers, "add_expect_header", None)
    if original is None:
        return False
    # botocore copies this list into every new session's event hooks; entries are (event, handler, ...)
    handlers.BUILTIN_HANDLERS[:] = [
        (h[0], _expect_continue_unless_loopback, *h[2:]) if h[1] is original else h
        for h in handlers.BUILTIN_HANDLERS
    ]
    _installed = True
    return True
