#!/bin/sh
# Install one layer's Python packages: from its hash lock when the build is locked, else from the
# matrix's pins (an explicit `imagectl build --unlocked`, labelled io.pytorch-cuda.locked=false).
#   install-layer LAYER [--index URL] -- PIN_OR_OPTION...
# Locked: /opt/pytorch-cuda/locks/LAYER.<os>-<arch>.txt with --require-hashes --no-deps: nothing is
# resolved and every file's hash is checked. Bind-mounted from the `tools` stage; in no image.
set -eu
layer=$1; shift
index=""
if [ "${1:-}" = "--index" ]; then index=$2; shift 2; fi
[ "${1:-}" = "--" ] && shift
lock="/opt/pytorch-cuda/locks/${layer}.${TARGETOS:-linux}-${TARGETARCH:-amd64}.txt"
if [ "${LOCKED:-true}" = "true" ]; then
  if [ ! -s "$lock" ]; then
    echo "ERROR: no lock $lock in the build context. Run \`imagectl lock\` where the wheel index is" \
         "reachable, or build with --unlocked." >&2
    exit 1
  fi
  echo "install-layer: $layer from $(basename "$lock") ($(grep -c '^[A-Za-z0-9]' "$lock") distributions, hashes required)"
  # the variant's index (which holds e.g. torch+cu118) next to the default one; the hashes decide
  exec /opt/tools/install-packages ${index:+--index "$index" --index-strategy unsafe-best-match} \
       --require-hashes --no-deps -r "$lock"
fi
echo "install-layer: $layer UNLOCKED: resolving $* at build time"
exec /opt/tools/install-packages ${index:+--index-url "$index"} "$@"
