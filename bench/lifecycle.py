"""How long the lifecycle takes, from a fresh clone, as a user types it.

    python -m bench.lifecycle [--sections chain,track,busy,pruners,openmp]

Everything runs in a temporary directory on a `git clone` of this checkout's HEAD (commit
first: uncommitted changes are not measured), with `--env-manager local` and its own
sqlite store and MLFLOW_ENV_ROOT (so the custom model's isolated environment is built as on
a new machine; uv's package cache is used as it is). Sections:

- chain: the first `mlflow run .` from an empty store, step by step (from main's
  `chain/steps.json`), then the fully cached rerun, beside the floor: `mlflow run` of an
  entry point that only imports mlflow and resumes its run.
- track: `mlflow run . -e track` at 20 and 100 trials: wall time, pruned share, scores.
- busy: `track` (20 trials) on an idle machine, then with another job using every core:
  a LightGBM training loop on OpenMP's default (spinning) wait policy, started and
  stopped by the bench. The ratio is the figure that matters.
- pruners: the same 20- and 100-trial searches with each `tuning.pruner` setting.
- openmp: five LightGBM fits the size of this project's, idle and busy: on every core
  with OpenMP's defaults, on every core with OMP_WAIT_POLICY=PASSIVE (this project's),
  and on one thread. Beside a busy job, spinning threads are erratic: run it twice.
- dataset: logging a 200k-row table as a run's input, MLflow's own way (`from_pandas`:
  schema inferred value by value, digest of the first 10,000 rows) against this
  project's (`datasets.log_dataset`: schema from a sample, digest of every row).

It prints one table per section.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_PROJECT_ENTRY_POINT

from bench import pages
from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core import resources
from tabular_mlops.core.resources import OPENMP_DEFAULTS, available_cores

logger = logging.getLogger("bench.lifecycle")
PROJECT_DIR = Path(__file__).resolve().parents[1]
EXPERIMENT = "churn"
# Each section's page (docs/benchmarks/lifecycle-<section>.md) and its title.
SECTION_TITLES = {
    "chain": "The whole chain, step by step",
    "track": "Tuning: 20 and 100 trials",
    "busy": "Tuning beside a busy job",
    "pruners": "Which pruner",
    "openmp": "OpenMP threads, idle and busy",
    "dataset": "Logging a table as a run's input",
}
SECTIONS = tuple(SECTION_TITLES)
BIG_TABLE_ROWS = 200_000
TRIALS = (20, 100)
PRUNERS = ("none", "median", "top_quartile")

# Another job on the same cores: LightGBM on every core, with OpenMP's defaults, as a
# program that does not share politely would run.
_LOAD_SCRIPT = """
import sys, numpy as np, lightgbm as lgb
rng = np.random.default_rng(0)
X = rng.normal(size=(200_000, 50)); y = (X[:, 0] + rng.normal(size=200_000) > 0).astype(int)
data = lgb.Dataset(X, y, params={"verbose": -1}); data.construct()
while True:
    lgb.train({"objective": "binary", "verbose": -1, "num_threads": int(sys.argv[1]),
               "num_leaves": 63}, data, num_boost_round=50)
"""

# Five LightGBM fits the size of this project's (4,500 rows, 40 columns, 300 trees), timed;
# the OpenMP settings come from the environment the script is started with.
_FIT_SCRIPT = """
import sys, time, numpy as np, lightgbm as lgb
rng = np.random.default_rng(1)
X = rng.normal(size=(4_500, 40)); y = (X[:, 0] + rng.normal(size=4_500) > 0).astype(int)
start = time.perf_counter()
model = lgb.LGBMClassifier(n_estimators=300, num_leaves=15, verbose=-1, n_jobs=int(sys.argv[1]))
for _ in range(5):
    model.fit(X, y)
print(time.perf_counter() - start)
"""

# The floor of any entry point: `mlflow run` starting a process that imports mlflow and
# resumes the run `mlflow run` opened.
_FLOOR_PROJECT = """name: floor
entry_points:
  main:
    command: "python -c 'import mlflow; mlflow.start_run(); mlflow.end_run()'"
"""


@dataclass(frozen=True)
class Clone:
    """A fresh clone with its own store and environment root."""

    directory: Path
    env_root: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.directory / 'mlflow.db'}"

    @property
    def environment(self) -> dict[str, str]:
        """A user's environment for `mlflow run` in this clone, on its store."""
        return os.environ | {
            "MLFLOW_ENV_ROOT": str(self.env_root),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }

    def mlflow_run(self, *arguments: str, project: Path | None = None) -> float:
        """`mlflow run <project> <arguments>` as a user types it; its wall time."""
        env = self.environment
        command = [sys.executable, "-m", "mlflow", "run", str(project or self.directory)]
        command += ["--env-manager", "local", "--experiment-name", EXPERIMENT, *arguments]
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=self.directory, env=env, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return seconds

    def newest_run(self, entry_point: str) -> mlflow.entities.Run:
        mlflow.set_tracking_uri(self.tracking_uri)
        (run,) = mlflow.search_runs(
            experiment_names=[EXPERIMENT],
            filter_string=(
                f"tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = '{entry_point}' "
                f"AND tags.`{MLFLOW_PARENT_RUN_ID}` IS NULL"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        return run

    def write_config(self, name: str, **tuning: Any) -> str:
        settings = yaml.safe_load((self.directory / "config" / "churn.yaml").read_text())
        settings["tuning"] |= tuning
        path = self.directory / "config" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))  # search order matters
        return str(path.relative_to(self.directory))


@contextmanager
def fresh_clone() -> Iterator[Clone]:
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if dirty:
        logger.warning("uncommitted changes are not measured: the bench clones HEAD")
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as scratch:
        directory = Path(scratch) / "project"
        subprocess.run(["git", "clone", "-q", str(PROJECT_DIR), str(directory)], check=True)
        yield Clone(directory, Path(scratch) / "envs")


@contextmanager
def competing_load() -> Iterator[None]:
    """Another job using every core, with OpenMP's defaults."""
    env = {k: v for k, v in os.environ.items() if k not in resources.OPENMP_DEFAULTS}
    threads = str(available_cores())
    load = subprocess.Popen([sys.executable, "-c", _LOAD_SCRIPT, threads], env=env)
    time.sleep(5)  # its data built, its training loop running
    try:
        yield
    finally:
        load.kill()
        load.wait()


def chain_section(clone: Clone) -> pd.DataFrame:
    logger.info("chain: first mlflow run . from an empty store")
    first = clone.mlflow_run()
    main_run = clone.newest_run("main")
    steps = json.loads(mlflow.artifacts.load_text(f"runs:/{main_run.info.run_id}/chain/steps.json"))
    logger.info("chain: the same again, every step cached")
    cached = clone.mlflow_run()
    floor_dir = clone.directory.parent / "floor"
    floor_dir.mkdir()
    (floor_dir / "MLproject").write_text(_FLOOR_PROJECT)
    floor = clone.mlflow_run(project=floor_dir)
    rows = [{"what": f"  {step['step']}", "seconds": step["seconds"]} for step in steps]
    in_steps = sum(step["seconds"] for step in steps)
    return pd.DataFrame(
        [
            {"what": "first `mlflow run .` (fresh clone, empty store)", "seconds": first},
            *rows,
            {"what": "  start-up, main's own work and wrap-up", "seconds": first - in_steps},
            {"what": "fully cached rerun", "seconds": cached},
            {"what": "floor: `mlflow run` of `import mlflow` + its run", "seconds": floor},
        ]
    )


def track_row(clone: Clone, label: str, *parameters: str) -> dict[str, Any]:
    seconds = clone.mlflow_run("-e", "track", *(f"-P{p}" for p in parameters))
    metrics = clone.newest_run("track").data.metrics
    trials = metrics["trials_completed"] + metrics["trials_pruned"]
    return {
        "what": label,
        "seconds": seconds,
        "trials": int(trials),
        "pruned": f"{metrics['trials_pruned'] / trials:.0%}",
        "best CV ROC AUC": metrics["best_cv_roc_auc_mean"],
        "test ROC AUC": metrics["roc_auc"],
    }


def track_section(clone: Clone) -> pd.DataFrame:
    return pd.DataFrame([track_row(clone, f"track, {n} trials", f"n_trials={n}") for n in TRIALS])


def busy_section(clone: Clone) -> pd.DataFrame:
    idle = track_row(clone, "track, 20 trials, idle machine", "n_trials=20")
    with competing_load():
        busy = track_row(clone, "track, 20 trials, another job on every core", "n_trials=20")
    ratio = {"what": "busy / idle", "seconds": busy["seconds"] / idle["seconds"]}
    return pd.DataFrame([idle, busy, ratio])


def pruners_section(clone: Clone) -> pd.DataFrame:
    rows = []
    for pruner in PRUNERS:
        config = clone.write_config(f"pruner-{pruner}", pruner=pruner)
        for trials in TRIALS:
            label = f"pruner {pruner}, {trials} trials"
            rows.append(track_row(clone, label, f"config={config}", f"n_trials={trials}"))
    return pd.DataFrame(rows)


def openmp_section() -> pd.DataFrame:
    threads = available_cores()
    bare = {k: v for k, v in os.environ.items() if k not in resources.OPENMP_DEFAULTS}
    settings = {
        f"{threads} threads, OpenMP's defaults (spin, then sleep)": (threads, bare),
        f"{threads} threads, OMP_WAIT_POLICY=PASSIVE (this project)": (
            threads,
            bare | OPENMP_DEFAULTS,
        ),
        "1 thread (as tuning fits its folds)": (1, bare | OPENMP_DEFAULTS),
    }

    def fit(threads_used: int, env: dict[str, str]) -> float:
        done = subprocess.run(
            [sys.executable, "-c", _FIT_SCRIPT, str(threads_used)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return float(done.stdout.strip())

    idle = {name: fit(*setting) for name, setting in settings.items()}
    with competing_load():
        busy = {name: fit(*setting) for name, setting in settings.items()}
    return pd.DataFrame(
        [
            {
                "5 fits of 4,500 rows": name,
                "idle (s)": idle[name],
                "beside another job (s)": busy[name],
                "busy / idle": busy[name] / idle[name],
            }
            for name in settings
        ]
    )


def dataset_section() -> pd.DataFrame:
    from tabular_mlops.core import data, tables
    from tabular_mlops.core.config import load_config
    from tabular_mlops.mlflow import datasets, runs

    shipped = load_config(PROJECT_DIR / "config" / "churn.yaml").data
    data_config = shipped.model_copy(update={"path": PROJECT_DIR / shipped.path})
    rows_read = tables.read_table(data_config.path)
    big = rows_read.sample(BIG_TABLE_ROWS, replace=True, random_state=0).reset_index(drop=True)
    table = data.prepare(big, data_config)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        with mlflow.start_run(), runs.quiet_integer_schema_hint():
            start = time.perf_counter()
            own = mlflow.data.from_pandas(table.raw, targets=table.target.name)
            mlflow.log_input(own, context="mlflow")
            rows.append({"logging a 200k-row table": "MLflow's from_pandas + log_input"})
            rows[-1]["seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            datasets.log_dataset(table)
            rows.append({"logging a 200k-row table": "this project's log_dataset"})
            rows[-1]["seconds"] = time.perf_counter() - start
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; use {SECTIONS}")
    configure_logging()
    started = time.monotonic()
    logger.info("%d cores available to this process", available_cores())
    tables: dict[str, pd.DataFrame] = {}
    with fresh_clone() as clone:
        if "chain" in sections:
            tables["chain"] = chain_section(clone)
        if "track" in sections:
            tables["track"] = track_section(clone)
        if "busy" in sections:
            tables["busy"] = busy_section(clone)
        if "pruners" in sections:
            tables["pruners"] = pruners_section(clone)
    if "openmp" in sections:
        tables["openmp"] = openmp_section()
    if "dataset" in sections:
        tables["dataset"] = dataset_section()
    took = time.monotonic() - started
    for name, table in tables.items():
        body = table.to_markdown(index=False, floatfmt=".4g")
        print(f"\n## {name}\n\n{body}")
        pages.write("lifecycle", f"lifecycle-{name}", SECTION_TITLES[name], argv or [], body, took)
    return 0


if __name__ == "__main__":
    sys.exit(main())
