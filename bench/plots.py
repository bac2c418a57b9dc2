"""MLflow's evaluation of the shipped model, on matplotlib's stock Agg backend and on the
project's (core.agg_once: each saved figure drawn once, not again after saving).

    python -m bench.plots [--repeats 5]

The shipped pipeline is fit on the shipped table's training split and logged to a scratch
store; each evaluation is `mlflow.models.evaluate` on the test split as the project calls
it (its five plots, no SHAP), the two backends alternating in one process.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import mlflow
import pandas as pd

from bench.pages import page
from tabular_mlops.core import data
from tabular_mlops.core.config import load_config
from tabular_mlops.core.pipeline import build_pipeline
from tabular_mlops.core.plots import BACKEND, pyplot
from tabular_mlops.mlflow.shipped_code import skops_trusted_types

PROJECT_CONFIG = "config/churn.yaml"
BACKENDS = {"Agg (stock)": "Agg", "agg_once (the project's)": BACKEND}


def evaluation_seconds(model_uri: str, test: pd.DataFrame) -> tuple[float, float]:
    """Wall and CPU seconds of one evaluation, as tabular_mlops.mlflow.evaluation runs it."""
    wall, cpu = time.perf_counter(), time.process_time()
    with mlflow.start_run():
        mlflow.models.evaluate(
            model=model_uri,
            data=test,
            targets="label",
            model_type="classifier",
            evaluators="default",
            evaluator_config={"pos_label": True, "log_model_explainability": False},
        )
    return time.perf_counter() - wall, time.process_time() - cpu


@page("MLflow's evaluation plots: drawn once")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    config = load_config(PROJECT_CONFIG)
    prepared = data.prepare(data.load_table(config.data).raw, config.data)
    parts = data.split(prepared, config.split)
    pipeline = build_pipeline(prepared.spec, config.model, config.split.seed, 1)
    pipeline.fit(parts.X_train, parts.y_train)
    test = parts.X_test.assign(label=parts.y_test.to_numpy().astype(bool))
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in BACKENDS}
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{Path(scratch) / 'mlflow.db'}")
        with mlflow.start_run():
            model_uri = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                skops_trusted_types=skops_trusted_types(config.model_code.package_dir),
            ).model_uri
        pyplot()
        evaluation_seconds(model_uri, test)  # warm: imports, fonts
        for _ in range(args.repeats):
            for name, backend in BACKENDS.items():
                matplotlib.use(backend)
                timings[name].append(evaluation_seconds(model_uri, test))
    stock = statistics.median(cpu for _, cpu in timings["Agg (stock)"])
    rows = [
        {
            "backend": name,
            "wall per evaluation (s, median)": statistics.median(wall for wall, _ in seconds),
            "CPU per evaluation (s, median)": statistics.median(cpu for _, cpu in seconds),
            "CPU / stock": statistics.median(cpu for _, cpu in seconds) / stock,
        }
        for name, seconds in timings.items()
    ]
    print(f"{len(test)} test rows, {args.repeats} evaluations per backend, alternating.\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=("", ".2f", ".2f", ".2f")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
