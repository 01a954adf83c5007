"""Errors raised by zarrloader. Each message names the cause and the fix."""

from __future__ import annotations


class ZarrLoaderError(RuntimeError):
    """Base class of every error zarrloader raises on purpose."""


class InvalidURLError(ZarrLoaderError, ValueError):
    """The URL has a scheme zarrloader cannot open, or is malformed."""


class StoreNotFoundError(ZarrLoaderError, FileNotFoundError):
    """The bucket, prefix or Zarr node does not exist."""


class AccessDeniedError(ZarrLoaderError, PermissionError):
    """Credentials are missing, wrong, or lack permission."""


class StorageUnavailableError(ZarrLoaderError, ConnectionError):
    """The storage endpoint could not be reached, or did not answer within the operation's deadline
    (connect_timeout + read_timeout x (retries + 1) plus a small grace, see ``backends.Deadline``).
    The message names the endpoint, the operation and the timeout and retry settings that applied."""


class BackendOptionError(ZarrLoaderError, ValueError):
    """A storage option the chosen backend cannot honour, or a backend that cannot run here."""


class DatasetLayoutError(ZarrLoaderError, ValueError):
    """The arrays cannot be loaded together (misaligned sample axis, no arrays, bad patch spec...)."""


class ChunkReadError(ZarrLoaderError):
    """A chunk could not be fetched or decoded; ``key`` names the object."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class WriteError(ZarrLoaderError):
    """A sync could not write its destination."""
