"""The local-files backend: zarr's ``LocalStore``, plain file I/O, chunks received with ``readinto``.

Local files need no deadline: a read either completes or the OS reports an error (a hung network
file system is the one exception, and no timeout of ours could interrupt a blocked ``read`` there).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path
from typing import Any, ClassVar

from ..receive import LocalReceiver, Receiver
from ..storage import Location, StorageOptions
from .base import Backend, ErrorKind, ObjectInfo


class LocalBackend(Backend):
    name: ClassVar[str] = "local"
    protocols: ClassVar[tuple[str, ...]] = ("file",)

    def __init__(self, location: Location, options: StorageOptions) -> None:
        super().__init__(location, options)
        self.deadline = None
        self.root = Path(location.path)

    @property
    def endpoint(self) -> str:
        return str(self.root)

    def zarr_store(self, *, read_only: bool = True) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(str(self.root), read_only=read_only)

    def receiver(self) -> Receiver | None:
        return LocalReceiver(self.root)

    # -- objects: plain file I/O (the async forms run it in a worker thread) ------------------------
    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # whole or not at all

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [ObjectInfo(prefix, base.stat().st_size)]
        out = []
        for folder, _, files in os.walk(base):
            for name in files:
                p = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    out.append(ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def size(self, key: str) -> int | None:
        try:
            path = self._path(key)
            return path.stat().st_size if path.is_file() else None
        except FileNotFoundError:
            return None

    def bucket_exists(self) -> bool | None:
        return None

    async def get_async(self, key: str) -> Any:
        return await asyncio.to_thread(self.get, key)

    async def put_async(self, key: str, data: bytes | memoryview) -> None:
        await asyncio.to_thread(self.put, key, data)

    async def delete_async(self, key: str) -> None:
        await asyncio.to_thread(self.delete, key)

    async def list_async(self, prefix: str = "") -> list[ObjectInfo]:
        return await asyncio.to_thread(self.list_objects, prefix)

    async def size_async(self, key: str) -> int | None:
        return await asyncio.to_thread(self.size, key)

    def classify(self, exc: BaseException) -> ErrorKind:
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return ErrorKind.NOT_FOUND
        if isinstance(exc, PermissionError):
            return ErrorKind.DENIED
        if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ESTALE, errno.ETIMEDOUT):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.OTHER
