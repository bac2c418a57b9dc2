#!/usr/bin/env bash
# Trains, evaluates, logs and registers the model on the shipped churn table:
#   mlflow run . -e train_basic
# Extra arguments go to `mlflow run` (e.g. -P n_estimators=500). ENV_MANAGER=uv runs the
# step in an isolated environment built from conda.yaml instead of the project's .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
source scripts/wheelhouse.sh
exec mlflow run . -e train_basic --env-manager "${ENV_MANAGER:-local}" --experiment-name churn "$@"
