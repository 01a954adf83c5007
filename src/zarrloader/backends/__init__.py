"""Storage backends: one module per backend behind one protocol (``base.Backend``), registered here,
the one dispatch point (in the spirit of zarr-python's ``storage/``).

    backend = open_backend(parse_url("s3://bucket/data.zarr"), StorageOptions())
    store = backend.zarr_store()               # for zarr
    backend.list_objects("images")             # [ObjectInfo(key, size), ...], bounded by backend.deadline
    backend.close()

=========  ==========================================  ===========================================
name       serves                                      module
=========  ==========================================  ===========================================
obstore    ``s3://``, ``gs://`` (the default there)    ``backends.obstore`` (Rust clients; gs:// config
                                                       in ``backends.obstore_gcs``)
fsspec     ``s3://``, ``gs://``,                       ``backends.fsspec`` (s3fs, gcsfs, aiohttp)
           ``http(s)://`` (the default there)
local      paths and ``file://`` (always)              ``backends.local``
=========  ==========================================  ===========================================

``StorageOptions(backend=None)`` (the default) picks the fastest backend for the scheme, from
``DEFAULTS``; when that one cannot serve these options here (raw fsspec options it cannot honour, a
process forked after obstore was used) the next one is taken. Naming a backend makes it that one or
an error that says why. Writes (``writing=True``: sync and convert destinations, writable zarr
stores) take ``WRITE_DEFAULTS`` where a scheme has one: gs:// is written through gcsfs, because
obstore writes GCS objects through its XML API, which the GCS server these tests run against
(fake-gcs-server) does not implement, so that path is untested here (docs/zarrloader.md, "Backends").
"""

from __future__ import annotations

import importlib

from ..errors import BackendOptionError
from ..storage import BACKENDS, Location, StorageOptions
from .base import Backend, Deadline, ErrorKind, ObjectInfo

#: name -> "module:class"; modules are imported on first use (obstore and zarr are heavy imports)
REGISTRY: dict[str, str] = {
    "obstore": "zarrloader.backends.obstore:ObstoreBackend",
    "fsspec": "zarrloader.backends.fsspec:FsspecBackend",
    "local": "zarrloader.backends.local:LocalBackend",
}
#: the default per protocol, and what to use when it cannot serve (measured: see docs, "Backends")
DEFAULTS: dict[str, tuple[str, ...]] = {
    "s3": ("obstore", "fsspec"),
    "gcs": ("obstore", "fsspec"),
    "http": ("fsspec",),
    "file": ("local",),
}
#: where writes default to another list than reads (see the module docstring)
WRITE_DEFAULTS: dict[str, tuple[str, ...]] = {
    "gcs": ("fsspec",),
}
assert set(BACKENDS) <= set(REGISTRY)
_SCHEMES = {"gcs": "gs", "http": "http(s)"}  # protocol -> the scheme users write


def backend_class(name: str) -> type[Backend]:
    if name not in REGISTRY:
        raise BackendOptionError(f"unknown storage backend {name!r}: choose one of {list(BACKENDS)} (or None)")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def choose_backend(loc: Location, opts: StorageOptions, *, writing: bool = False) -> str:
    """The backend that serves ``loc`` with ``opts`` in this process (``writing``: for writes)."""
    if loc.protocol == "file":
        return "local"  # local paths are plain files whatever backend= says
    if opts.backend is not None:
        if loc.protocol not in backend_class(opts.backend).protocols:
            served = ", ".join(n for n in BACKENDS if loc.protocol in backend_class(n).protocols)
            names = [f"{_SCHEMES.get(p, p)}://" for p in backend_class(opts.backend).protocols]
            schemes = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise BackendOptionError(
                f"backend={opts.backend!r} supports {schemes} URLs "
                f"here, not {loc.url!r}. Fix: drop backend= (the default for this scheme), or use one of: {served}")
        return opts.backend
    candidates = (WRITE_DEFAULTS.get(loc.protocol) if writing else None) or DEFAULTS[loc.protocol]
    for name in candidates[:-1]:
        if name == "obstore":
            from . import obstore

            reason = obstore.unsupported_reason(loc, opts)
            if reason is None:
                return name
            if obstore.forked_after_use():
                obstore.warn_fork_fallback()
            continue
        return name
    return candidates[-1]


def open_backend(loc: Location, opts: StorageOptions, *, writing: bool = False) -> Backend:
    """A backend for ``loc`` (nothing touches the network until it is used); ``writing``: one that
    writes (see ``WRITE_DEFAULTS``)."""
    return backend_class(choose_backend(loc, opts, writing=writing))(loc, opts)


__all__ = ["BACKENDS", "DEFAULTS", "REGISTRY", "WRITE_DEFAULTS", "Backend", "Deadline", "ErrorKind", "ObjectInfo", "backend_class",
           "choose_backend", "open_backend"]
