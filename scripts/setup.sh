#!/usr/bin/env bash
# Installs what building and testing need on Debian/Ubuntu (idempotent, quick when done).
set -euo pipefail
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

# --- Desktop app (src-tauri/, ui/, tests/e2e) ---------------------------------------------
# WebKitGTK to build and run the Tauri shell; Xvfb + xauth to run it without a display;
# WebKitWebDriver (webkit2gtk-driver) for the end-to-end test; Node for the UI.
app_apt=()
pkg-config --exists webkit2gtk-4.1 2>/dev/null || app_apt+=(libwebkit2gtk-4.1-dev)
command -v xvfb-run >/dev/null || app_apt+=(xvfb)
command -v xauth >/dev/null || app_apt+=(xauth)
command -v WebKitWebDriver >/dev/null || app_apt+=(webkit2gtk-driver)
command -v node >/dev/null || app_apt+=(nodejs npm)
if [ ${#app_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${app_apt[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Node $node_major found; the UI build (Vite 8) needs Node 20 or newer" >&2
  exit 1
fi
# tauri-driver bridges WebDriver to WebKitWebDriver for the e2e test (~40 s to build once).
command -v tauri-driver >/dev/null || cargo install tauri-driver --locked
# Node dependencies from the committed lock files; re-run only when a lock file changed.
for dir in ui tests/e2e; do
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    npm --prefix "$dir" ci --no-audit --no-fund
  fi
done
