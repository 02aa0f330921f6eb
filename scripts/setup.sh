#!/usr/bin/env bash
# Installs what a fresh machine lacks, then builds: Debian's Chromium (unless CHROMIUM_PATH points at one),
# the npm packages, the native addon (CPU backend, plus CUDA when nvcc is present) and the TypeScript.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${CHROMIUM_PATH:-}" ]; then
  [ -x "$CHROMIUM_PATH" ] || { echo "setup: CHROMIUM_PATH=$CHROMIUM_PATH is not an executable" >&2; exit 1; }
elif ! [ -x /usr/bin/chromium ]; then
  echo "setup: installing Debian's chromium (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  echo "setup: installing cmake and g++ (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake g++ >/dev/null
fi

# npm ci also builds (the package's prepare script); a later run only rebuilds what changed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm run --silent build
fi
