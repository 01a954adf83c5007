"""zarrloader: Zarr arrays on S3/GCS/HTTP/disk -> shuffled, batched torch tensors on torchdata.nodes.

    from zarrloader import ZarrSource, make_loader
    loader = make_loader(ZarrSource("s3://bucket/train.zarr", arrays=["images", "labels"]), batch_size=64)
    for batch in loader: ...   # {"images": Tensor[64, ...], "labels": Tensor[64]}
"""

from .errors import (
    AccessDeniedError,
    BackendOptionError,
    ChunkReadError,
    DatasetLayoutError,
    InvalidURLError,
    StorageUnavailableError,
    StoreNotFoundError,
    ZarrLoaderError,
)
from .source import ArrayInfo, StaticField, ZarrSource
from .storage import StorageOptions

# The loader pulls in torch; import it on first use so that light users (the embedded S3 server,
# `zarrloader inspect`) start fast.
_LAZY = {"LoaderConfig": "loader", "ZarrLoader": "loader", "make_loader": "loader", "PatchSpec": "nodes"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AccessDeniedError",
    "ArrayInfo",
    "BackendOptionError",
    "ChunkReadError",
    "DatasetLayoutError",
    "InvalidURLError",
    "LoaderConfig",
    "PatchSpec",
    "StaticField",
    "StorageOptions",
    "StorageUnavailableError",
    "StoreNotFoundError",
    "ZarrLoader",
    "ZarrLoaderError",
    "ZarrSource",
    "make_loader",
]
