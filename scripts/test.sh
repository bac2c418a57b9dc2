#!/usr/bin/env bash
# Lints and runs the whole test suite (unit and end-to-end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
# What some tests need from the system, installed as root when missing (otherwise those
# tests are skipped with a reason, or fail under CI=true): PostgreSQL for the team stack
# (scripts/stack.sh), a Java runtime for the Spark engine of batch_score, chromium for the
# test that opens MLflow's UI (Playwright drives it). The rest of the
# stack (SeaweedFS, MLflow's auth app, the compose checker) comes from pip: `.[dev]`.
packages=()
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    packages+=(postgresql)
fi
command -v java >/dev/null || packages+=(openjdk-17-jre-headless)
[ -x /usr/bin/chromium ] || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
ruff check .
ruff format --check .
pytest "$@"
