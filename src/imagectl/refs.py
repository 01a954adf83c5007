"""Registry references, validated before anything is built, gated or pushed.

`--registry` takes HOST[:PORT][/NAMESPACE...] as Docker names it (no scheme): the first component
must be a registry host (it has a dot or a port, or is `localhost`), so `acme` alone is refused
rather than silently meaning Docker Hub. Grammar: github.com/distribution/reference.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_NAME = 255


class InvalidReferenceError(ValueError):
    """A registry or image reference is malformed; the message names the part and the fix."""


@dataclass(frozen=True)
class Registry:
    host: str  # host[:port]
    namespace: str  # "" or path components joined by "/"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}" if self.namespace else self.host

    def repository(self, name: str) -> str:
        return f"{self}/{name}"


def _host_ok(host: str) -> bool:
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if host.startswith("["):  # [IPv6]:port
        inner, _, port = host[1:].partition("]")
        port = port.removeprefix(":")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return False
        return not port or (port.isdigit() and 0 < int(port) < 65536)
    if not name:
        name, port = host, ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def parse_registry(text: str) -> Registry:
    """`ghcr.io/acme`, `127.0.0.1:5000`, `registry.local:443/team/ml` -> Registry; InvalidReferenceError otherwise."""
    raw = text.strip()
    if not raw:
        raise InvalidReferenceError("no registry given: pass HOST[:PORT][/NAMESPACE], e.g. ghcr.io/acme or 127.0.0.1:5000")
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        raise InvalidReferenceError(f"registry {text!r} has a scheme ({scheme}://): Docker names registries without one. "
                              f"Fix: --registry {rest.rstrip('/')}")
    if raw.endswith("/") or "//" in raw:
        raise InvalidReferenceError(f"registry {text!r} has an empty path component. Fix: --registry {raw.strip('/')}")
    host, _, namespace = raw.partition("/")
    if not ("." in host or ":" in host or host == "localhost"):
        raise InvalidReferenceError(f"registry {text!r} starts with {host!r}, which is not a registry host (no dot, no "
                              "port, not localhost). Fix: name the host, e.g. docker.io/" + raw + " for Docker Hub, "
                              "ghcr.io/" + raw + " for GitHub")
    if not _host_ok(host):
        raise InvalidReferenceError(f"registry host {host!r} in {text!r} is not a valid host[:port] (letters, digits, "
                              "dots and dashes; port 1-65535)")
    for comp in namespace.split("/") if namespace else []:
        if not _COMPONENT.match(comp):
            raise InvalidReferenceError(f"namespace component {comp!r} in {text!r} is not valid: lowercase letters, digits "
                                  "and single separators (. _ -) only. Fix: e.g. " + comp.lower().replace(" ", "-"))
    return Registry(host, namespace)


def validate_repository(name: str) -> None:
    for comp in name.split("/"):
        if not _COMPONENT.match(comp):
            raise InvalidReferenceError(f"repository {name!r}: component {comp!r} is not valid (lowercase letters, digits, "
                                  "single . _ - separators)")


def image_ref(registry: Registry, repository: str, tag: str) -> str:
    """REGISTRY/REPOSITORY:TAG, every part checked."""
    validate_repository(repository)
    if not _TAG.match(tag):
        raise InvalidReferenceError(f"tag {tag!r} is not a valid Docker tag")
    name = registry.repository(repository)
    if len(name) > MAX_NAME:
        raise InvalidReferenceError(f"image name {name!r} is longer than {MAX_NAME} characters")
    return f"{name}:{tag}"
