"""``gs://`` for the obstore backend: obstore's ``GCSStore``, authenticated exactly as gcsfs would.

Why obstore for gs:// too: gcsfs parses every response on one Python thread, obstore in Rust threads;
measured against a GCS JSON API server (fake-gcs-server), the loader reads gs:// faster on obstore at
every chunk size (figures: docs/zarrloader.md, "gs:// measured").

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
from .obstore import refuse_unknown

#: raw gcsfs options obstore honours (the credential ones go to gcsfs's ``GoogleCredentials``)
_HONOURED = ("token", "project", "access", "endpoint_url")
#: fsspec/gcsfs keys that callers pass through and that mean nothing here (timeouts come from the fields)
_FSSPEC_ONLY = ("skip_instance_cache", "asynchronous", "requests_timeout", "check_connection", "loop")
#: gcsfs refreshes a token this many seconds before it expires; obstore is told it expires then
REFRESH_MARGIN_S = 100.0


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
        with self._lock:  # obstore may ask from several of its threads at once
            self.credentials.maybe_refresh()
            creds = self.credentials.credentials
            token = getattr(creds, "token", None)
            if not token:
                raise AccessDeniedError("Google credentials gave no access token. Fix: check the token= you "
                                        "passed, or run `gcloud auth application-default login`")
            expiry = getattr(creds, "expiry", None)
        expires = None
        if expiry is not None:
            # google-auth's expiry is naive UTC; obstore wants an aware time
            aware = expiry if expiry.tzinfo else expiry.replace(tzinfo=datetime.UTC)
            expires = aware - datetime.timedelta(seconds=REFRESH_MARGIN_S)
        return {"token": str(token), "expires_at": expires}


def google_credentials(raw: dict[str, Any]) -> GcsfsCredentials:
    """gcsfs's resolution of ``token``/``project``/``access``, as a provider. A bad token or a key file
    that cannot be read is an ``AccessDeniedError`` that says what to fix."""
    from gcsfs.credentials import GoogleCredentials

    from .fsspec import check_google_credentials

    check_google_credentials(StorageOptions(extra={"token": raw["token"]} if raw["token"] is not None else {}))
    try:
        return GcsfsCredentials(GoogleCredentials(raw["project"], raw["access"], raw["token"]))
    except Exception as exc:  # gcsfs/google-auth raise ValueError, KeyError, OSError, GoogleAuthError
        raise AccessDeniedError(
            f"the Google credentials given as token={_shown(raw['token'])} cannot be used: {exc}. Fix: pass a "
            "service-account or authorized-user JSON file, 'google_default', 'cloud', or anon=True for public "
            "data") from exc


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
    client_options: dict[str, Any] = {
        "connect_timeout": datetime.timedelta(seconds=opts.connect_timeout),
        "read_timeout": datetime.timedelta(seconds=opts.read_timeout),
        "timeout": datetime.timedelta(seconds=deadline.request_seconds),
    }
    if endpoint:
        config["base_url"] = endpoint
        if endpoint.startswith("http://"):
            client_options["allow_http"] = True
    if resolve and not (endpoint or "").startswith("http://"):
        from .obstore import ca_certificates

        pem, _ = ca_certificates(None, aws=False)
        if pem:
            client_options["root_certificate"] = pem
    retry_config = {"max_retries": max(0, opts.retries),
                    "retry_timeout": datetime.timedelta(seconds=deadline.request_seconds),
                    "backoff": {"init_backoff": datetime.timedelta(milliseconds=100),
                                "max_backoff": datetime.timedelta(seconds=1), "base": 2}}
    out: dict[str, Any] = {"bucket": bucket, "prefix": prefix.strip("/") or None, "config": config,
                           "client_options": client_options, "retry_config": retry_config}
    if raw["token"] == "anon":
        config["skip_signature"] = True
    elif resolve:
        provider = google_credentials(raw)
        if provider.anonymous:
            config["skip_signature"] = True
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
