"""End to end: both registered models answer the shipped table, read as a user reads it,
in every client MLflow documents, with the same answers everywhere; what cannot be right
is refused in one line by each.

The matrix: client x model x input form. Forms: the table as `pd.read_csv` gives it
(whole-number columns int64), the same table with gaps in whole-number columns (float64,
and pandas' nullable Int64 in process). The pipeline (`churn-classifier`) answers its
class; `mlflow.sklearn.load_model` gives its probabilities, which must be the custom
model's (`churn-service`, the same pipeline) to 1e-12."""

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from steps import batch_score as batch_score_step
from tests.conftest import (
    CHURN_CSV,
    PROJECT_DIR,
    copy_of_trained_store,
    leave_no_run_behind,
    point_mlflow_at,
    post,
    served,
    shipped_config_file,
    users_environment,
)

pytestmark = pytest.mark.system
PIPELINE = "models:/churn-classifier@latest-model"
SERVICE = "models:/churn-service@champion"
TARGET = "churn"
# Whole-number columns given gaps in the second form of the table.
GAPPED = ("tenure", "senior_citizen", "paperless_billing")
CSV = "text/csv"
JSON = "application/json"


@dataclass(frozen=True)
class Store:
    directory: Path  # the store, and a copy of data/ as in the project
    uri: str
    tables: dict[str, Path]  # form -> CSV file: "plain" (as shipped), "gaps"


@pytest.fixture(scope="module")
def store(trained_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Both models, registered as `train_basic` and `custom_model` register them (made in
    process for the session: `mlflow run` of both is tested in their own modules)."""
    directory = tmp_path_factory.mktemp("clients")
    uri = copy_of_trained_store(trained_store, directory)
    (directory / "data").mkdir()
    plain = shutil.copy(CHURN_CSV, directory / "data" / CHURN_CSV.name)
    gaps = pd.read_csv(CHURN_CSV)
    for number, column in enumerate(GAPPED):
        # Written as whole numbers and empty cells, as an export from a database would.
        gaps[column] = gaps[column].astype("Int64").mask(gaps.index % 7 == number)
    gaps.to_csv(directory / "gaps.csv", index=False)
    return Store(directory, uri, {"plain": Path(plain), "gaps": directory / "gaps.csv"})


def read(store: Store, form: str, **options: Any) -> pd.DataFrame:
    """A table's model inputs as a user reads them."""
    return pd.read_csv(store.tables[form], **options).drop(columns=[TARGET])


def answers_of(model: str, predicted: Any) -> pd.DataFrame:
    """One answer per row: the class for the pipeline, the custom model's fields."""
    if model == PIPELINE:
        if isinstance(predicted, dict):
            predicted = predicted["predictions"]
        return pd.DataFrame({"class": np.asarray(predicted).ravel().astype(int)})
    if isinstance(predicted, dict) and "predictions" in predicted:
        predicted = predicted["predictions"]
    frame = pd.DataFrame(predicted)
    return frame[["probability", "decision", "risk_band"]]


def assert_same(got: pd.DataFrame, expected: pd.DataFrame, where: str) -> None:
    assert list(got.columns) == list(expected.columns), where
    assert len(got) == len(expected), where
    for column in expected.columns:
        if column == "probability":
            np.testing.assert_allclose(got[column], expected[column], rtol=0, atol=1e-12)
        else:
            assert got[column].tolist() == expected[column].tolist(), f"{where}: {column}"


@pytest.fixture(scope="module")
def expected(store: Store) -> dict[tuple[str, str], pd.DataFrame]:
    """What the models answer in process on each form, read with `pd.read_csv`."""
    mlflow.set_tracking_uri(store.uri)
    return {
        (model, form): answers_of(model, mlflow.pyfunc.load_model(model).predict(read(store, form)))
        for model in (PIPELINE, SERVICE)
        for form in store.tables
    }


def test_the_readme_notebook_call_answers(store: Store) -> None:
    """The README's first path, run as written in the project directory (MLflow's default
    store, ./mlflow.db)."""
    block = re.search(r"```python\n(# In the project directory.*?)```", readme(), re.S)
    assert block, "the README's notebook block"
    code = block.group(1) + "\nprint(len(classes), len(answers['probability']))\n"
    environment = users_environment()
    environment.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=store.directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = len(pd.read_csv(CHURN_CSV))
    assert done.stdout.split()[-2:] == [str(rows), str(rows)]


def readme() -> str:
    return (PROJECT_DIR / "README.md").read_text()


def test_in_process_every_form_gives_the_same_answers(
    store: Store, expected: dict[tuple[str, str], pd.DataFrame]
) -> None:
    mlflow.set_tracking_uri(store.uri)
    nullable = read(store, "gaps", dtype_backend="numpy_nullable")
    assert str(nullable["tenure"].dtype) == "Int64"
    assert read(store, "plain")["tenure"].dtype == np.int64
    assert read(store, "gaps")["tenure"].dtype == np.float64
    for model in (PIPELINE, SERVICE):
        loaded = mlflow.pyfunc.load_model(model)
        got = answers_of(model, loaded.predict(nullable))
        assert_same(got, expected[model, "gaps"], f"{model} Int64")
    # The pipeline's own flavor: the same pipeline the custom model wraps.
    pipeline = mlflow.sklearn.load_model(PIPELINE)
    for form in store.tables:
        rows = read(store, form)
        assert_same(
            pd.DataFrame({"class": pipeline.predict(rows).astype(int)}),
            expected[PIPELINE, form],
            f"sklearn {form}",
        )
        np.testing.assert_allclose(
            pipeline.predict_proba(rows)[:, 1],
            expected[SERVICE, form]["probability"],
            rtol=0,
            atol=1e-12,
        )


def models_predict(store: Store, model: str, source: Path, content_type: str) -> Any:
    """`mlflow models predict`, as a user types it."""
    output = source.with_suffix(f".{content_type}.{model.split(':/')[1].split('@')[0]}.out")
    command = [sys.executable, "-m", "mlflow", "models", "predict", "-m", model]
    command += ["-i", str(source), "-o", str(output), "-t", content_type]
    command += ["--env-manager", "local"]
    done = subprocess.run(
        command,
        env=users_environment() | {"MLFLOW_TRACKING_URI": store.uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return done
    return json.loads(output.read_text())


def json_request(rows: pd.DataFrame, orient: str) -> dict[str, Any]:
    """A JSON body as a client writes it: numbers as JSON numbers, gaps as null."""
    plain = json.loads(rows.to_json(orient="split", index=False))
    if orient == "dataframe_split":
        return {orient: plain}
    records = [dict(zip(plain["columns"], row, strict=True)) for row in plain["data"]]
    if orient in ("dataframe_records", "instances"):
        return {orient: records}
    return {orient: {c: [r[c] for r in records] for c in plain["columns"]}}  # inputs


def test_mlflow_models_predict_csv_and_json(
    store: Store, expected: dict[tuple[str, str], pd.DataFrame]
) -> None:
    # Two calls (each a process of ~8 s) that cover both models, both forms of the table and
    # both input kinds: the pipeline reads the plain table as CSV, the service the gapped
    # one as JSON (every other pairing is served below, and read in process).
    calls = []
    for (form, kind), model in zip(
        (("plain", "csv"), ("gaps", "json")), (PIPELINE, SERVICE), strict=True
    ):
        rows = read(store, form)
        path = store.directory / f"{form}.inputs.{kind}"
        if kind == "csv":
            rows.to_csv(path, index=False)
        else:
            path.write_text(json.dumps(json_request(rows, "dataframe_split")))
        calls.append((model, form, path, kind))
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda call: models_predict(store, call[0], call[2], call[3]), calls)
        )
    for (model, form, _, kind), result in zip(calls, results, strict=True):
        assert not isinstance(result, subprocess.CompletedProcess), result.stderr[-2000:]
        assert_same(answers_of(model, result), expected[model, form], f"predict -t {kind} {form}")


def test_mlflow_models_serve_every_request_format(
    store: Store, expected: dict[tuple[str, str], pd.DataFrame]
) -> None:
    for model in (PIPELINE, SERVICE):
        with served(store.uri, "local", store.directory / "envs", store.directory, model) as url:
            for form in store.tables:
                rows = read(store, form)
                for orient in ("dataframe_split", "dataframe_records", "instances", "inputs"):
                    body = json.dumps(json_request(rows, orient)).encode()
                    status, answer = post(url, body, JSON)
                    assert status == 200, (model, form, orient, answer)
                    assert_same(answers_of(model, answer), expected[model, form], orient)
                status, answer = post(url, rows.to_csv(index=False).encode(), CSV)
                assert status == 200, (model, form, answer)
                assert_same(answers_of(model, answer), expected[model, form], f"csv {form}")
            refusals(url)


def refusals(url: str) -> None:
    """Text in a numeric column, a required column missing: 400 with one line, in JSON and
    in CSV, as the scoring server refused them with MLflow's own enforcement."""
    rows = read_shipped().head(2)
    text = rows.assign(tenure=["12", "abc"])
    missing = rows.drop(columns=["contract"])
    for bad, line in (
        (text, "Incompatible input types for column tenure: 'abc' is not a number."),
        (missing, "Model is missing inputs ['contract']."),
    ):
        for body, kind in (
            (json.dumps(json_request(bad, "dataframe_split")).encode(), JSON),
            (bad.to_csv(index=False).encode(), CSV),
        ):
            status, answer = post(url, body, kind)
            assert status == 400, (kind, answer)
            # MLflow's server puts the request's rows before the model's own line.
            assert answer["message"].rstrip().endswith(f"Error: {line}"), answer


def read_shipped() -> pd.DataFrame:
    return pd.read_csv(CHURN_CSV).drop(columns=[TARGET])


def test_in_process_refusals_are_one_line(store: Store) -> None:
    mlflow.set_tracking_uri(store.uri)
    rows = read_shipped().head(3)
    for model in (PIPELINE, SERVICE):
        loaded = mlflow.pyfunc.load_model(model)
        for bad, line in (
            (rows.assign(tenure=["1", "2", "x"]), "'x' is not a number"),
            (rows.drop(columns=["tenure"]), "Model is missing inputs ['tenure']."),
        ):
            with pytest.raises(MlflowException) as refused:
                loaded.predict(bad)
            assert line in refused.value.message
            assert "\n" not in refused.value.message


def test_batch_score_answers_as_the_model_does(
    store: Store,
    expected: dict[tuple[str, str], pd.DataFrame],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point_mlflow_at(store.directory, monkeypatch)
    config = str(shipped_config_file(store.directory))
    try:
        for form, path in store.tables.items():
            output = store.directory / f"scores-{form}"
            argv = ["--config", config, "--input", str(path), "--output", str(output)]
            assert batch_score_step.main(argv) == 0
            written = pd.read_parquet(output)
            assert_same(
                written[["probability", "decision", "risk_band"]], expected[SERVICE, form], form
            )
        # The pipeline is not a model batch_score scores with: one line, nothing written.
        argv = ["--config", config, "--input", str(store.tables["plain"])]
        argv += ["--output", str(store.directory / "never"), "--model-uri", PIPELINE]
        assert batch_score_step.main(argv) == 1
        assert not (store.directory / "never").exists()
    finally:
        leave_no_run_behind()
