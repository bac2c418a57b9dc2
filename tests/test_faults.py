"""Fault injection: a step killed with SIGKILL (no handler runs, as in an OOM kill) where it
could tear something: before its model is logged, between the two alias moves, during the
isolated check. The next commands repair what it left (stale runs reaped, alias moves
completed) and a rerun completes, with the registry's invariants intact. Then two full
`register` reviews of different candidates at once (the alias moves alone, ten times at
once: tests/test_alias_moves.py)."""

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from tabular_mlops.core.names import Tag, Verdict
from tabular_mlops.jobs.register import register
from tabular_mlops.jobs.train import train_basic
from tabular_mlops.jobs.wrap import custom_model
from tabular_mlops.mlflow import registry
from tabular_mlops.runtime.faults import FAULT_ENV, FaultPoint
from test_support.stopping import MARK_ENV, marked_processes
from tests.conftest import (
    E2E_EXPERIMENT,
    FAST_CONFIG,
    PROJECT_DIR,
    fast_config,
    leave_no_run_behind,
    mlflow_run,
    point_mlflow_at,
    session_env_root,
    shipped_config,
    shipped_config_file,
    users_environment,
)
from tests.test_alias_moves import moves_in_some_order

pytestmark = pytest.mark.system

PIPELINES, SERVICE = "churn-classifier", "churn-service"
CHAMPION, PREVIOUS = "champion", "previous-champion"
CHAIN = (FAST_CONFIG, "n_trials=2", "check_env_manager=none")
ROUNDS = 1  # full reviews by two processes at once (the alias moves alone: ten rounds)
KILLED = -9  # the return code of a process ended by SIGKILL


def fault(point: FaultPoint) -> dict[str, str]:
    return {FAULT_ENV: point}


def assert_invariants(name: str) -> dict[str, int]:
    """No alias move left half-done; `champion` passed its review; `previous-champion`,
    if set, is another version. The aliases, for more checks."""
    client = mlflow.MlflowClient()
    assert Tag.ALIAS_MOVES not in client.get_registered_model(name).tags
    aliases = registry.aliases(name)
    champion = client.get_model_version(name, str(aliases[CHAMPION]))
    assert champion.tags[Tag.REVIEW] == Verdict.PASSED
    assert aliases.get(PREVIOUS) != aliases[CHAMPION]
    return aliases


def version_of(run_id: str) -> int:
    (version,) = mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'")
    return int(version.version)


def promotion_aliases(name: str) -> dict[str, int]:
    return {a: v for a, v in registry.aliases(name).items() if a in (CHAMPION, PREVIOUS)}


def runs_by_status(experiment: str = E2E_EXPERIMENT) -> dict[str, list[mlflow.entities.Run]]:
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    grouped: dict[str, list[mlflow.entities.Run]] = {}
    for run in runs:
        grouped.setdefault(run.info.status, []).append(run)
    return grouped


def entry_point(run: mlflow.entities.Run) -> str:
    return run.data.tags[Tag.ENTRY_POINT]


def test_a_chain_killed_before_its_model_is_logged_is_reaped_and_rerun(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = point_mlflow_at(tmp_path, monkeypatch)
    killed = mlflow_run(
        project, store, "main", *CHAIN, extra_env=fault(FaultPoint.BEFORE_MODEL_LOGGED)
    )
    assert killed.returncode != 0
    # `mlflow run` outlived main and failed its run; the train_basic run inside main's
    # process could not be ended by anyone.
    left = runs_by_status()
    assert [entry_point(run) for run in left["RUNNING"]] == ["train_basic"]
    assert mlflow.MlflowClient().search_model_versions(f"name = '{PIPELINES}'") == []

    reaped = register(shipped_config(), "reap").stale  # `register -P action=reap`
    (stale,) = left["RUNNING"]
    assert [run.run_id for run in reaped] == [stale.info.run_id]
    run = mlflow.get_run(stale.info.run_id)
    assert run.info.status == "KILLED"
    assert "has ended" in run.data.tags[Tag.ERROR]
    leave_no_run_behind()

    # The killed step again, alone and in this process (main reruns only what is not a
    # finished run of the same inputs: tests/test_chain.py; the whole chain through
    # `mlflow run .`: tests/test_e2e_main.py).
    train_basic(fast_config())
    assert "RUNNING" not in runs_by_status()
    # One version, the rerun's, with its alias; no alias move left behind.
    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions(f"name = '{PIPELINES}'")
    assert registry.aliases(PIPELINES) == {"latest-model": int(version.version)}
    assert Tag.ALIAS_MOVES not in client.get_registered_model(PIPELINES).tags


@dataclass(frozen=True)
class Pool:
    """A store with three trained pipelines of different strength."""

    directory: Path
    weak: str  # run ids
    mid: str
    strong: str


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    directory = tmp_path_factory.mktemp("pool")
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_mlflow_at(directory, monkeypatch)

        def trained(trees: int, leaves: int) -> str:
            overrides = {"model.n_estimators": trees, "model.num_leaves": leaves}
            return train_basic(shipped_config(overrides)).run_id

        pool = Pool(directory, trained(5, 2), trained(15, 4), trained(60, 31))
        leave_no_run_behind()
    yield pool


@pytest.fixture
def pool_copy(pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A copy of the pool's store (its artifacts stay where they are), in use: its URI."""
    shutil.copyfile(pool.directory / "mlflow.db", tmp_path / "mlflow.db")
    yield point_mlflow_at(tmp_path, monkeypatch)
    leave_no_run_behind()


def test_a_review_killed_between_the_alias_moves_is_completed_by_the_next(
    pool: Pool, pool_copy: str, project: Path
) -> None:
    register(shipped_config({"promotion.threshold": 0.5}), "promote", pool.weak)
    weak, strong = version_of(pool.weak), version_of(pool.strong)
    assert promotion_aliases(PIPELINES) == {CHAMPION: weak}
    leave_no_run_behind()

    killed = mlflow_run(
        project,
        pool_copy,
        "register",
        f"run_id={pool.strong}",
        extra_env=fault(FaultPoint.BETWEEN_ALIAS_MOVES),
    )
    assert killed.returncode != 0
    # Torn: previous-champion moved, champion not yet; the intent says what is left.
    assert promotion_aliases(PIPELINES) == {CHAMPION: weak, PREVIOUS: weak}
    assert Tag.ALIAS_MOVES in mlflow.MlflowClient().get_registered_model(PIPELINES).tags

    register(shipped_config(), "list")  # a listing only reports them
    assert promotion_aliases(PIPELINES) == {CHAMPION: weak, PREVIOUS: weak}
    # Any later review (or rollback) completes the moves first: its writer is gone.
    decision = register(shipped_config(), "promote", pool.strong).decision
    assert decision is not None and decision.verdict == Verdict.ALREADY_CHAMPION
    aliases = assert_invariants(PIPELINES)
    assert (aliases[CHAMPION], aliases[PREVIOUS]) == (strong, weak)
    assert "RUNNING" not in runs_by_status()


def test_a_wrapper_killed_during_its_isolated_check_gets_no_alias_and_the_rerun_does(
    pool_copy: str, project: Path
) -> None:
    mark = f"killed-wrapper-{uuid.uuid4().hex[:8]}"
    environment = fault(FaultPoint.DURING_ISOLATED_CHECK) | {MARK_ENV: mark}
    killed = mlflow_run(project, pool_copy, "custom_model", extra_env=environment)
    assert killed.returncode != 0
    # The checks it had started (a fresh process, the isolated environment's) end with it,
    # and leave no environment half-built for the next check to reuse.
    deadline = time.monotonic() + 10
    while marked_processes(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_processes(mark) == []
    for environment_dir in session_env_root(project).glob("mlflow-*"):
        assert list(environment_dir.glob("lib/python*/site-packages/mlflow")), environment_dir
    client = mlflow.MlflowClient()
    (orphan,) = client.search_model_versions(f"name = '{SERVICE}'")
    assert orphan.aliases == [] and Tag.REVIEW not in orphan.tags

    # The rerun, in this process (its own isolated check is the e2e custom_model tests'
    # business).
    custom_model(fast_config({"custom_model.check_env_manager": "none"}))
    aliases = assert_invariants(SERVICE)
    assert aliases[CHAMPION] == int(orphan.version) + 1
    assert "RUNNING" not in runs_by_status()


# Reviews `run_id` for champion, round after round, when the round's start file appears.
_REVIEWER = """
import json, sys, time
from pathlib import Path
import mlflow
from tabular_mlops.jobs.register import register
from tabular_mlops.core.config import ProjectConfig, load_config
uri, folder, me, rounds, config_path = sys.argv[1:6]
mlflow.set_tracking_uri(uri)
config = load_config(Path(config_path))
for round in range(int(rounds)):
    start = Path(folder) / f"go-{round}"
    while not start.exists():
        time.sleep(0.005)
    run_id = json.loads(start.read_text())[me]
    decision = register(config, "promote", run_id).decision
    moved = decision.applied and decision.verdict == "passed"
    report = {
        "outcome": "moved" if moved else "refused",
        "seen": decision.champion_version,
        "mine": decision.candidate_version,
        "reason": decision.reason,
    }
    path = Path(folder) / f".done-{round}-{me}"  # renamed when whole
    path.write_text(json.dumps(report))
    path.rename(Path(folder) / f"done-{round}-{me}")
"""


def test_two_full_reviews_at_once_never_break_the_invariants(
    pool: Pool, pool_copy: str, tmp_path: Path
) -> None:
    store, client = pool_copy, mlflow.MlflowClient()
    # Versions of the three runs; each round starts from the weak one as champion.
    weak = version_of(pool.weak)  # train_basic registered each run's model
    inputs = (str(shipped_config_file(tmp_path)),)
    client.set_model_version_tag(PIPELINES, str(weak), Tag.REVIEW, Verdict.PASSED)
    reviewers = [
        subprocess.Popen(
            [sys.executable, "-c", _REVIEWER, store, str(tmp_path), me, str(ROUNDS), *inputs],
            cwd=tmp_path,
            env=users_environment()
            | {"MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(PROJECT_DIR)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    violations, outcomes = [], []
    try:
        for round_number in range(ROUNDS):
            client.set_registered_model_alias(PIPELINES, CHAMPION, str(weak))
            if PREVIOUS in registry.aliases(PIPELINES):
                client.delete_registered_model_alias(PIPELINES, PREVIOUS)
            go = tmp_path / f".go-{round_number}"
            go.write_text(json.dumps({"a": pool.mid, "b": pool.strong}))
            go.rename(tmp_path / f"go-{round_number}")
            done = [tmp_path / f"done-{round_number}-{me}" for me in ("a", "b")]
            deadline = time.monotonic() + 120
            while not all(path.exists() for path in done) and time.monotonic() < deadline:
                assert all(reviewer.poll() is None for reviewer in reviewers)
                time.sleep(0.02)
            reports = [json.loads(path.read_text()) for path in done]
            outcomes.append(tuple(report["outcome"] for report in reports))
            after = promotion_aliases(PIPELINES)
            try:
                assert_invariants(PIPELINES)
                holds = moves_in_some_order(weak, reports, after)
            except AssertionError:
                holds = False
            if not holds:
                violations.append((round_number, reports, after))
    finally:
        for reviewer in reviewers:
            reviewer.wait(timeout=120)
    assert [reviewer.returncode for reviewer in reviewers] == [0, 0], reviewers[0].stderr.read()
    assert violations == []
    assert len(outcomes) == ROUNDS
