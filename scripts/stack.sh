#!/usr/bin/env bash
# The team's MLflow stack on this machine, no Docker needed: PostgreSQL, SeaweedFS (S3) and
# `mlflow server` with basic auth, all on 127.0.0.1, data under .stack/ (or $STACK_DIR).
#   scripts/stack.sh up | down | status
#   scripts/stack.sh user NAME trainer|viewer    (as the admin; USER_PASSWORD or a prompt)
# `up` needs MLFLOW_AUTH_ADMIN_PASSWORD (12 characters or more; there is no default).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
if [ "${1:-}" = user ]; then
    shift
    exec python -m team_stack.access "$@"
fi
exec python -m team_stack.stack "$@"
