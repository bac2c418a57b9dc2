"""One LightGBM thread or every core, by the size of the table: the shipped pipeline fit
on the shipped table resampled to each size, with this project's OpenMP settings (threads
that sleep while they wait, tabular_mlops.core.resources).

    python -m bench.threads [--rows 5634,25000,100000,150000,300000]

Each fit is the shipped config's model on the training split's features; the wall time
and the CPU time of the fit (every thread's), on one thread and on every core this process
may use; what `model_threads` picks for that size.
"""

import argparse
import sys
import time

import pandas as pd

from bench.pages import page
from tabular_mlops.core import data
from tabular_mlops.core.config import load_config
from tabular_mlops.core.pipeline import build_pipeline
from tabular_mlops.core.resources import available_cores, model_threads

PROJECT_CONFIG = "config/churn.yaml"


def fit_seconds(parts: data.Split, spec: data.FeatureSpec, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds of one fit of the shipped pipeline on `threads` threads."""
    config = load_config(PROJECT_CONFIG)
    pipeline = build_pipeline(spec, config.model, config.split.seed, threads)
    wall, cpu = time.perf_counter(), time.process_time()
    pipeline.fit(parts.X_train, parts.y_train)
    return time.perf_counter() - wall, time.process_time() - cpu


@page("LightGBM threads by table size")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="5634,25000,100000,150000,300000")
    args = parser.parse_args(argv)
    config = load_config(PROJECT_CONFIG)
    table = data.load_table(config.data)
    cores = available_cores()
    rows = []
    for size in (int(value) for value in args.rows.split(",")):
        total = round(size / (1 - config.split.test_size))  # `size` rows to train on
        resampled = table.raw.sample(total, replace=True, random_state=0).reset_index(drop=True)
        bigger = data.prepare(resampled, config.data)
        parts = data.split(bigger, config.split)
        fit_seconds(parts, bigger.spec, 1)  # warm: imports, OpenMP's pool
        one_wall, one_cpu = fit_seconds(parts, bigger.spec, 1)
        all_wall, all_cpu = fit_seconds(parts, bigger.spec, cores)
        rows.append(
            {
                "training rows": len(parts.y_train),
                "1 thread: wall (s)": one_wall,
                "1 thread: CPU (s)": one_cpu,
                f"{cores} threads: wall (s)": all_wall,
                f"{cores} threads: CPU (s)": all_cpu,
                f"wall, {cores} / 1": all_wall / one_wall,
                "model_threads picks": model_threads(cores, len(parts.y_train)),
            }
        )
        print(f"{len(parts.y_train)} rows done", file=sys.stderr)
    print(f"The shipped model ({config.model.n_estimators} trees) on the shipped table,")
    print("resampled; OMP_WAIT_POLICY=PASSIVE (this project's).\n")
    formats = [".0f", ".2f", ".2f", ".2f", ".2f", ".2f", ".0f"]
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=formats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
