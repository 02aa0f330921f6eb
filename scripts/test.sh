#!/usr/bin/env bash
# The test suite: install what is missing, then run every CPU test (GPU tests: tests/gpu/run.sh on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx vitest run "$@"
