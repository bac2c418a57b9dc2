#!/usr/bin/env bash
# A night of the loop: score a batch, judge it, and on `retrain` run the chain on the
# night's labelled rows (the gate decides as usual):
#   scripts/nightly.sh --input night.csv [--labels outcomes.csv] [-P n_trials=20]
# Options: python -m tabular_mlops.cli.nightly --help. Exit code 3: retrain, labels needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
source .venv/bin/activate
exec python -m tabular_mlops.cli.nightly "$@"
