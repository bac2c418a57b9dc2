#!/usr/bin/env bash
# Creates (or updates) .venv with the project, its dependencies and its dev tools.
# Idempotent: does nothing when pyproject.toml has not changed since the last install.
# Needs Python 3.11; set PYTHON=/path/to/python3.11 if it is not on PATH as python3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup: Python 3.11 is required; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

digest=$("$python" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest()[:16])')
stamp=".venv/.installed-$digest"
if [ ! -e "$stamp" ]; then
    echo "setup: installing the project into .venv (first time: about a minute)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
