#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs pytest (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest "$@"
