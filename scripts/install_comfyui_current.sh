#!/usr/bin/env bash
# Install the current ComfyUI kept in the shared folder (<shared>/hosts: v0.33.0 and its tested CPU install
# script) as a second end-to-end host, plus the newer frontend 1.58.1 for the Vue-node browser test.
#
# Usage: scripts/install_comfyui_current.sh [VENV] [COMFY]
#   VENV   venv of the current server    (default: <repo>/.cache/comfy-current-venv; env SF_COMFY_CURRENT_VENV)
#   COMFY  its ComfyUI source tree       (default: <repo>/.cache/ComfyUI-current;   env SF_COMFY_CURRENT_DIR)
# The shared folder is SF_SHARED_DIR, else ../shared beside the repository. Without it this does nothing
# (a fresh machine tests on ComfyUI 0.3.75 only). Idempotent. ComfyUI (GPL-3.0) is never committed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SF_SHARED_DIR:-$REPO/../shared}
HOSTS="$SHARED/hosts"
VENV=${1:-${SF_COMFY_CURRENT_VENV:-$REPO/.cache/comfy-current-venv}}
COMFY=${2:-${SF_COMFY_CURRENT_DIR:-$REPO/.cache/ComfyUI-current}}
FRONTEND_VERSION=1.58.1
FRONTEND_DIR=${SF_FRONTEND_DIR:-$REPO/.cache/frontend-$FRONTEND_VERSION}
REQS="$REPO/requirements.txt"

if [ ! -f "$HOSTS/install_comfyui_current.sh" ]; then
    echo "no $HOSTS: end-to-end tests run on ComfyUI 0.3.75 only"
    exit 0
fi
START=$(date +%s)
bash "$HOSTS/install_comfyui_current.sh" "$VENV" "$COMFY"

# Our requirements into the server's python, never replacing its torch.
REQS_STAMP="$VENV/.sf_requirements_stamp"
REQS_HASH=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ "$(cat "$REQS_STAMP" 2>/dev/null)" != "$REQS_HASH" ]; then
    TORCH=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
    CONSTRAINTS=$(mktemp); trap 'rm -f "$CONSTRAINTS"' EXIT
    echo "torch==$TORCH" > "$CONSTRAINTS"
    "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -r "$REQS"
    echo "$REQS_HASH" > "$REQS_STAMP"
fi

# The newer frontend as static files beside the pinned one: the server picks it with --front-end-root.
if [ ! -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
    rm -rf "$FRONTEND_DIR"
    "$VENV/bin/python" -m pip install -q --no-deps --target "$FRONTEND_DIR" \
        "comfyui-frontend-package==$FRONTEND_VERSION"
fi
echo "current ComfyUI ready in $(( $(date +%s) - START )) s: $COMFY (venv $VENV), frontend $FRONTEND_VERSION in $FRONTEND_DIR"
