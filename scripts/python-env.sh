# Sourced by the scripts: sets $py to the project's Python environment (.venv, made by
# scripts/install-deps.sh: Debian's python3 with torch and numpy plus requirements/python.txt), or
# stops with one line saying how to make it. PYTHON=... overrides it.
# shellcheck shell=bash
py=${PYTHON:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python}
if [ ! -x "$py" ]; then
  echo "$(basename "$0"): $py is missing: run scripts/install-deps.sh (it makes .venv)" >&2
  exit 1
fi
