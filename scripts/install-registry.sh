#!/usr/bin/env bash
# Install Debian's docker-registry (distribution 2.8) for the loopback push tests, if missing.
# It only installs the binary: the tests start their own instance on 127.0.0.1 with a temporary
# config and storage; the package's own system service is not used.
set -euo pipefail
if command -v docker-registry >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-registry: docker-registry is missing; install it as root: apt-get install docker-registry" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Where systemd runs, the package may also start its own service on :5000; the tests ignore it.
apt-get install -y -qq --no-install-recommends docker-registry >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-registry >/dev/null; }
command -v docker-registry >/dev/null
