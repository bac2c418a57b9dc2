"""The `register` step in-process, against a real sqlite store: the champion/challenger
gate, idempotent registration, dry runs, rollback and a model that does not load."""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pytest
import requests

from steps import register as register_step
from tabular_mlops.cli.commands import parser_for
from tabular_mlops.core.config import ProjectConfig, load_config
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import Artifact, Tag, Verdict
from tabular_mlops.jobs.entry_points import REGISTER
from tabular_mlops.jobs.register import register
from tabular_mlops.jobs.train import train_basic
from tabular_mlops.mlflow import registry
from tests.conftest import (
    CHURN_CONFIG,
    CHURN_CSV,
    leave_no_run_behind,
    pickled_copy_of,
    point_mlflow_at,
    shipped_config,
    shipped_config_file,
)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
LOW_BAR = {"promotion.threshold": 0.7}  # lets the weak model through, on its own

# Trains, logs and registers for real, in process: not in the fast tier.
TRAINS = pytest.mark.integration


def config_for(name: str, overrides: dict[str, Any] | None = None) -> ProjectConfig:
    """The shipped config registering into `name` (a fresh registered model per test)."""
    return shipped_config({"tracking.registered_model_name": name} | (overrides or {}))


@dataclass(frozen=True)
class Trained:
    directory: Path
    weak: str  # run ids
    strong: str
    broken: str  # its model's files are damaged: it cannot load


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """Three `train_basic` runs in one store, shared by the tests of this module."""
    directory = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_mlflow_at(directory, monkeypatch)
        weak = train_basic(config_for("trainer", {"model.n_estimators": 5, "model.num_leaves": 2}))
        strong = train_basic(config_for("trainer", {"model.n_estimators": 60}))
        # In its own experiment, so that it is never the experiment's best run.
        broken = train_basic(
            config_for("trainer", {"model.n_estimators": 5, "tracking.experiment_name": "broken"})
        )
        location = mlflow.get_logged_model(broken.model_uri.removeprefix("models:/"))
        model_dir = Path(urlparse(location.artifact_location).path)
        (model_dir / "artifacts" / "pipeline" / "model.skops").unlink()
        assert weak.metrics["roc_auc"] < 0.8 < strong.metrics["roc_auc"]
        yield Trained(directory, weak.run_id, strong.run_id, broken.run_id)
        leave_no_run_behind()


@pytest.fixture
def store(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Iterator[Trained]:
    point_mlflow_at(trained.directory, monkeypatch)
    yield trained
    leave_no_run_behind()


def aliases(name: str) -> dict[str, int]:
    model = mlflow.MlflowClient().get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def version_count(name: str) -> int:
    return len(mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))


def review_of(name: str, version: int) -> str | None:
    return mlflow.MlflowClient().get_model_version(name, str(version)).tags.get(Tag.REVIEW)


def decision_record(run_id: str) -> dict[str, Any]:
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{Artifact.DECISION}")


# Promotion


@TRAINS
def test_first_model_is_judged_by_the_threshold_alone(store: Trained) -> None:
    result = register(config_for("first"), run_id=store.strong)
    decision = result.decision

    assert decision.verdict == Verdict.PASSED and decision.applied
    assert decision.champion_version is None and decision.champion_metrics == {}
    assert aliases("first") == {CHAMPION: 1, CHALLENGER: 1}
    assert review_of("first", 1) == Verdict.PASSED
    # The version says where it comes from.
    version = mlflow.MlflowClient().get_model_version("first", "1")
    assert version.run_id == store.strong
    assert f"Logged by run {store.strong} (entry point train_basic)" in version.description
    assert "roc_auc 0.8" in version.description and "Data digest " in version.description
    assert version.tags[Tag.ENTRY_POINT] == "train_basic" and version.tags[Tag.DATASET_DIGEST]
    # The decision is in the register run: params, metrics, verdict and the JSON record.
    run = mlflow.get_run(result.run_id)
    assert run.data.tags[Tag.VERDICT] == "passed"
    assert run.data.params["decision.candidate_run_id"] == store.strong
    assert run.data.params["decision.selected_by"] == "run_id parameter"
    assert run.data.params["promotion.threshold"] == "0.8"
    assert run.data.metrics["challenger.roc_auc"] == decision.challenger_metrics["roc_auc"]
    record = decision_record(result.run_id)
    assert record["verdict"] == "passed" and record["aliases_after"] == aliases("first")
    assert record["holdout"] == {"source": str(CHURN_CSV), "rows": 1409, "test_split": True}
    # Each model was evaluated in a child run of the register run.
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'", output_format="list"
    )
    assert [child.data.tags[Tag.ROLE] for child in children] == ["challenger"]


@TRAINS
def test_first_model_below_the_threshold_is_not_champion(store: Trained) -> None:
    decision = register(config_for("low"), run_id=store.weak).decision
    assert decision.verdict == Verdict.REJECTED
    assert "roc_auc value threshold check failed" in decision.reason
    assert aliases("low") == {CHALLENGER: 1}
    assert review_of("low", 1) == Verdict.REJECTED


@TRAINS
def test_better_challenger_is_promoted_and_the_old_champion_kept(store: Trained) -> None:
    config = config_for("better", LOW_BAR)
    register(config, run_id=store.weak)
    assert aliases("better") == {CHAMPION: 1, CHALLENGER: 1}

    decision = register(config, run_id=store.strong).decision
    assert decision.verdict == Verdict.PASSED
    assert decision.champion_version == 1 and decision.candidate_version == 2
    assert decision.challenger_metrics["roc_auc"] > decision.champion_metrics["roc_auc"] + 0.001
    assert "beats the champion's" in decision.reason
    assert aliases("better") == {CHAMPION: 2, CHALLENGER: 2, PREVIOUS: 1}


@TRAINS
def test_worse_challenger_is_rejected_and_the_champion_untouched(store: Trained) -> None:
    config = config_for("worse", LOW_BAR)
    register(config, run_id=store.strong)

    result = register(config, run_id=store.weak)
    decision = result.decision
    assert decision.verdict == Verdict.REJECTED and decision.applied
    assert "roc_auc minimum absolute change check failed" in decision.reason
    assert aliases("worse") == {CHAMPION: 1, CHALLENGER: 2}
    assert review_of("worse", 2) == Verdict.REJECTED
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"  # a rejection is an answer, not an error
    assert run.data.tags[Tag.VERDICT_REASON] == decision.reason
    assert run.data.metrics["champion.roc_auc"] > run.data.metrics["challenger.roc_auc"]


@TRAINS
def test_registering_a_run_twice_reuses_its_version(store: Trained) -> None:
    config = config_for("twice")
    for _ in range(2):  # rejected (below the threshold) both times
        assert register(config, run_id=store.weak).decision.verdict == Verdict.REJECTED
    assert version_count("twice") == 1

    register(config, run_id=store.strong)
    again = register(config, run_id=store.strong).decision
    assert again.verdict == Verdict.ALREADY_CHAMPION and not again.applied
    assert again.challenger_metrics == {}  # nothing to evaluate
    assert version_count("twice") == 2
    assert aliases("twice") == {CHAMPION: 2, CHALLENGER: 2}


@TRAINS
@pytest.mark.parametrize("lost", ["the answer", "the request"])
def test_a_create_whose_answer_or_request_was_lost_makes_one_version(
    store: Trained, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, lost: str
) -> None:
    """The first create times out, after the server made the version or before: either
    way one version, and MLflow's own retries were off for the create."""
    registry_client = mlflow.tracking._model_registry.client.ModelRegistryClient
    create = registry_client.create_model_version
    retries: list[str | None] = []

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        retries.append(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
        if len(retries) == 1:
            if lost == "the answer":
                create(self, *args, **kwargs)
            raise requests.exceptions.ReadTimeout("read timed out")
        return create(self, *args, **kwargs)

    monkeypatch.setattr(registry_client, "create_model_version", flaky)
    run = mlflow.get_run(store.strong)
    with caplog.at_level(logging.INFO):
        version = registry.register_run_model(
            store.strong, run.data.tags[Tag.MODEL_URI], f"lost-{lost[4:]}"
        )
    assert version_count(f"lost-{lost[4:]}") == 1 == version.version
    assert retries == (["0"] if lost == "the answer" else ["0", "0"])
    said = "became" if lost == "the answer" else "trying again"
    assert any(said in record.getMessage() for record in caplog.records)


@TRAINS
def test_a_version_train_basic_registered_is_reused(store: Trained) -> None:
    # train_basic registered every run it made as a version of "trainer".
    (registered,) = mlflow.MlflowClient().search_model_versions(
        f"name = 'trainer' and run_id = '{store.strong}'"
    )
    before = version_count("trainer")
    decision = register(config_for("trainer"), run_id=store.strong).decision
    assert decision.verdict == Verdict.PASSED
    assert version_count("trainer") == before
    assert aliases("trainer")[CHAMPION] == int(registered.version)


# Dry run and rollback


@TRAINS
def test_dry_run_reports_and_changes_nothing(store: Trained) -> None:
    # Nothing registered yet: the candidate is evaluated from its run, and not registered.
    first = register(config_for("dry"), run_id=store.strong, dry_run=True).decision
    assert first.verdict == Verdict.PASSED and not first.applied
    assert first.candidate_version is None
    assert [model.name for model in mlflow.search_registered_models()].count("dry") == 0

    config = config_for("dry", LOW_BAR)
    register(config, run_id=store.strong)
    result = register(config, run_id=store.weak, dry_run=True)
    assert result.decision.verdict == Verdict.REJECTED and not result.decision.applied
    assert result.decision.summary().startswith("dry run, nothing changed: rejected")
    assert version_count("dry") == 1 and aliases("dry") == {CHAMPION: 1, CHALLENGER: 1}
    assert decision_record(result.run_id)["dry_run"] is True


@TRAINS
def test_rollback_moves_the_champion_back(store: Trained) -> None:
    config = config_for("rollback", LOW_BAR)
    register(config, run_id=store.weak)
    register(config, run_id=store.strong)
    assert aliases("rollback")[CHAMPION] == 2

    dry = register(config, action="rollback", dry_run=True).decision
    assert not dry.applied and aliases("rollback")[CHAMPION] == 2

    decision = register(config, action="rollback").decision
    assert decision.verdict == Verdict.ROLLED_BACK and decision.applied
    assert aliases("rollback") == {CHAMPION: 1, CHALLENGER: 2}
    assert review_of("rollback", 2) == Verdict.ROLLED_BACK
    # The withdrawn version must not come back by accident: no second rollback, and the
    # next review without a run id passes over its run (the experiment's best).
    with pytest.raises(PromotionError, match="no 'previous-champion' alias: nothing to roll"):
        register(config, action="rollback")
    decision = register(config).decision
    assert decision.candidate_run_id == store.weak
    assert decision.verdict == Verdict.ALREADY_CHAMPION
    # Asked for by run id, it is judged again.
    assert register(config, run_id=store.strong).decision.verdict == Verdict.PASSED


# A model that cannot serve, and bad input


@TRAINS
def test_challenger_that_fails_to_load_never_gets_an_alias(
    store: Trained, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        code = register_step.main(
            ["--config", str(shipped_config_file(store.directory)), "--run-id", store.broken]
        )
    assert code == 1
    # main() read the shipped config: registered under its name, in its experiment.
    shipped = load_config(CHURN_CONFIG).tracking
    name = shipped.registered_model_name
    (version,) = mlflow.MlflowClient().search_model_versions(
        f"name = '{name}' and run_id = '{store.broken}'"
    )
    assert version.tags[Tag.REVIEW] == Verdict.FAILED_TO_LOAD
    assert aliases(name) == {}
    (run,) = mlflow.search_runs(
        experiment_names=[shipped.experiment_name],
        filter_string=f"tags.{Tag.ENTRY_POINT} = 'register' and tags.{Tag.VERDICT} = "
        "'failed_to_load'",
        output_format="list",
    )
    assert run.info.status == "FAILED"
    assert "cannot serve" in run.data.tags[Tag.ERROR] and "model.skops" in run.data.tags[Tag.ERROR]
    assert decision_record(run.info.run_id)["verdict"] == "failed_to_load"
    assert caplog.records[-1].getMessage() == run.data.tags[Tag.ERROR]


@TRAINS
def test_a_pickled_candidate_is_refused_unless_its_author_is_trusted(
    store: Trained, caplog: pytest.LogCaptureFixture
) -> None:
    pickled = pickled_copy_of(store.strong)
    argv = ["--config", str(shipped_config_file(store.directory)), "--run-id", pickled.run_id]
    argv += ["--data-path", str(CHURN_CSV), "--registered-model-name", "pickled"]
    with caplog.at_level(logging.ERROR):
        assert register_step.main(argv) == 1
    assert caplog.records[-1].getMessage() == (
        f"model {pickled.model_uri} refused: its pipeline is saved with 'cloudpickle', not "
        "skops: loading it runs code of whoever logged it; load it only if you trust whoever "
        "logged it (-P allow_pickle=true)"
    )
    assert version_count("pickled") == 0  # refused before anything was registered
    assert register_step.main([*argv, "--allow-pickle", "true"]) == 0
    assert aliases("pickled")[CHAMPION] == 1


@TRAINS
def test_without_run_id_the_best_run_of_the_experiment_is_reviewed(store: Trained) -> None:
    decision = register(config_for("search")).decision
    assert decision.candidate_run_id == store.strong
    assert decision.selected_by == "best roc_auc"


@TRAINS
def test_runs_trained_on_another_split_are_not_candidates(store: Trained) -> None:
    config = config_for("split", {"split.seed": 7})
    with pytest.raises(PromotionError, match=r"no finished run in experiment .* this data"):
        register(config)
    with pytest.raises(PromotionError, match=r"another split \(split.seed 42, not 7\)"):
        register(config, run_id=store.strong)


@TRAINS
def test_unknown_run_is_a_clear_error(store: Trained) -> None:
    with pytest.raises(PromotionError, match="run 'nope' not found in sqlite:"):
        register(config_for("unknown"), run_id="nope")


@TRAINS
def test_list_prints_versions_with_aliases_and_metrics(
    store: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for("listed", LOW_BAR)
    register(config, action="list")
    assert capsys.readouterr().out == "Versions of listed:\nnone\n"
    register(config, run_id=store.weak)
    register(config, run_id=store.strong)
    capsys.readouterr()
    result = register(config, action="list")
    assert result.decision is None
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Versions of listed:"
    assert "| version | aliases" in lines[1].replace("  ", " ").replace("  ", " ")
    newest, oldest = lines[3], lines[4]
    assert "challenger, champion" in newest and store.strong in newest and "passed" in newest
    assert "previous-champion" in oldest and store.weak in oldest
    logged = mlflow.artifacts.load_text(f"runs:/{result.run_id}/registry/versions.md")
    assert store.strong in logged


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dry-run", "maybe"], "parameter dry_run: expected true or false, got 'maybe'"),
        (["--action", "delete"], "parameter action: invalid choice: 'delete'"),
        (["--threshold", "high"], "parameter threshold: expected a number, got 'high'"),
    ],
)
def test_bad_parameter_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parser_for(REGISTER).parse_args(argv)
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"register: error: {message}") and error.count("\n") == 1


def test_parameters_parse() -> None:
    args = parser_for(REGISTER).parse_args(
        ["--dry-run", "TRUE", "--run-id", "", "--threshold", "0.9"]
    )
    assert args.dry_run is True and args.run_id is None and args.threshold == 0.9
    assert parser_for(REGISTER).parse_args(["--dry-run", ""]).dry_run is False
