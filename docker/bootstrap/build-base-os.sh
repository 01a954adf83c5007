#!/usr/bin/env bash
# Registry-less OS base: debootstrap a minimal Debian into a directory and `docker import` it.
# For air-gapped sites and machines that cannot pull from a container registry.
#
#   docker/bootstrap/build-base-os.sh [IMAGE] [SUITE] [MIRROR]
#     IMAGE  default pytorch-cuda-os:trixie   (then: make build OS_IMAGE=pytorch-cuda-os:trixie)
#     SUITE  default trixie (Python 3.13)
#     MIRROR default: debootstrap's own (set a local mirror for air-gapped sites)
#
# Idempotent: an existing IMAGE is kept unless FORCE=1.
set -euo pipefail

IMAGE=${1:-pytorch-cuda-os:trixie}
SUITE=${2:-trixie}
MIRROR=${3:-}
log() { printf '[base-os] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "ERROR: debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { log "ERROR: debootstrap missing: apt-get install debootstrap (or scripts/install-docker-engine.sh)"; exit 1; }
docker info >/dev/null 2>&1 || { log "ERROR: no Docker engine answers: run scripts/install-docker-engine.sh"; exit 1; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE exists (FORCE=1 rebuilds it)"
  exit 0
fi

root=$(mktemp -d /tmp/base-os.XXXXXX)
trap 'rm -rf "$root"' EXIT
log "debootstrap --variant=minbase $SUITE -> $root"
start=$(date +%s)
debootstrap --variant=minbase "$SUITE" "$root" ${MIRROR:+"$MIRROR"} >/tmp/base-os-debootstrap.log 2>&1 \
  || { tail -n 20 /tmp/base-os-debootstrap.log >&2; log "ERROR: debootstrap failed (full log: /tmp/base-os-debootstrap.log)"; exit 1; }
# Keep the image small and reproducible-ish: no package lists, caches or logs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/log/* "$root"/tmp/*
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase $SUITE" - "$IMAGE" >/dev/null
log "created $IMAGE in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec))"
