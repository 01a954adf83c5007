"""Compatibility names for code written when obstore was an ``if`` branch: the backend itself is
``zarrloader.backends.obstore`` (the default for ``s3://``)."""

from __future__ import annotations

from typing import Any

from .backends.obstore import ObstoreBackend, obstore_config
from .errors import BackendOptionError
from .storage import Location, StorageOptions


def s3_store(loc: Location, opts: StorageOptions) -> Any:
    """obstore's store for ``loc``: ``S3Store`` (``GCSStore`` for gs://, despite the old name; see
    ``backends.obstore.ObstoreBackend.object_store``)."""
    return ObstoreBackend(loc, opts).object_store()


def obstore_zarr_store(loc: Location, opts: StorageOptions, *, read_only: bool = True) -> Any:
    """A zarr store on obstore for ``loc`` (ranges safe on servers that answer them with status 200)."""
    return ObstoreBackend(loc, opts).zarr_store(read_only=read_only)


__all__ = ["BackendOptionError", "obstore_config", "obstore_zarr_store", "s3_store"]
