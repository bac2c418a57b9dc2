#!/usr/bin/env bash
# Creates (or updates) .venv with the project, its dependencies and its dev tools.
# Idempotent: does nothing when pyproject.toml and requirements.lock have not changed
# since the last install.
# Needs Python 3.11; set PYTHON=/path/to/python3.11 if it is not on PATH as python3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup: Python 3.11 is required; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
source scripts/wheelhouse.sh

# requirements.lock pins every package, transitive ones too; after changing pyproject.toml:
#   uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 -o requirements.lock
digest=$(cat pyproject.toml requirements.lock | "$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
stamp=".venv/.installed-$digest"
if [ ! -e "$stamp" ]; then
    echo "setup: installing the project into .venv (first time: under a minute)" >&2
    # uv (pinned in the lock) installs the lock several times faster than pip.
    uv_pin=$(grep -E '^uv==' requirements.lock | cut -d' ' -f1)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "$uv_pin"
    .venv/bin/python -m uv pip install --quiet --python .venv/bin/python -r requirements.lock
    .venv/bin/python -m uv pip install --quiet --python .venv/bin/python --no-deps -e .
    rm -f .venv/.installed-*
    touch "$stamp"
fi
