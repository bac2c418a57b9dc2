"""`main`'s step cache and parameter checks, in process, with a stand-in for `mlflow.run`."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import mlflow
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_PROJECT_ENTRY_POINT

from steps import custom_model as custom_model_step
from steps import main
from steps import train_basic as train_basic_step
from tabular_mlops.cli import commands as cli
from tabular_mlops.cli.commands import ArgumentParser
from tabular_mlops.core.config import load_config
from tabular_mlops.core.errors import StepFailedError
from tabular_mlops.core.names import Tag
from tabular_mlops.core.sections import PromotionConfig
from tabular_mlops.jobs import step_cache
from tabular_mlops.jobs.chain import better_of
from tabular_mlops.jobs.step_cache import ChainContext, StepCall
from tabular_mlops.mlflow import registry, runs
from tests.conftest import CHURN_CONFIG, PROJECT_DIR


class FakeLauncher:
    """Stands in for `mlflow.run`: records the call and makes a FINISHED run of it."""

    def __init__(self) -> None:
        self.calls: list[StepCall] = []

    def __call__(self, call: StepCall, context: ChainContext) -> str:
        self.calls.append(call)
        run = mlflow.MlflowClient().create_run(
            context.experiment_id, tags={MLFLOW_PROJECT_ENTRY_POINT: call.entry_point}
        )
        mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


@pytest.fixture
def context(tracking_uri: str, tmp_path: Path) -> ChainContext:
    return ChainContext(
        project_dir=tmp_path,
        experiment_id=mlflow.create_experiment("chain"),
        env_manager="local",
        git_commit="a" * 40,
        config_sha256="c" * 64,
        dataset_digest="d1",
    )


TRACK = StepCall("track", {"config": Path("config/churn.yaml"), "n_trials": 5, "timeout": None})


def test_parameters_are_normalised_by_type() -> None:
    assert [step_cache.canonical(v) for v in (5, 5.0, "5", True, 0.25, None)] == [
        "5", "5", "5", "true", "0.25", "None",
    ]  # fmt: skip
    # `-P n_trials=5` and `-P n_trials=5.0` are one parameter value to `main`.
    assert (
        main.parse_args(["--n-trials", "5"]).steps == main.parse_args(["--n-trials", "5.0"]).steps
    )
    assert TRACK.arguments() == {"config": "config/churn.yaml", "n_trials": "5"}


def test_the_cache_key_covers_every_input(context: ChainContext) -> None:
    key = step_cache.cache_key(TRACK, context)
    changed = [
        dataclasses.replace(TRACK, parameters={**TRACK.parameters, "n_trials": 6}),
        dataclasses.replace(TRACK, upstream={"train_basic": "r1"}),
        dataclasses.replace(TRACK, entry_point="train_basic"),
    ]
    assert all(step_cache.cache_key(call, context) != key for call in changed)
    for field, value in [
        ("git_commit", "b" * 40),
        ("config_sha256", "e" * 64),
        ("dataset_digest", "d2"),
    ]:
        assert step_cache.cache_key(TRACK, dataclasses.replace(context, **{field: value})) != key
    # The same inputs, given as other types, give the same key.
    same = dataclasses.replace(TRACK, parameters={**TRACK.parameters, "n_trials": 5.0})
    assert step_cache.cache_key(same, context) == key
    # Uncommitted code is never cached.
    assert step_cache.cache_key(TRACK, dataclasses.replace(context, git_commit=None)) is None


def test_a_step_runs_once_then_is_reused(context: ChainContext) -> None:
    launcher = FakeLauncher()
    call = dataclasses.replace(TRACK, upstream={"train_basic": "r1"})
    first = step_cache.run_step(call, context, launcher)
    again = step_cache.run_step(call, context, launcher)
    assert not first.reused and again.reused
    assert again.run_id == first.run_id and len(launcher.calls) == 1
    assert first.run.data.tags[Tag.CACHE_KEY] == step_cache.cache_key(call, context)
    assert first.run.data.tags[f"{Tag.UPSTREAM_PREFIX}train_basic"] == "r1"

    # Another upstream run, or force=true, runs it again.
    other = step_cache.run_step(
        dataclasses.replace(call, upstream={"train_basic": "r2"}), context, launcher
    )
    forced = step_cache.run_step(call, dataclasses.replace(context, force=True), launcher)
    assert not other.reused and not forced.reused and len(launcher.calls) == 3
    # The newest run with the key is the one reused.
    assert step_cache.run_step(call, context, launcher).run_id == forced.run_id


def test_only_finished_runs_are_reused(context: ChainContext) -> None:
    launcher = FakeLauncher()
    first = step_cache.run_step(TRACK, context, launcher)
    mlflow.MlflowClient().set_terminated(first.run_id, "FAILED")
    assert not step_cache.run_step(TRACK, context, launcher).reused


def test_uncommitted_code_is_never_cached(context: ChainContext) -> None:
    launcher, dirty = FakeLauncher(), dataclasses.replace(context, git_commit=None)
    first = step_cache.run_step(TRACK, dirty, launcher)
    assert Tag.CACHE_KEY not in first.run.data.tags
    assert not step_cache.run_step(TRACK, dirty, launcher).reused
    # Nor does a later clean run reuse it.
    assert not step_cache.run_step(TRACK, context, launcher).reused
    assert len(launcher.calls) == 3


def test_a_run_is_reused_only_while_its_alias_stays(context: ChainContext) -> None:
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    for _ in range(2):
        run = client.create_run(context.experiment_id)
        client.create_model_version("m", "file:///nowhere", run.info.run_id)
    registry.move_alias("m", "champion", 1)

    class AliasingLauncher(FakeLauncher):
        def __call__(self, call: StepCall, context: ChainContext) -> str:
            run_id = super().__call__(call, context)
            with mlflow.start_run(run_id=run_id):
                registry.record_alias("m", "champion", registry.aliases("m")["champion"])
            return run_id

    launcher = AliasingLauncher()
    call = StepCall("register", {"run_id": "r"})
    first = step_cache.run_step(call, context, launcher)
    assert first.run.data.tags[Tag.CHAMPION_URI] == "models:/m/1"
    assert step_cache.run_step(call, context, launcher).reused
    registry.move_alias("m", "champion", 2)  # a rollback or another promotion since
    assert not registry.alias_still_at(mlflow.get_run(first.run_id))
    rerun = step_cache.run_step(call, context, launcher)
    assert not rerun.reused and rerun.run.data.tags[Tag.CHAMPION_URI] == "models:/m/2"


def test_a_step_parameter_is_checked_by_the_steps_parser_before_any_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, message in [
        (["--n-trials", "abc"], "main: error: parameter n_trials: expected a whole number"),
        (["--n-estimators", "1.5"], "main: error: parameter n_estimators"),
        (["--n-tri", "3"], "main: error: unrecognized arguments: --n-tri 3"),
        (["--force", "maybe"], "main: error: parameter force: expected true or false"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main.parse_args(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_a_bad_parameter_fails_main_before_any_step(
    tracking_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["--config", str(CHURN_CONFIG), "--threshold", "1.5"]
    assert main.main(argv) == 1
    assert "threshold for roc_auc must be between 0 and 1, got 1.5" in caplog.text
    # Not even main's own run started, let alone a step's.
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_an_unknown_parameter_of_main_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # What `mlflow run . -P trials=3` passes on (MLflow appends unknown parameters).
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(["--trials", "3"])
    assert exit_.value.code == 2
    assert "main: error: unrecognized arguments: --trials 3" in capsys.readouterr().err


def test_a_parameter_error_is_recorded_on_the_run_mlflow_opened(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = mlflow.MlflowClient().create_run(mlflow.create_experiment("e"))
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    with pytest.raises(SystemExit):
        ArgumentParser(prog="track").error("argument --n-trials: expected a whole number")
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags[Tag.ERROR] == "track: error: parameter n_trials: expected a whole number"


@pytest.mark.parametrize(
    ("metric", "basic", "tuned", "chosen"),
    [("roc_auc", 0.84, 0.85, "track"), ("roc_auc", 0.85, 0.85, "train_basic"),
     ("log_loss", 0.41, 0.42, "train_basic"), ("log_loss", 0.42, 0.41, "track")],
)  # fmt: skip
def test_the_candidate_is_the_better_run(
    tracking_uri: str, metric: str, basic: float, tuned: float, chosen: str
) -> None:
    runs = {}
    for entry_point, value in (("train_basic", basic), ("track", tuned)):
        with mlflow.start_run() as run:
            mlflow.log_metric(metric, value)
        runs[entry_point] = step_cache.StepRun(
            entry_point, mlflow.get_run(run.info.run_id), False, 0
        )
    promotion = PromotionConfig(metric=metric, threshold=0.5, min_improvement=0.001)
    assert better_of(runs["train_basic"], runs["track"], promotion).entry_point == chosen


def test_a_failed_step_is_reported_with_the_reason_it_recorded(context: ChainContext) -> None:
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=context.experiment_id) as parent:
        child = client.create_run(
            context.experiment_id,
            tags={
                MLFLOW_PARENT_RUN_ID: parent.info.run_id,
                MLFLOW_PROJECT_ENTRY_POINT: "custom_model",
                Tag.ERROR: "the model failed to predict in isolated_env_conda",
            },
        )
        error = mlflow.exceptions.ExecutionException("Run failed")
        message = step_cache._failure("custom_model", context, error)
    assert message == (
        f"step custom_model failed (run {child.info.run_id}): "
        "the model failed to predict in isolated_env_conda"
    )


@pytest.mark.parametrize(
    ("step", "alias"),
    [(train_basic_step, "latest"), (custom_model_step, "V3"), (train_basic_step, "a b")],
)
def test_an_alias_parameter_is_checked_before_any_run(
    tracking_uri: str, caplog: pytest.LogCaptureFixture, step: ModuleType, alias: str
) -> None:
    assert step.main(["--config", str(CHURN_CONFIG), "--alias", alias]) == 1
    assert f"alias {alias!r} " in caplog.text
    assert mlflow.search_runs(search_all_experiments=True).empty


STAND_IN_PROJECT = """name: stand-in
entry_points:
  step:
    parameters:
      size: {type: float, default: ""}
    command: python -m stand_in.step --size {size}
  elsewhere:
    command: bash -c true
"""


@pytest.fixture
def stand_in_project(context: ChainContext) -> ChainContext:
    project_dir = context.project_dir / "project"  # not the working directory
    project_dir.mkdir()
    (project_dir / "MLproject").write_text(STAND_IN_PROJECT)
    return dataclasses.replace(context, project_dir=project_dir)


def run_in_process(
    context: ChainContext, step_main: object, entry_point: str = "step", **parameters: object
) -> str:
    launcher = step_cache.in_process_launcher({"stand_in.step": step_main})
    with mlflow.start_run(experiment_id=context.experiment_id) as parent:
        os.environ["MLFLOW_RUN_ID"] = "left-as-it-was"  # the step's own value is restored
        run_id = launcher(StepCall(entry_point, parameters), context)
        assert os.environ.pop("MLFLOW_RUN_ID") == "left-as-it-was"
    assert mlflow.get_run(run_id).data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
    return run_id


def test_a_step_runs_in_process_as_mlflow_run_would_start_it(
    stand_in_project: ChainContext,
) -> None:
    seen = {}

    def step_main(argv: list[str]) -> int:
        seen.update(argv=argv, cwd=Path.cwd(), run_id=os.environ["MLFLOW_RUN_ID"])
        with runs.project_run(load_config(CHURN_CONFIG), "step") as run:
            mlflow.log_metric("size", float(argv[1]))
            seen["logged_to"] = run.info.run_id
        return 0

    run_id = run_in_process(stand_in_project, step_main, size=5)
    run = mlflow.get_run(run_id)
    assert seen == {
        "argv": ["--size", "5"],
        "cwd": stand_in_project.project_dir,
        "run_id": run_id,
        "logged_to": run_id,
    }
    assert run.info.status == "FINISHED" and run.data.metrics["size"] == 5
    assert run.data.params == {"size": "5"}
    assert run.data.tags[MLFLOW_PROJECT_ENTRY_POINT] == "step"
    assert run.data.tags["mlflow.source.type"] == "PROJECT"
    assert Path.cwd() == stand_in_project.project_dir.parent  # restored


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("exit", "parameter refused"),
        ("raise", "it recorded no reason"),
    ],
)
def test_a_failing_step_in_process_fails_its_run_with_the_reason(
    stand_in_project: ChainContext, outcome: str, reason: str
) -> None:
    def step_main(argv: list[str]) -> int:
        if outcome == "exit":
            cli.record_failure("parameter refused")
            raise SystemExit(2)
        raise RuntimeError("a bug")

    with pytest.raises(StepFailedError, match=reason):
        run_in_process(stand_in_project, step_main, size=1)
    (run,) = mlflow.search_runs(
        experiment_ids=[stand_in_project.experiment_id],
        filter_string=f"tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = 'step'",
        output_format="list",
    )
    assert run.info.status == "FAILED"


def test_a_command_that_is_not_a_step_module_is_refused(stand_in_project: ChainContext) -> None:
    with pytest.raises(StepFailedError, match="cannot run 'bash -c true' in process"):
        run_in_process(stand_in_project, lambda argv: 0, entry_point="elsewhere")


# The launcher of every env manager but `local` (uv, virtualenv, conda): `mlflow run` of
# the step as a child run. Here under `local`, on a project of two one-line steps; that uv
# builds the project's environment is tests/test_e2e_train_basic.py's.
LAUNCHED_PROJECT = """name: launched
entry_points:
  step:
    parameters:
      size: {type: float, default: ""}
    command: python -c "import sys; sys.exit(0)"
  failing:
    command: python -c "import sys; sys.exit(3)"
"""


@pytest.mark.system
def test_steps_of_other_env_managers_run_as_child_runs_of_mlflow_run(
    context: ChainContext,
) -> None:
    project_dir = context.project_dir / "launched"
    project_dir.mkdir()
    (project_dir / "MLproject").write_text(LAUNCHED_PROJECT)
    launched = dataclasses.replace(context, project_dir=project_dir)
    assert step_cache.launcher_for("uv", {}) is step_cache.launch
    with mlflow.start_run(experiment_id=context.experiment_id) as parent:
        run_id = step_cache.launch(StepCall("step", {"size": 5}), launched)
        with pytest.raises(StepFailedError, match="failing"):
            step_cache.launch(StepCall("failing", {}), launched)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"size": "5"}
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
    assert run.data.tags[MLFLOW_PROJECT_ENTRY_POINT] == "step"


def test_main_checks_its_cache_without_loading_the_training_libraries() -> None:
    # `main` imports every step to check its parameters; a fully cached rerun must not pay
    # for sklearn, LightGBM or Optuna (1.2 s of the 8 s it may take).
    code = (
        "import sys, steps.main; "
        "print(sorted(m for m in ('sklearn', 'lightgbm', 'optuna') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_DIR
    ).stdout.strip()
    assert loaded == "[]"
