"""The project's library, in layers; each imports only the layers below it (import-linter's
contracts in pyproject.toml keep it so):

- `cli`: the command lines, each entry point's parameters parsed as declared, one error line
  and an exit code; `python -m tabular_mlops.cli.init` writes a config for a new table.
- `jobs`: what each entry point runs (train, tune, register, wrap, score, the chain), and
  the one declaration of their parameters (jobs.entry_points).
- `mlflow`: MLflow glue: runs, datasets, the logged models, the registry, evaluation, what
  the UI shows. It knows nothing of entry points.
- `runtime`: a step process's robustness: signals (runs end KILLED), its guardian, stale
  runs, process facts, fault points for the fault-injection tests.
- `core`: pure ML and the project's vocabulary: the config, tables, the pipeline, the CV
  search, thresholds, names of tags and artifacts. It imports no MLflow.

`steps/` (the MLproject commands) sits on top; the team stack's tooling (`team_stack/`),
the test support (`test_support/`) and the benches live outside this package.
"""

from tabular_mlops.core.resources import share_cores_politely

# Before any module of the library loads LightGBM: OpenMP reads its settings once, at load.
share_cores_politely()
