"""``gs://`` for the obstore backend: obstore's ``GCSStore``, authenticated exactly as gcsfs would.

Why obstore for gs:// too: gcsfs parses every response on one Python thread, obstore in Rust threads;
measured against fake-gcs-server, the loader on obstore moved 1.3-2.6 x what it moved on gcsfs at 4 and
16 MiB chunks, and as much at 1 MiB (figures: docs/zarrloader.md, "gs:// measured").

Credentials are resolved by gcsfs's own ``GoogleCredentials``, from the same ``token=`` (and
``project=``, ``access=``) the fsspec backend hands gcsfs, so both backends authenticate alike:
``None`` (gcsfs's chain: application-default credentials, its token cache, the GCE metadata server,
else anonymous), ``"google_default"``, ``"cloud"``, ``"anon"``, a service-account or authorized-user
JSON file, a dict of either, a ``google.auth`` credentials object, or a raw access token. obstore
gets the bearer token through a credential provider that refreshes it when gcsfs would (a few
minutes before it expires); where the chain ends at anonymous, requests go unsigned. The endpoint is
gcsfs's too: ``endpoint_url``, else ``STORAGE_EMULATOR_HOST`` (``fsspec.gcs_endpoint``). TLS trust:
``SSL_CERT_FILE`` and the system CA bundle, added to obstore's own roots (a TLS-inspecting proxy).

What obstore cannot do here raises ``BackendOptionError`` naming it, so that by default gs:// goes to
the fsspec backend instead: requester-pays buckets (object_store sends no ``userProject``), and gcsfs
options that have no counterpart (``consistency``, ``session_kwargs``, ...).
"""

from __future__ import annotations

import datetime
import os
import threading
from typing import Any

from ..errors import AccessDeniedError, BackendOptionError
from ..storage import Location, StorageOptions
from .obstore import client_and_retry, refuse_unknown

#: raw gcsfs options obstore honours (the credential ones go to gcsfs's ``GoogleCredentials``)
_HONOURED = ("token", "project", "access", "endpoint_url")
#: fsspec/gcsfs keys that callers pass through and that mean nothing here (timeouts come from the fields)
_FSSPEC_ONLY = ("skip_instance_cache", "asynchronous", "requests_timeout", "check_connection", "loop")


def parse_extra(loc: Location, opts: StorageOptions) -> dict[str, Any]:
    """What of ``opts`` obstore can honour for ``gs://``, as ``{"token", "project", "access", "endpoint"}``
    (``token`` is ``"anon"`` with ``anon=True``); raises ``BackendOptionError`` naming anything else."""
    extra = dict(opts.extra)
    requester_pays = opts.requester_pays or extra.pop("requester_pays", False)
    if requester_pays:
        raise BackendOptionError(
            f"backend='obstore' cannot read requester-pays buckets on gs:// ({loc.url}): object_store sends no "
            "userProject. Fix: use backend='fsspec' (gcsfs) for this bucket")
    out: dict[str, Any] = {key: extra.pop(key, None) for key in _HONOURED}
    out["endpoint"] = out.pop("endpoint_url") or opts.endpoint_url
    if opts.anon:
        out["token"] = "anon"
    out["access"] = out["access"] or "full_control"
    scopes = ("read_only", "read_write", "full_control")  # gcsfs's GCSFileSystem.scopes
    if out["access"] not in scopes:
        raise BackendOptionError(f"access={out['access']!r} is not one of {list(scopes)}. Fix: choose one "
                                 "(gcsfs's default is 'full_control')")
    if out["project"] is None:
        out["project"] = os.environ.get("GCSFS_DEFAULT_PROJECT", "")  # gcsfs's DEFAULT_PROJECT
    refuse_unknown(extra, _FSSPEC_ONLY, "gcsfs", " for gs://")
    return out


class GcsfsCredentials:
    """An obstore credential provider backed by gcsfs's ``GoogleCredentials`` (see the module docstring).
    ``anonymous``: the chain found no credentials (requests then go unsigned)."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()

    @property
    def anonymous(self) -> bool:
        return self.credentials.credentials is None

    @property
    def method(self) -> str | None:
        """How gcsfs found the credentials ("google_default", "cache", "cloud"), None for a given token."""
        return getattr(self.credentials, "method", None)

    def __call__(self) -> dict[str, Any]:
        # obstore asks again a few minutes before ``expires_at`` (its cache's minimum lifetime), inside
        # gcsfs's own refresh buffer, so every ask after the first gets a token gcsfs has just refreshed
        with self._lock:  # obstore may ask from several of its threads at once
            self.credentials.maybe_refresh()
            creds = self.credentials.credentials
            token = getattr(creds, "token", None)
            if not token:
                raise AccessDeniedError("Google credentials gave no access token. Fix: check the token= you "
                                        "passed, or run `gcloud auth application-default login`")
            expiry = getattr(creds, "expiry", None)
        # google-auth's expiry is naive UTC; obstore wants an aware time
        expires = expiry.replace(tzinfo=datetime.UTC) if expiry is not None and expiry.tzinfo is None else expiry
        return {"token": str(token), "expires_at": expires}


class Unsigned:
    """The provider of an unsigned store (``anon``, or gcsfs's chain found nothing). obstore never asks it
    for a read: ``skip_signature`` keeps reads unsigned. Its presence keeps obstore from reading
    ``GOOGLE_APPLICATION_CREDENTIALS`` itself (a stale or foreign file there would fail the store, where
    gcsfs ignores it with ``token='anon'``); a request that needs credentials gets this error."""

    def __call__(self) -> dict[str, Any]:
        raise AccessDeniedError("this request needs Google credentials, and the store is anonymous (anon=True, "
                                "or none were found). Fix: drop anon=True and provide credentials (token=..., "
                                "GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth application-default login`)")


def google_credentials(raw: dict[str, Any], endpoint: str | None) -> GcsfsCredentials:
    """gcsfs's resolution of ``token``/``project``/``access``, as a provider (``endpoint``: where the store
    points; off Google, gcsfs skips the metadata server, and so does this). A bad token or a key file
    that cannot be read is an ``AccessDeniedError`` that says what to fix, and never shows a token."""
    from gcsfs.credentials import GoogleCredentials

    from .base import redact_secrets
    from .fsspec import check_google_credentials

    token = raw["token"]
    check_google_credentials(StorageOptions(extra={"token": token} if token is not None else {}))
    try:
        return GcsfsCredentials(GoogleCredentials(raw["project"], raw["access"], token,
                                                  on_google=_on_google(endpoint)))
    except Exception as exc:  # gcsfs/google-auth raise ValueError, KeyError, OSError, GoogleAuthError
        text = redact_secrets(str(exc), {"token": token})  # gcsfs checks a raw token in a URL its errors quote
        raise AccessDeniedError(
            f"the Google credentials given as token={_shown(token)} cannot be used: {text}. Fix: pass a "
            "service-account or authorized-user JSON file, a valid access token, 'google_default', 'cloud', "
            "or anon=True for public data") from exc


def _on_google(endpoint: str | None) -> bool:
    """gcsfs's test of whether an endpoint is Google's own (``GCSFileSystem.on_google``)."""
    if endpoint is None:
        return True
    try:
        from gcsfs.core import _gcp_universe_domain

        domain = _gcp_universe_domain()
    except Exception:  # a gcsfs without it: the default universe
        domain = "googleapis.com"
    return f"torage.{domain}" in endpoint or "mtls.googleapis.com" in endpoint.lower()


def _shown(token: Any) -> str:
    """``token`` as an error message may show it: a path or a method name, never a secret."""
    if isinstance(token, str) and (token in ("google_default", "cloud", "anon", "cache") or os.path.exists(token)):
        return repr(token)
    return f"<{type(token).__name__}>"


def store_config(loc: Location, opts: StorageOptions, *, resolve: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``obstore.store.GCSStore`` for ``loc`` (exposed for tests and inspection).
    ``resolve=False`` leaves out what needs gcsfs's credential chain."""
    from .base import Deadline
    from .fsspec import gcs_endpoint

    raw = parse_extra(loc, opts)
    bucket, _, prefix = loc.path.partition("/")
    endpoint = gcs_endpoint(StorageOptions(endpoint_url=raw["endpoint"]))
    deadline = Deadline.from_options(opts)
    config: dict[str, Any] = {}
    client_options, retry_config = client_and_retry(opts, deadline)
    if endpoint:
        config["base_url"] = endpoint
        if endpoint.startswith("http://"):
            client_options["allow_http"] = True
    if resolve and not (endpoint or "").startswith("http://"):
        from .obstore import ca_certificates

        pem, _ = ca_certificates(None, aws=False)
        if pem:
            client_options["root_certificate"] = pem
    out: dict[str, Any] = {"bucket": bucket, "prefix": prefix.strip("/") or None, "config": config,
                           "client_options": client_options, "retry_config": retry_config}
    if raw["token"] == "anon":
        config["skip_signature"] = True
        out["credential_provider"] = Unsigned()
    elif resolve:
        provider = google_credentials(raw, endpoint)
        if provider.anonymous:
            config["skip_signature"] = True
            out["credential_provider"] = Unsigned()
        else:
            out["credential_provider"] = provider
    return out


def describe_endpoint(loc: Location, opts: StorageOptions) -> str:
    """Where ``loc`` is served from, for error messages."""
    from .fsspec import gcs_endpoint

    try:
        url = parse_extra(loc, opts)["endpoint"]
    except BackendOptionError:
        url = opts.endpoint_url
    return f"{gcs_endpoint(StorageOptions(endpoint_url=url)) or 'Google Cloud Storage'} (bucket {loc.bucket})"
