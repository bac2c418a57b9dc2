"""How fast `monitor` judges a batch, and in how much memory, beside `batch_score` on the
same rows, in one run.

    python -m bench.monitor [--rows 1000000] [--big-rows 3000000]

In a temporary store (bench.batch's: `train_basic` and `custom_model` on the shipped
config), `--rows` and `--big-rows` rows resampled from the shipped table with 2% nulls;
each job is `python -m steps.<job>` as a process of its own: its run's duration, rows/s and
the process's peak RSS (for Spark, the largest of its processes: driver, JVM or Python
worker). `batch_score` and `monitor` each with pandas and with Spark (`local[N]`, N the
`compute.threads` cores), the same rows; and the largest difference between the figures
the two engines' `monitor` runs logged.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from bench.batch import _PEAK_RSS_LAUNCHER, PROJECT_DIR, build_model, resampled, target_table
from bench.pages import page
from bench.serving import bench_config, temporary_store
from tabular_mlops.cli.commands import configure_logging


def job(step: str, config_path: Path, *arguments: str) -> tuple[dict[str, float], str]:
    """`python -m steps.STEP` in a process of its own: its run's seconds, its peak RSS;
    and the run's id."""
    command = [sys.executable, "-c", _PEAK_RSS_LAUNCHER, sys.executable, "-m", f"steps.{step}"]
    command += ["--config", str(config_path), *arguments]
    done = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-3000:]}")
    (run,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.entry_point = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    seconds = (run.info.end_time - run.info.start_time) / 1000
    return {"seconds": seconds, "peak RSS MB": int(done.stdout.split()[-1]) / 1024}, run.info.run_id


@page("Monitoring a batch: speed and memory")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=3_000_000)
    args = parser.parse_args(argv)
    configure_logging()
    started = time.monotonic()
    figures: dict[str, dict[str, float]] = {}
    with temporary_store("bench-monitor-") as directory:
        config = bench_config(directory)
        model_uri, _ = build_model(config)
        settings = config.model_dump(mode="json")
        settings["batch"] |= {"model_uri": model_uri}
        settings["monitoring"] |= {"model_uri": model_uri}
        config_path = directory / "bench.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        differences = {}
        for rows in (args.rows, args.big_rows):
            source = directory / f"rows-{rows}.parquet"
            resampled(rows, seed=rows).to_parquet(source, index=False)
            monitored = {}
            for engine in ("pandas", "spark"):
                output = directory / f"out-{rows}-{engine}"
                scored, _ = job(
                    "batch_score", config_path, "--input", str(source), "--output", str(output),
                    "--engine", engine,
                )  # fmt: skip
                judged, monitored[engine] = job(
                    "monitor", config_path, "--input", str(source), "--engine", engine
                )
                for name, measured in (
                    (f"batch_score {engine}", scored),
                    (f"monitor {engine}", judged),
                ):
                    figures[f"{name}, {rows:,} rows"] = measured | {
                        "rows/s": rows / measured["seconds"]
                    }
            pandas_figures = mlflow.get_run(monitored["pandas"]).data.metrics
            spark_figures = mlflow.get_run(monitored["spark"]).data.metrics
            assert pandas_figures.keys() == spark_figures.keys()
            differences[rows] = max(
                abs(pandas_figures[k] - spark_figures[k]) for k in pandas_figures
            )
    table = pd.DataFrame(figures).T
    small, big = f"{args.rows:,} rows", f"{args.big_rows:,} rows"

    def rate(job: str, rows: str, column: str = "rows/s") -> float:
        return float(table.loc[f"{job}, {rows}", column])

    ratio = rate("monitor pandas", small) / rate("batch_score pandas", small)
    rss = rate("monitor pandas", small, "peak RSS MB")
    checks = [
        (f"monitor / batch_score rows/s, pandas, {small}", ratio, ">=", 0.7),
        (f"monitor peak RSS MB, pandas, {small}", rss, "<=", 1024),
        (
            f"monitor peak RSS {big} / {small}",
            rate("monitor pandas", big, "peak RSS MB") / rss,
            "<=",
            1.1,
        ),
    ]
    checks += [
        (f"largest figure difference, spark - pandas, {rows:,} rows", difference, "<=", 1e-9)
        for rows, difference in differences.items()
    ]
    spark_ratio = rate("monitor spark", small) / rate("batch_score spark", small)
    print("\n" + table.to_markdown(floatfmt=".1f"))
    print(f"\nmonitor / batch_score rows/s, spark, {small}: {spark_ratio:.3f}")
    print("\n" + target_table(checks).to_markdown())
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
