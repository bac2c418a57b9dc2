#!/usr/bin/env bash
# The serving image of a registered model, on a host with Docker:
#   deploy/model/build.sh models:/churn-service@champion [IMAGE]
# resolves the alias to a version, checks the model, writes the build context in
# build/image (replaced), and builds IMAGE (default tabular-mlops/NAME) tagged v<version>.
# Tracking server and credentials: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
model_uri=${1:?usage: deploy/model/build.sh models:/NAME@ALIAS [IMAGE]}
scripts/setup.sh
context=build/image
if [ -f "$context/image.json" ]; then rm -rf "$context"; fi  # only a context this script wrote
.venv/bin/python -m tabular_mlops.cli.image "$model_uri" "$context"
facts() { .venv/bin/python -c "import json, sys; print(json.load(open('$context/image.json'))[sys.argv[1]])" "$1"; }
name=$(facts model_name)
version=$(facts model_version)
image=${2:-tabular-mlops/$name}
args=()
for key in model_name model_version model_alias model_id run_id git_commit; do
    args+=(--build-arg "${key^^}=$(facts "$key")")
done
docker build "${args[@]}" -t "$image:v$version" "$context"
echo "built $image:v$version; serve it: MODEL_IMAGE=$image:v$version docker compose -f deploy/serving/docker-compose.yml up -d"
