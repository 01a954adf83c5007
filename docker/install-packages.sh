#!/bin/sh
# Install Python packages into the image's venv with uv. Used only by the Dockerfile's install
# steps, through a bind mount of the `tools` stage: neither uv nor this script is in any image.
#   - a proxy's CA bundle, given as the BuildKit secret `ca_bundle`, is trusted for this step only
#   - downloads are cached in a BuildKit cache mount (outside every layer)
#   - bytecode is compiled at install time: the venv is root-owned, so the default user could
#     never write __pycache__ and every start would recompile torch
set -eu
if [ -s /run/secrets/ca_bundle ]; then
  export SSL_CERT_FILE=/run/secrets/ca_bundle
fi
export UV_LINK_MODE=copy UV_COMPILE_BYTECODE=1 UV_CACHE_DIR=/root/.cache/uv UV_NO_PROGRESS=1 \
       UV_PYTHON_DOWNLOADS=never UV_SYSTEM_CERTS=1
exec /opt/tools/uv pip install --python /opt/venv/bin/python "$@"
