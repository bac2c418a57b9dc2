"""How fast the custom model answers, side by side with what it replaces and with the floors.

    python -m bench.serving [--rounds N] [--requests N]

In one run, in a temporary store (nothing else is touched): trains the pipeline on the
shipped churn config (`train_basic`), wraps it (`custom_model`, without the isolated-env
check), logs a no-op pyfunc with the custom model's signature, then measures

- in process, one row and 10,000 rows per call: (a) the sklearn pipeline's
  `predict_proba`, (b) the pipeline's pyfunc face, (c) the custom model's own
  `predict` (and, for reference, through the pyfunc reading its input rows),
  (d) the booster on rows already encoded: the floor;
- over HTTP, each model behind `mlflow models serve --env-manager local` (one worker, on
  loopback): single-row p50/p99 and requests/s at concurrency 1 and 8, and rows/s for
  1000-row requests, for the stock model, the custom model and the no-op model.

Calls are interleaved round by round, so drift on a shared machine hits every model
alike; figures are medians. It prints the tables and the issue's targets as ratios.
"""

import argparse
import http.client
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from tqdm import tqdm

from bench.pages import page
from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core import data
from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, ProjectConfig, load_config
from tabular_mlops.jobs.train import train_basic
from tabular_mlops.jobs.wrap import custom_model
from test_support.servers import model_server

logger = logging.getLogger("bench.serving")
PROJECT_DIR = Path(__file__).resolve().parents[1]
NOOP_MODEL_CODE = Path(__file__).with_name("noop_model.py")
BIG_BATCH = 10_000
HTTP_BATCH = 1_000
CONCURRENCY = 8
ROUNDS = 3  # of the concurrent and batch measurements, per server


@dataclass(frozen=True)
class Models:
    pipeline_uri: str  # the registered sklearn-flavor pipeline
    custom_uri: str  # the registered custom model around it
    noop_uri: str


@dataclass(frozen=True)
class Served:
    p50_ms: float
    p99_ms: float
    requests_per_second: float


def build_models(config: ProjectConfig) -> Models:
    trained = train_basic(config)
    wrapped = custom_model(config)
    custom_uri = f"models:/{config.require_custom_model().registered_model_name}/"
    custom_uri += str(wrapped.registered_version)
    signature = mlflow.models.get_model_info(custom_uri).signature
    with mlflow.start_run(run_name="bench-noop"):
        noop = mlflow.pyfunc.log_model(
            name="noop",
            python_model=str(NOOP_MODEL_CODE),
            signature=ModelSignature(signature.inputs, params=signature.params),
            pip_requirements=[f"mlflow=={mlflow.__version__}"],
        )
    pipeline_uri = f"models:/{config.tracking.registered_model_name}/"
    return Models(pipeline_uri + str(trained.registered_version), custom_uri, noop.model_uri)


def interleaved(calls: dict[str, Callable[[int], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each callable, taking turns: call(i) for i in range(rounds)."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm up
        call(0)
    for i in tqdm(range(rounds), desc="in process", leave=False):
        for name, call in calls.items():
            start = time.perf_counter()
            call(i)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def in_process(models: Models, rows: pd.DataFrame, big: pd.DataFrame, rounds: int) -> pd.DataFrame:
    pipeline = mlflow.sklearn.load_model(models.pipeline_uri)
    stock = mlflow.pyfunc.load_model(models.pipeline_uri)
    custom = mlflow.pyfunc.load_model(models.custom_uri)
    wrapper = custom.unwrap_python_model()
    # The model's own copy of its package, importable once it is loaded (from its code/).
    from tabular_custom_model.encoding import FeatureEncoder

    encoder = FeatureEncoder.from_pipeline(pipeline)  # the wrapper's first step, alone
    booster = pipeline.steps[-1][1].booster_
    singles = [rows.iloc[[i]] for i in range(min(len(rows), rounds))]
    encoded = pipeline[:-1].transform(rows.head(len(singles)))  # once, not row by row
    encoded_singles = [encoded[[i]] for i in range(len(singles))]
    encoded_big = pipeline[:-1].transform(big)
    names = {
        "pipeline": "(a) sklearn pipeline predict_proba",
        "stock": "(b) the pipeline's pyfunc predict (inputs read, then the pipeline)",
        "custom": "(c) custom model's own predict",
        "custom_pyfunc": "    the same through the pyfunc",
        "encode": "    of which: encoding the rows",
        "booster": "(d) booster on encoded rows (floor)",
    }
    one = interleaved(
        {
            "pipeline": lambda i: pipeline.predict_proba(singles[i % len(singles)]),
            "stock": lambda i: stock.predict(singles[i % len(singles)]),
            "custom": lambda i: wrapper.predict(None, singles[i % len(singles)]),
            "custom_pyfunc": lambda i: custom.predict(singles[i % len(singles)]),
            "encode": lambda i: encoder.encode(singles[i % len(singles)]),
            "booster": lambda i: booster.predict(encoded_singles[i % len(singles)]),
        },
        rounds,
    )
    many = interleaved(
        {
            "pipeline": lambda i: pipeline.predict_proba(big),
            "stock": lambda i: stock.predict(big),
            "custom": lambda i: wrapper.predict(None, big),
            "custom_pyfunc": lambda i: custom.predict(big),
            "encode": lambda i: encoder.encode(big),
            "booster": lambda i: booster.predict(encoded_big),
        },
        max(5, rounds // 40),
    )
    table = pd.DataFrame(
        {
            "1 row: ms": {key: 1e3 * statistics.median(one[key]) for key in names},
            f"{BIG_BATCH} rows: ms": {key: 1e3 * statistics.median(many[key]) for key in names},
        }
    )
    table[f"{BIG_BATCH} rows: rows/s"] = BIG_BATCH / (table[f"{BIG_BATCH} rows: ms"] / 1e3)
    return table.rename(index=names)


def request_body(rows: pd.DataFrame) -> bytes:
    split = json.loads(rows.to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": split}).encode()


class Client:
    """One keep-alive connection to a scoring server's /invocations."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def post(self, body: bytes) -> float:
        """Seconds until the whole answer is read; fails on anything but 200."""
        start = time.perf_counter()
        self._connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer[:500]!r}")
        return elapsed

    def close(self) -> None:
        self._connection.close()


def load(url: str, bodies: list[bytes], requests: int, concurrency: int) -> Served:
    """`requests` POSTs spread over `concurrency` connections, each sending in turn."""
    latencies: list[float] = []
    lock = threading.Lock()

    def send(worker: int) -> None:
        client = Client(url)
        mine = [
            client.post(bodies[(worker + i) % len(bodies)])
            for i in range(worker, requests, concurrency)
        ]
        client.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=send, args=(w,)) for w in range(concurrency)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if len(latencies) != requests:
        raise RuntimeError(f"{requests - len(latencies)} requests failed (see the log)")
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return Served(float(p50), float(p99), requests / elapsed)


@contextmanager
def serving(models: Models, directory: Path) -> Iterator[dict[str, str]]:
    """The three models served at once (their start-up overlaps); idle ones cost nothing."""
    uris = {"no-op": models.noop_uri, "stock": models.pipeline_uri, "custom": models.custom_uri}
    # The no-op model is not code the project ships: served only by a config that trusts
    # its author (this bench).
    trusting = directory / "trusting.yaml"
    shipped = Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_PATH
    trusting.write_text(f"extends: {shipped}\ntrust:\n  allow_pickle: true\n")
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                model_server(
                    uri,
                    "local",
                    directory / f"{name}.log",
                    options=["--config", str(trusting)] if name == "no-op" else [],
                )
            )
            for name, uri in uris.items()
        }
        yield urls


def over_http(urls: dict[str, str], rows: pd.DataFrame, requests: int) -> pd.DataFrame:
    singles = [request_body(rows.iloc[[i]]) for i in range(min(len(rows), 200))]
    batches = [
        request_body(rows.sample(HTTP_BATCH, replace=True, random_state=i)) for i in range(4)
    ]
    for url in urls.values():  # warm up
        load(url, singles, 20, 1)
        load(url, batches, 2, 1)
    # Concurrency 1: one request to each server in turn, so drift hits all alike.
    clients = {name: Client(url) for name, url in urls.items()}
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    for i in tqdm(range(requests), desc="over HTTP, one at a time", leave=False):
        for name, client in clients.items():
            latencies[name].append(client.post(singles[i % len(singles)]))
    for client in clients.values():
        client.close()
    # Concurrency 8 and batches: whole rounds per server, servers taking turns.
    loaded: dict[str, list[Served]] = {name: [] for name in urls}
    batched: dict[str, list[Served]] = {name: [] for name in urls}
    for _ in tqdm(range(ROUNDS), desc=f"over HTTP, {CONCURRENCY} at a time", leave=False):
        for name, url in urls.items():
            loaded[name].append(load(url, singles, requests, CONCURRENCY))
            batched[name].append(load(url, batches, max(4, requests // 40), 1))
    return pd.DataFrame(
        {
            name: {
                "p50 ms": 1e3 * float(np.percentile(latencies[name], 50)),
                "p99 ms": 1e3 * float(np.percentile(latencies[name], 99)),
                "req/s c=1": len(latencies[name]) / sum(latencies[name]),
                f"p50 ms c={CONCURRENCY}": statistics.median(r.p50_ms for r in loaded[name]),
                f"req/s c={CONCURRENCY}": statistics.median(
                    r.requests_per_second for r in loaded[name]
                ),
                f"{HTTP_BATCH}-row rows/s": HTTP_BATCH
                * statistics.median(r.requests_per_second for r in batched[name]),
            }
            for name in urls
        }
    ).T


def targets(local: pd.DataFrame, served: pd.DataFrame) -> pd.DataFrame:
    """The issue's targets, each as measured against its bound."""
    custom, booster = "(c) custom model's own predict", "(d) booster on encoded rows (floor)"
    one, rate = local["1 row: ms"], local[f"{BIG_BATCH} rows: rows/s"]
    checks = [
        ("custom predict, 1 row (ms)", one[custom], "<=", 1.0),
        ("custom / booster, 1 row (time)", one[custom] / one[booster], "<=", 6.0),
        (f"custom / booster, {BIG_BATCH} rows (rows/s)", rate[custom] / rate[booster], ">=", 0.9),
        (
            "served custom / no-op, p50",
            served.at["custom", "p50 ms"] / served.at["no-op", "p50 ms"],
            "<=",
            1.3,
        ),
        (
            "served custom / stock, req/s c=1",
            served.at["custom", "req/s c=1"] / served.at["stock", "req/s c=1"],
            ">=",
            1.6,
        ),
        (
            f"served custom / stock, req/s c={CONCURRENCY}",
            served.at["custom", f"req/s c={CONCURRENCY}"]
            / served.at["stock", f"req/s c={CONCURRENCY}"],
            ">=",
            1.6,
        ),
        (
            f"served custom / stock, {HTTP_BATCH}-row rows/s",
            served.at["custom", f"{HTTP_BATCH}-row rows/s"]
            / served.at["stock", f"{HTTP_BATCH}-row rows/s"],
            ">=",
            1.0,
        ),
    ]
    return pd.DataFrame(
        [
            {
                "target": name,
                "measured": value,
                "bound": f"{op} {bound}",
                "met": value <= bound if op == "<=" else value >= bound,
            }
            for name, value, op, bound in checks
        ]
    ).set_index("target")


@contextmanager
def temporary_store(prefix: str) -> Iterator[Path]:
    """A temporary directory holding a bench's sqlite store, and its artifacts: it is the
    working directory meanwhile."""
    home = Path.cwd()
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        directory = Path(scratch)
        os.chdir(directory)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{directory / 'mlflow.db'}"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        try:
            yield directory
        finally:
            os.chdir(home)


def bench_config(directory: Path) -> ProjectConfig:
    return load_config(
        PROJECT_DIR / DEFAULT_CONFIG_PATH,
        {
            "data.path": str(PROJECT_DIR / "data" / "wa_churn.csv"),
            "model_code.package_dir": str(PROJECT_DIR / "custom_model"),
            "model_code.wheel_dir": str(directory / "wheels"),
            "custom_model.check_env_manager": "none",
        },
    )


@page("Serving: latency, throughput and memory")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=400, help="in-process single-row calls per model"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=400,
        help="single-row HTTP requests per model and concurrency",
    )
    args = parser.parse_args(argv)
    configure_logging()
    started = time.monotonic()
    with temporary_store("bench-serving-") as directory:
        config = bench_config(directory)
        logger.info("building the models in %s", directory)
        models = build_models(config)
        parts = data.split(data.load_table(config.data), config.split)
        rows = parts.X_test.reset_index(drop=True)
        big = rows.sample(BIG_BATCH, replace=True, random_state=0).reset_index(drop=True)
        with serving(models, directory) as urls:
            logger.info("measuring in process")
            local = in_process(models, rows, big, args.rounds)
            logger.info("measuring over HTTP: %s", urls)
            served = over_http(urls, rows, args.requests)
    print_report(config, local, served, targets(local, served), time.monotonic() - started)
    return 0


def print_report(
    config: ProjectConfig,
    local: pd.DataFrame,
    served: pd.DataFrame,
    goals: pd.DataFrame,
    seconds: float,
) -> None:
    def show(title: str, table: pd.DataFrame, digits: int) -> None:
        print(f"\n{title}\n{table.to_markdown(floatfmt=f'.{digits}f')}")

    print(
        f"\nchurn pipeline: {config.model.n_estimators} trees, {config.model.num_leaves} leaves; "
        f"{os.cpu_count()} CPUs; medians"
    )
    show("In process (per call)", local, 3)
    show("Over HTTP: mlflow models serve --env-manager local, 1 worker, loopback", served, 1)
    show("Targets", goals, 2)
    print(f"\n{int(goals['met'].sum())} of {len(goals)} targets met; bench took {seconds:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
