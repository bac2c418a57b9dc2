"""The `custom_model` step and the wrapper in-process, against a real sqlite store."""

import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import tabular_custom_model
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, Schema
from sklearn.metrics import confusion_matrix

from tabular_mlops.cli.commands import parser_for
from tabular_mlops.core import data
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import ConfigError, PromotionError
from tabular_mlops.core.model_sections import CostMatrix, DecisionConfig
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.core.pipeline import build_pipeline, input_column_of_encoded_features
from tabular_mlops.core.sections import TrustConfig
from tabular_mlops.core.thresholds import expected_cost, tune_threshold
from tabular_mlops.jobs import checks
from tabular_mlops.jobs.entry_points import CUSTOM_MODEL
from tabular_mlops.jobs.register import register
from tabular_mlops.jobs.train import TrainResult, train_basic
from tabular_mlops.jobs.wrap import CustomModelResult, custom_model
from tabular_mlops.mlflow import (
    deserialization,
    pipeline_model,
    registry,
    service_model,
    shipped_code,
)
from tabular_mlops.runtime import processes
from tests.conftest import (
    PROJECT_DIR,
    leave_no_run_behind,
    pickled_copy_of,
    point_mlflow_at,
    shipped_config,
)

SERVICE = "churn-service"

# Trains, logs and registers for real, in process: not in the fast tier.
TRAINS = pytest.mark.integration


def config_for(overrides: dict[str, Any] | None = None) -> ProjectConfig:
    """The shipped config with absolute paths; no isolated-env check (the e2e tests run it)."""
    base = {"tracking.registered_model_name": "trainer", "custom_model.check_env_manager": "none"}
    return shipped_config(base | (overrides or {}))


@dataclass(frozen=True)
class Wrapped:
    directory: Path
    trained: TrainResult
    result: CustomModelResult


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wrapped]:
    """A trained pipeline (alias latest-model only) and the custom model around it."""
    directory = tmp_path_factory.mktemp("custom")
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_mlflow_at(directory, monkeypatch)
        config = config_for({"model_code.wheel_dir": str(directory / "wheels")})
        trained = train_basic(config)
        result = custom_model(config)
        yield Wrapped(directory, trained, result)
        leave_no_run_behind()


@pytest.fixture
def store(wrapped: Wrapped, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wrapped]:
    point_mlflow_at(wrapped.directory, monkeypatch)
    yield wrapped
    leave_no_run_behind()


def held_out_rows() -> pd.DataFrame:
    config = config_for()
    return data.split(data.load_table(config.data), config.split).X_test


# What gets logged and registered


@TRAINS
def test_wraps_the_fallback_alias_and_registers_with_champion(store: Wrapped) -> None:
    result = store.result
    # No `champion` on the pipeline yet: its `latest-model` version was wrapped.
    assert result.source_uri == f"models:/trainer/{store.trained.registered_version}"
    assert registry.aliases(SERVICE) == {"champion": 1}
    version = mlflow.MlflowClient().get_model_version(SERVICE, "1")
    assert version.run_id == result.run_id and version.tags[Tag.REVIEW] == "passed"
    run = mlflow.get_run(result.run_id)
    assert run.data.tags[Tag.SOURCE_MODEL_URI] == result.source_uri
    assert run.data.tags[Tag.CHECKS] == "in_process, fresh_process"
    assert run.data.metrics["threshold"] == result.threshold
    assert 0.05 < result.threshold < 0.5  # false negatives cost 5x false positives
    assert run.data.metrics["expected_cost"] < run.data.metrics["positive_rate"]


@TRAINS
def test_logged_model_carries_its_code_wheel_and_pipeline_without_pickle(store: Wrapped) -> None:
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{SERVICE}/1"))
    code = sorted(path.name for path in (model_dir / "code").iterdir())
    (wheel,) = [name for name in code if name.endswith(".whl")]
    assert wheel.startswith(
        f"tabular_custom_model-0.1.0+{shipped_code.content_hash(PROJECT_DIR / 'custom_model')}"
    )
    assert "tabular_custom_model" in code
    requirements = (model_dir / "requirements.txt").read_text().splitlines()
    assert requirements[-1] == f"code/{wheel}"
    assert "mlflow==3.17.2" in requirements
    assert not any(line.startswith("tabular") for line in requirements[:-1])
    assert not list(model_dir.rglob("*.pkl"))  # models from code; the pipeline is skops
    assert (model_dir / "artifacts" / "pipeline" / "model.skops").is_file()
    info = mlflow.models.get_model_info(f"models:/{SERVICE}/1")
    assert info.flavors["python_function"]["model_code_path"].endswith("model_code.py")
    assert [column.name for column in info.signature.outputs] == [
        "probability", "decision", "risk_band", "unseen_categories", "reasons", "model_name",
        "model_version",
    ]  # fmt: skip
    params = {param.name: param.default for param in info.signature.params}
    assert params == {"threshold": store.result.threshold, "explain": False, "top_k": 3}


@TRAINS
def test_checks_are_logged_identical(store: Wrapped) -> None:
    report = mlflow.artifacts.load_dict(f"runs:/{store.result.run_id}/{Artifact.CHECKS}")
    assert set(report) == {"in_process", "fresh_process"}
    assert report["fresh_process"] == report["in_process"]
    answer = report["in_process"]["predictions"]  # columnar: one list per output
    assert len(answer["probability"]) == 5
    assert all(len(reasons) == 3 for reasons in answer["reasons"])
    assert set(answer["model_version"]) == {"1"}


# What the model answers


@TRAINS
def test_answers_match_the_pipeline_and_the_settings(store: Wrapped) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{SERVICE}@champion")
    pipeline = mlflow.sklearn.load_model(store.result.source_uri)
    rows = held_out_rows()
    answer = model.predict(rows)
    probability = pipeline.predict_proba(rows)[:, 1]
    assert set(answer) == {column.name for column in model.metadata.signature.outputs}
    assert {len(values) for values in answer.values()} == {len(rows)}
    np.testing.assert_array_equal(answer["probability"], probability)  # to the last bit
    np.testing.assert_array_equal(answer["decision"], probability >= store.result.threshold)
    expected_band = np.where(
        probability < 0.3, "low", np.where(probability < 0.6, "medium", "high")
    )
    np.testing.assert_array_equal(answer["risk_band"], expected_band)
    assert set(answer["reasons"]) == {None}  # not asked
    assert set(answer["unseen_categories"]) == {None}
    assert set(answer["model_name"]) == {SERVICE} and set(answer["model_version"]) == {"1"}

    strict = model.predict(rows, params={"threshold": 0.9})
    np.testing.assert_array_equal(strict["decision"], probability >= 0.9)


@TRAINS
def test_both_models_load_with_mlflows_pickle_switch_off(store: Wrapped) -> None:
    """Their code loads the pipeline with the shipped list of skops types: neither needs
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION, which MLflow's own sklearn loader does."""
    rows = held_out_rows()
    with deserialization.forbidden(allow_pickle=False):
        service = mlflow.pyfunc.load_model(f"models:/{SERVICE}/1").predict(rows)
        pipeline = mlflow.pyfunc.load_model(store.result.source_uri).predict(rows)
        with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
            mlflow.sklearn.load_model(store.result.source_uri)
    assert len(service["probability"]) == len(pipeline) == len(rows)
    assert set(np.unique(pipeline)) <= {0, 1}  # the pipeline's classes


@TRAINS
def test_reasons_are_input_columns_with_signed_contributions(store: Wrapped) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{SERVICE}/1")
    pipeline = mlflow.sklearn.load_model(store.result.source_uri)
    rows = held_out_rows().head(50)
    answer = model.predict(rows, params={"explain": True, "top_k": 19})
    # Independently: LightGBM's contributions, one-hot columns summed per input column.
    raw = pd.DataFrame(
        pipeline.predict(rows, pred_contrib=True)[:, :-1],
        columns=input_column_of_encoded_features(pipeline),
    )
    per_input = raw.T.groupby(level=0).sum().T
    for (_, expected), reasons in zip(per_input.iterrows(), answer["reasons"], strict=True):
        got = {reason["feature"]: reason["contribution"] for reason in reasons}
        assert got == pytest.approx(expected.to_dict(), abs=1e-12)
        sizes = [abs(reason["contribution"]) for reason in reasons]
        assert sizes == sorted(sizes, reverse=True)
    assert any(reason["contribution"] < 0 for reason in answer["reasons"][0])  # signed

    top = model.predict(rows.head(2), params={"explain": True, "top_k": 2})
    assert [len(reasons) for reasons in top["reasons"]] == [2, 2]


@TRAINS
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"threshold": 1.5}, "params.threshold must be between 0 and 1, got 1.5"),
        ({"top_k": 0}, "params.top_k must be at least 1, got 0"),
    ],
)
def test_bad_params_are_refused(store: Wrapped, params: dict[str, Any], message: str) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{SERVICE}/1")
    with pytest.raises(MlflowException, match=message):
        model.predict(held_out_rows().head(1), params=params)


@TRAINS
def test_requests_over_the_row_limit_are_refused(store: Wrapped) -> None:
    rows = held_out_rows().head(3)
    logged = mlflow.pyfunc.load_model(f"models:/{SERVICE}/1")
    assert len(logged.predict(rows)["probability"]) == 3  # the config's limit: 10000
    # The limit is `custom_model.max_rows`, logged as model_config; loading may override it.
    strict = mlflow.pyfunc.load_model(f"models:/{SERVICE}/1", model_config={"max_rows": 2})
    with pytest.raises(MlflowException, match="the request has 3 rows; this model takes at most 2"):
        strict.predict(rows)
    assert strict.predict(rows.head(0))["probability"] == []


@TRAINS
def test_version_is_unknown_when_not_loaded_from_the_registry(store: Wrapped) -> None:
    # By its model id, not by a registered name and version.
    answer = mlflow.pyfunc.load_model(store.result.model_uri).predict(held_out_rows().head(1))
    assert answer["model_name"] == [SERVICE]
    assert answer["model_version"] == [None]


# Choosing the pipeline, and checks that fail


@TRAINS
def test_a_wrapper_run_is_never_a_register_candidate(store: Wrapped) -> None:
    # Same experiment, data and split, a logged model and even the best ROC AUC (its
    # metric is the pipeline's; raised here): still not a pipeline.
    mlflow.MlflowClient().log_metric(store.result.run_id, "roc_auc", 0.99, step=1)
    config = config_for({"tracking.registered_model_name": "registered"})
    decision = register(config).decision
    assert decision.candidate_run_id == store.trained.run_id
    assert mlflow.get_run(store.result.run_id).data.tags[Tag.MODEL_TYPE] == "pyfunc-wrapper"


@TRAINS
def test_champion_is_preferred_and_a_missing_alias_is_a_clear_error(store: Wrapped) -> None:
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("trainer", "champion", str(store.trained.registered_version))
    uri = registry.first_alias_version_uri("trainer", ["champion", "latest-model"])
    assert uri == f"models:/trainer/{store.trained.registered_version}"
    with pytest.raises(PromotionError, match="no version of 'nothing' has alias 'champion' or"):
        registry.first_alias_version_uri("nothing", ["champion", "latest-model"])


@TRAINS
def test_a_model_answering_differently_elsewhere_gets_no_alias(
    store: Wrapped, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tampered(model_dir: Path, timeout_seconds: float) -> dict[str, Any]:
        answer = checks.predict_in_process(model_dir)
        answer["predictions"]["probability"][0] += 1e-12
        return answer

    monkeypatch.setattr(checks, "predict_in_fresh_process", tampered)
    config = config_for(
        {
            "custom_model.registered_model_name": "tampered",
            "model_code.wheel_dir": str(store.directory / "wheels"),
        }
    )
    with pytest.raises(PromotionError, match="answer in fresh_process differs from the in-proc"):
        custom_model(config, model_uri=store.result.source_uri)
    assert registry.aliases("tampered") == {}
    version = mlflow.MlflowClient().get_model_version("tampered", "1")
    assert version.tags[Tag.REVIEW] == "failed_check"


@TRAINS
def test_a_check_that_does_not_answer_in_time_gets_no_alias(store: Wrapped) -> None:
    config = config_for(
        {
            "custom_model.registered_model_name": "slow",
            "model_code.wheel_dir": str(store.directory / "wheels"),
            "custom_model.check_timeout_seconds": 0.05,
        }
    )
    with pytest.raises(PromotionError, match=r"fresh_process: .* did not answer within 0\.05 s"):
        custom_model(config, model_uri=store.result.source_uri)
    assert registry.aliases("slow") == {}
    version = mlflow.MlflowClient().get_model_version("slow", "1")
    assert version.tags[Tag.REVIEW] == "failed_check"


def test_a_check_process_out_of_time_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child_pid)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"^sleeper did not answer within 2 s"):
        checks._finish(checks._start([sys.executable, "-c", script], str(tmp_path)), "sleeper", 2)
    assert time.monotonic() - started < 10
    # Killed with its group (SIGKILL lands at once, the teardown may take a moment): gone,
    # or a zombie waiting for whoever adopted it.
    grandchild = int(child_pid.read_text())
    deadline = time.monotonic() + 5
    while processes.is_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes.is_alive(grandchild)


@TRAINS
def test_a_pickled_pipeline_is_wrapped_only_if_its_author_is_trusted(store: Wrapped) -> None:
    pickled = pickled_copy_of(store.trained.run_id)
    config = config_for(
        {
            "custom_model.registered_model_name": "from-pickle",
            "model_code.wheel_dir": str(store.directory / "wheels"),
            "custom_model.check_env_manager": "none",
        }
    )
    with pytest.raises(PromotionError, match=r"saved with 'cloudpickle', not skops: loading"):
        custom_model(config, model_uri=pickled.model_uri)
    assert not mlflow.MlflowClient().search_registered_models("name = 'from-pickle'")
    trusting = config.model_copy(update={"trust": TrustConfig(allow_pickle=True)})
    result = custom_model(trusting, model_uri=pickled.model_uri)
    assert registry.aliases("from-pickle") == {"champion": result.registered_version}


# Parts


def test_wheel_version_follows_the_content(tmp_path: Path) -> None:
    package = tmp_path / "package"
    shutil.copytree(PROJECT_DIR / "custom_model", package)
    first = shipped_code.build_wheel(package, tmp_path / "wheels")
    assert shipped_code.build_wheel(package, tmp_path / "wheels") == first  # reused
    (package / "src" / "tabular_custom_model" / "model.py").write_text(
        (package / "src" / "tabular_custom_model" / "model.py").read_text() + "\n# changed\n"
    )
    second = shipped_code.build_wheel(package, tmp_path / "wheels")
    assert second != first and second.is_file()
    assert second.name.startswith("tabular_custom_model-0.1.0+")


def test_a_broken_wheel_is_rebuilt_and_an_intact_one_reused(tmp_path: Path) -> None:
    package = tmp_path / "package"
    shutil.copytree(PROJECT_DIR / "custom_model", package)
    wheel = shipped_code.build_wheel(package, tmp_path / "wheels")
    intact = wheel.read_bytes()
    assert sorted(p.name for p in wheel.parent.iterdir()) == [wheel.name, f"{wheel.name}.sha256"]
    wheel.write_bytes(intact[: len(intact) // 2])  # a copy cut short
    assert shipped_code.build_wheel(package, tmp_path / "wheels") == wheel
    assert wheel.read_bytes() == intact  # rebuilt: the build is reproducible
    built_at = wheel.stat().st_mtime_ns
    assert shipped_code.build_wheel(package, tmp_path / "wheels") == wheel
    assert wheel.stat().st_mtime_ns == built_at  # reused
    Path(f"{wheel}.sha256").unlink()  # a build interrupted before its hash was recorded
    shipped_code.build_wheel(package, tmp_path / "wheels")
    assert wheel.stat().st_mtime_ns != built_at


def test_model_config_keys_are_the_package_settings() -> None:
    settings = {value for key, value in vars(tabular_custom_model.Setting).items() if key.isupper()}
    config = config_for()
    assert set(checks.CHECK_PARAMS) <= {
        value for key, value in vars(tabular_custom_model.Param).items() if key.isupper()
    }
    inputs = Schema([ColSpec("double", "tenure")])
    assert set(service_model.model_config(0.5, config.custom_model, inputs)) == settings
    assert pipeline_model.INPUT_SCHEMA == tabular_custom_model.Setting.INPUT_SCHEMA
    assert pipeline_model.PIPELINE_ARTIFACT == tabular_custom_model.PIPELINE_ARTIFACT


def test_expected_cost_counts_each_outcome() -> None:
    costs = CostMatrix(false_positive=1, false_negative=5, true_positive=0.5, true_negative=0)
    y_true, y_pred = np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])
    assert expected_cost(y_true, y_pred, costs) == (0.5 + 5 + 1 + 0) / 4


def test_expected_cost_agrees_with_sklearns_confusion_matrix() -> None:
    costs = CostMatrix(false_positive=1.5, false_negative=5, true_positive=0.25, true_negative=0.1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
        tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
        cost = tn * 0.1 + fp * 1.5 + fn * 5 + tp * 0.25
        assert expected_cost(y_true, y_pred, costs) == pytest.approx(cost / 500, rel=1e-12)


def test_costlier_misses_lower_the_threshold() -> None:
    config = config_for()
    table = data.load_table(config.data)
    pipeline = build_pipeline(
        table.spec, config.model.with_values({"n_estimators": 40}), 0, threads=1
    )
    X, y = table.features.head(3000), table.target.head(3000)

    def tuned(fp: float, fn: float) -> float:
        decision = DecisionConfig(
            objective="cost", costs=CostMatrix(false_positive=fp, false_negative=fn), cv_folds=3
        )
        return tune_threshold(pipeline, X, y, decision, seed=0).threshold

    assert tuned(fp=1, fn=10) < tuned(fp=1, fn=1) < tuned(fp=10, fn=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"custom_model.risk_band_cuts": [0.6, 0.3]}, "must rise strictly within"),
        ({"custom_model.risk_band_cuts": [0.3, 1.0]}, "must rise strictly within"),
        ({"custom_model.risk_band_labels": ["low", "high"]}, "make 3 bands, but 2 risk_band_"),
        ({"custom_model.alias": "latest"}, "alias 'latest' is reserved"),
        ({"custom_model.decision.objective": "auc"}, "Input should be 'f1' or 'cost'"),
    ],
)
def test_bad_custom_model_settings_are_config_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_for(changes)


def test_parameters_parse() -> None:
    args = parser_for(CUSTOM_MODEL).parse_args(["--model-uri", "", "--check-env-manager", ""])
    assert args.model_uri is None and args.check_env_manager is None
    assert (
        parser_for(CUSTOM_MODEL).parse_args(["--check-env-manager", "uv"]).check_env_manager == "uv"
    )
