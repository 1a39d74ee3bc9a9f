#!/usr/bin/env bash
# Create .venv and install cxrlib with its dependencies, once; register the `cxrlib` Jupyter kernel.
# Sourced by run_all.sh and run_tests.sh. Re-installs only when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.cxrlib-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing cxrlib and its dependencies into .venv (first time: a few minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  "$venv/bin/python" -m ipykernel install --sys-prefix --name cxrlib --display-name "cxrlib (.venv)" >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
