#!/usr/bin/env bash
# Install what the browser e2e test needs: Debian chromium (+ driver, fonts) and npm playwright-core.
#
# Usage: scripts/install_browser.sh [NODE_DIR]   (default: <repo>/.cache/node)
# Idempotent: skips whatever is already present. apt needs root (or sudo).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_DIR=${1:-${NODE_DIR:-$REPO/.cache/node}}
PLAYWRIGHT=playwright-core@1.64.1

if [ ! -x /usr/bin/chromium ]; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver fonts-liberation >/dev/null
fi
/usr/bin/chromium --version

if [ "$(node -p "try{require('$NODE_DIR/node_modules/playwright-core/package.json').version}catch(e){''}")" != "${PLAYWRIGHT#*@}" ]; then
    mkdir -p "$NODE_DIR"
    [ -f "$NODE_DIR/package.json" ] || echo '{"private": true}' > "$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent "$PLAYWRIGHT"
fi
echo "playwright-core $(node -p "require('$NODE_DIR/node_modules/playwright-core/package.json').version") in $NODE_DIR"
