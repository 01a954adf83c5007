#!/usr/bin/env bash
# Install (if missing) and start a Docker engine with the buildx plugin on a Debian host.
# Idempotent: safe to run again; it only does what is missing.
#   - engine: Debian's docker.io (dockerd with BuildKit built in)
#   - buildx: the docker-buildx .deb from Debian trixie when the host's own suite has none
#     (it needs only libc6 >= 2.34), unpacked with dpkg -x so no trixie package is installed
#   - debootstrap: for the registry-less OS base (make base-os)
set -euo pipefail

log() { printf '[install-docker-engine] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"
command -v apt-get >/dev/null || die "this script supports Debian/Ubuntu hosts (apt-get not found)"

PLUGIN_DIR=/usr/libexec/docker/cli-plugins
APT_UPDATED=0
apt_update() { [ "$APT_UPDATED" = 1 ] || { apt-get update -qq; APT_UPDATED=1; }; }

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v curl >/dev/null || need_pkgs+=(curl)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! docker buildx version >/dev/null 2>&1; then
  apt_update
  if apt-cache show docker-buildx >/dev/null 2>&1 && \
     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-buildx >/dev/null 2>&1 && \
     docker buildx version >/dev/null 2>&1; then
    log "buildx installed from the host's own suite"
  else
    # Take the archive URL from the host's apt sources and fetch trixie's docker-buildx .deb.
    uri=$(grep -hoE '(URIs:|deb)\s+https?://[^ ]+/debian/?' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
          | grep -oE 'https?://[^ ]+' | head -n1 || true)
    uri=${uri:-http://deb.debian.org/debian}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/deb"
    echo "deb $uri trixie main" > "$tmp/trixie.list"
    opts=(-o "Dir::Etc::SourceList=$tmp/trixie.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$tmp/lists" -o Debug::NoLocking=1)
    log "fetching docker-buildx from $uri (trixie)"
    apt-get "${opts[@]}" update -qq
    (cd "$tmp/deb" && apt-get "${opts[@]}" download docker-buildx >/dev/null)
    dpkg -x "$tmp"/deb/docker-buildx_*.deb "$tmp/root"
    mkdir -p "$PLUGIN_DIR"
    install -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-buildx" "$PLUGIN_DIR/docker-buildx"
  fi
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 30 /var/log/dockerd.log >&2 || true; die "dockerd did not answer within 60 s"; }
fi

log "engine $(docker version --format '{{.Server.Version}}'), $(docker buildx version | head -n1)"
