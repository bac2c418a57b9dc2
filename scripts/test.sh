#!/usr/bin/env bash
# Lints and runs the whole test suite (unit and end-to-end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
# The shared-study tuning test starts a throwaway PostgreSQL server; as root, install
# PostgreSQL if it is missing (otherwise that test is skipped with a reason).
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    fi
fi
ruff check .
ruff format --check .
pytest "$@"
