"""Read a whole object straight into memory the caller owns.

Why: a zarr store returns each chunk as an immutable ``bytes`` object, so a decoded plain-bytes chunk
is a read-only view and every batch built from it has to be copied before it may become a tensor.
Receiving the HTTP body (or file) into a writable numpy buffer costs the same one copy out of the
network buffers that ``bytes`` assembly costs, and storage-order batches can then be views of it:
one copy of every byte fewer. Measured on 2 cores against a loopback S3 server (4 MiB chunks,
256 MiB, median of 7, before and after in one session): storage-order client CPU per MiB went from
1.36 x to 1.02 x that of raw GETs.

Only stores whose read path is known exactly get a receiver: zarr's ``FsspecStore`` over s3fs (the
same ``get_object`` call and retry policy s3fs's own ``_cat_file`` makes, body read with the public
``readinto`` of the response stream) and ``LocalStore`` (``readinto`` on the file). Any other store
returns ``None`` and its chunks keep going through ``store.get``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

#: ``await receive(key, out)`` fills ``out`` (a writable byte memoryview) with the object at ``key``
#: (relative to the store's root) and returns True, or returns False when the object does not exist.
#: Raises ``ObjectSizeError`` when the object is not exactly ``len(out)`` bytes, and whatever the
#: transport raises otherwise (the caller redoes the read through zarr, whose error names the chunk).
Receiver = Callable[[str, memoryview], Awaitable[bool]]


class ObjectSizeError(ValueError):
    """The object does not hold the number of bytes its chunk must have."""


def receiver_for(store: Any) -> Receiver | None:
    """A receiver for ``store``, or None when its reads must go through ``store.get``."""
    try:
        from zarr.storage import FsspecStore, LocalStore
    except ImportError:  # pragma: no cover - zarr 3 has both
        return None
    if type(store) is LocalStore:
        return _local_receiver(Path(store.root))
    if type(store) is FsspecStore:
        return _s3_receiver(store)
    return None


def _local_receiver(root: Path) -> Receiver:
    def read(path: Path, out: memoryview) -> bool:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; opening is what may fail
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        with f:
            n = f.readinto(out)
            if n != len(out) or f.read(1):
                raise ObjectSizeError(f"{path} holds {path.stat().st_size} bytes, expected {len(out)}")
        return True

    async def receive(key: str, out: memoryview) -> bool:
        return await asyncio.to_thread(read, root / key, out)

    return receive


def _s3_receiver(store: Any) -> Receiver | None:
    fs = getattr(store, "fs", None)
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return None
    # the exact class: a subclass may override how it reads, and we would bypass that
    if type(fs) is not S3FileSystem or not getattr(fs, "asynchronous", False):
        return None
    try:
        from aiobotocore.response import AioStreamingBody
    except ImportError:
        return None
    if not all(hasattr(fs, a) for a in ("_call_s3", "split_path")) or not hasattr(AioStreamingBody, "readinto"):
        return None  # s3fs or aiobotocore internals changed: keep zarr's read path
    root = str(store.path).rstrip("/")
    missing = tuple(getattr(store, "allowed_exceptions", (FileNotFoundError,)))
    # s3fs's own reads retry the request and the body read together; _call_s3 retries the request
    # only, so a body cut off mid-way (connection reset) is retried here, as s3fs would
    body_errors = _body_errors()
    retries = max(1, int(getattr(fs, "retries", 5)))

    async def receive(key: str, out: memoryview) -> bool:
        if not getattr(store, "_is_open", True):
            await store._open()
        bucket, name, version = fs.split_path(f"{root}/{key}" if root else key)
        for attempt in range(retries):
            try:
                # s3fs retries and translates errors here exactly as for its own reads (NoSuchKey ->
                # FileNotFoundError); requester-pays and extra request arguments are added by it too.
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=name, **({"VersionId": version} if version else {}))
            except missing:
                return False
            try:
                await _read_body(resp, out, f"s3://{bucket}/{name}")
                return True
            except body_errors:
                if attempt == retries - 1:
                    raise
                await asyncio.sleep(min(1.7**attempt * 0.1, 15))  # s3fs's backoff
        raise AssertionError("unreachable")

    return receive


async def _read_body(resp: dict[str, Any], out: memoryview, where: str) -> None:
    body = resp["Body"]
    try:
        size = resp.get("ContentLength")
        if size is not None and size != len(out):
            raise ObjectSizeError(f"{where} holds {size} bytes, expected {len(out)}")
        n = 0
        while n < len(out):
            got = await body.readinto(out[n:])
            if not got:
                raise ObjectSizeError(f"{where}: body ended after {n} of {len(out)} bytes")
            n += got
        # with a Content-Length equal to len(out) nothing more can come; without one (chunked
        # encoding) the body must end now
        if size is None and await body.read(1):
            raise ObjectSizeError(f"{where} holds more than the {len(out)} bytes expected")
    finally:
        body.close()


def _body_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from aiohttp import ClientPayloadError

        errors.append(ClientPayloadError)
    except ImportError:  # pragma: no cover - s3fs depends on aiohttp
        pass
    try:
        from botocore.exceptions import ResponseStreamingError

        errors.append(ResponseStreamingError)
    except ImportError:  # pragma: no cover - older botocore
        pass
    return tuple(errors)
