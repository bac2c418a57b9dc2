#!/usr/bin/env bash
# Lints and runs the whole test suite (unit and end-to-end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
ruff check .
ruff format --check .
pytest "$@"
