#!/usr/bin/env bash
# The demo: install what is missing, then train a tiny LFM2 with GRPO on click-test and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/webgrpo.js train --config configs/tiny_cpu_demo.yaml --eval "$@"
