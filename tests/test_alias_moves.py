"""Alias moves are one step: recorded, applied, cleared; finished by the next caller when a
process dies half-way (never deleting an alias, never on a record that does not check out
or whose writer may still run); refused when the aliases moved meanwhile; serialised on
sqlite."""

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tabular_mlops.core.names import Tag
from tabular_mlops.mlflow import registry
from tabular_mlops.runtime import stale_runs
from tabular_mlops.runtime.faults import FAULT_ENV, FaultPoint
from tests.conftest import users_environment

NAME = "model"
CHAMPION, PREVIOUS = "champion", "previous-champion"
KNOWN = (CHAMPION, "challenger", PREVIOUS)
ROUNDS = 10


@pytest.fixture
def versions(tracking_uri: str, tmp_path: Path) -> mlflow.MlflowClient:
    """A registered model with four versions; version 1 is champion."""
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    for _ in range(4):
        client.create_model_version(NAME, str(tmp_path))
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    return client


def intent_of(client: mlflow.MlflowClient) -> str | None:
    return client.get_registered_model(NAME).tags.get(Tag.ALIAS_MOVES)


def test_the_aliases_move_together_and_nothing_is_left_behind(
    versions: mlflow.MlflowClient,
) -> None:
    registry.move_aliases(NAME, {PREVIOUS: 1, CHAMPION: 2}, {CHAMPION: 1}, "run", KNOWN)
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 2}
    assert intent_of(versions) is None


def test_nothing_moves_when_the_champion_moved_meanwhile(versions: mlflow.MlflowClient) -> None:
    versions.set_registered_model_alias(NAME, CHAMPION, "3")  # another review won
    with pytest.raises(registry.AliasesMovedError, match="champion v1 -> v3"):
        registry.move_aliases(NAME, {PREVIOUS: 1, CHAMPION: 2}, {CHAMPION: 1}, "run", KNOWN)
    assert registry.aliases(NAME) == {CHAMPION: 3}


_MOVE = """
import sys, json, mlflow
from tabular_mlops.mlflow import registry
mlflow.set_tracking_uri(sys.argv[1])
moves, expected = json.loads(sys.argv[2]), json.loads(sys.argv[3])
with mlflow.start_run() as run:
    registry.move_aliases("model", moves, expected, run.info.run_id, json.loads(sys.argv[4]))
"""


@pytest.mark.system  # processes of their own
def test_a_process_killed_between_the_moves_is_finished_by_the_next(
    versions: mlflow.MlflowClient, tracking_uri: str
) -> None:
    moves, expected = {PREVIOUS: 1, CHAMPION: 2}, {CHAMPION: 1}
    killed = subprocess.run(
        [sys.executable, "-c", _MOVE, tracking_uri, *map(json.dumps, (moves, expected, KNOWN))],
        env=users_environment() | {FAULT_ENV: FaultPoint.BETWEEN_ALIAS_MOVES},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9  # SIGKILL, after the first move
    # The torn state a kill used to leave for good: previous-champion == champion.
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 1}
    assert json.loads(intent_of(versions))["moves"] == {PREVIOUS: 1, CHAMPION: 2}
    assert registry.complete_interrupted_moves(NAME, KNOWN) == moves
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 2}
    assert intent_of(versions) is None
    assert registry.complete_interrupted_moves(NAME, KNOWN) is None


def moves_in_some_order(start: int, reports: list[dict], after: dict[str, int]) -> bool:
    """The invariants: the reviews that moved the aliases did so one after the other, each
    replacing exactly the champion it had compared with (the first: `start`); in the end
    `previous-champion` is the champion the last one replaced, never `champion` itself.
    (A review that began after the other had moved compared with its candidate: both may
    move, in turn. At least one review moves.)"""
    moved = [report for report in reports if report["outcome"] == "moved"]
    for order in (moved, moved[::-1]):
        chain_holds = bool(order) and order[0]["seen"] == start
        chain_holds &= all(
            later["seen"] == earlier["mine"] for earlier, later in itertools.pairwise(order)
        )
        if chain_holds and after == {CHAMPION: order[-1]["mine"], PREVIOUS: order[-1]["seen"]}:
            return after[CHAMPION] != after[PREVIOUS]
    return False


_REVIEWER = """
import sys, time, json
from pathlib import Path
import mlflow
from tabular_mlops.mlflow import registry
uri, folder, me, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
mlflow.set_tracking_uri(uri)
for round in range(rounds):
    start = folder / f"go-{round}"
    while not start.exists():
        time.sleep(0.005)
    seen = registry.aliases("model")["champion"]  # what this review compared with
    mine = json.loads(start.read_text())[me]
    try:
        registry.move_aliases(
            "model",
            {"previous-champion": seen, "champion": mine},
            {"champion": seen},
            me,
            ("champion", "challenger", "previous-champion"),
        )
        outcome = "moved"
    except registry.AliasesMovedError:
        outcome = "refused"
    report = folder / f".done-{round}-{me}"  # renamed when whole: never read half-written
    report.write_text(json.dumps({"outcome": outcome, "seen": seen, "mine": mine}))
    report.rename(folder / f"done-{round}-{me}")
"""


@pytest.mark.system  # processes of their own
def test_two_reviews_at_once_never_break_the_invariants(
    versions: mlflow.MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    reviewers = [
        subprocess.Popen(
            [sys.executable, "-c", _REVIEWER, tracking_uri, str(tmp_path), me, str(ROUNDS)],
            env=users_environment(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    violations = []
    for round_number in range(ROUNDS):
        start = registry.aliases(NAME)[CHAMPION]
        # Each reviewer's candidate: two other versions.
        a, b = [v for v in (1, 2, 3, 4) if v != start][:2]
        go = tmp_path / f".go-{round_number}"
        go.write_text(json.dumps({"a": a, "b": b}))
        go.rename(tmp_path / f"go-{round_number}")  # whole when the reviewers see it
        done = [tmp_path / f"done-{round_number}-{me}" for me in ("a", "b")]
        deadline = time.monotonic() + 60
        while not all(path.exists() for path in done) and time.monotonic() < deadline:
            time.sleep(0.01)
        reports = [json.loads(path.read_text()) for path in done]
        after = registry.aliases(NAME)
        if not (moves_in_some_order(start, reports, after) and intent_of(versions) is None):
            violations.append((round_number, start, reports, after))
    for reviewer in reviewers:
        assert reviewer.wait(timeout=60) == 0, reviewer.stderr.read() if reviewer.stderr else ""
    assert violations == []


def plant(client: mlflow.MlflowClient, record: object) -> None:
    """What anyone who may edit the registered model can write (a trainer, say)."""
    text = record if isinstance(record, str) else json.dumps(record)
    client.set_registered_model_tag(NAME, Tag.ALIAS_MOVES, text)


def a_record(run_id: str, moves: dict[str, int | None], **changes: object) -> dict[str, object]:
    gone = "no-such-host 1 1"  # a writer nobody can ask about: replayed once old enough
    return {"moves": moves, "run_id": run_id, "process": gone, "written_at": 0} | changes


def test_a_planted_deletion_is_never_applied(
    versions: mlflow.MlflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    with mlflow.start_run() as run:
        pass
    plant(versions, a_record(run.info.run_id, {CHAMPION: None}))
    assert registry.complete_interrupted_moves(NAME, KNOWN) == {CHAMPION: None}
    assert registry.aliases(NAME) == {CHAMPION: 1}  # deleting needs MANAGE: never by a record
    assert intent_of(versions) is None
    assert "alias 'champion' of model not deleted" in caplog.text


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ("{not json", "not a record move_aliases writes"),
        (json.dumps({"moves": {CHAMPION: 2}}), "not a record move_aliases writes"),
        (
            {"moves": {"production": 2}},
            "alias 'production' is none of champion, challenger, previous-champion",
        ),
        ({"moves": {CHAMPION: 9}}, "version 9 of model does not exist"),
        ({"moves": {CHAMPION: "2"}}, "version '2' of 'champion' is not a number"),
        ({"moves": {CHAMPION: 2}, "run_id": "forged"}, "its writer, run 'forged', does not exist"),
    ],
)
def test_a_record_that_does_not_check_out_is_one_line_and_moves_nothing(
    versions: mlflow.MlflowClient, caplog: pytest.LogCaptureFixture, record: object, why: str
) -> None:
    with mlflow.start_run() as run:
        pass
    if isinstance(record, dict):
        record = a_record(run.info.run_id, {}) | record
    plant(versions, record)
    assert registry.complete_interrupted_moves(NAME, KNOWN) is None
    assert registry.aliases(NAME) == {CHAMPION: 1}
    (line,) = [r.getMessage() for r in caplog.records if "alias-move record" in r.getMessage()]
    assert line == f"ignoring the alias-move record on model: {why}"
    # The next move replaces it, and clears it.
    registry.move_aliases(NAME, {CHAMPION: 2}, {CHAMPION: 1}, run.info.run_id, KNOWN)
    assert registry.aliases(NAME) == {CHAMPION: 2} and intent_of(versions) is None


def test_the_record_of_a_live_review_is_left_to_it(versions: mlflow.MlflowClient) -> None:
    with mlflow.start_run() as live:  # RUNNING, in this very process, just now
        plant(
            versions,
            a_record(
                live.info.run_id,
                {PREVIOUS: 1, CHAMPION: 2},
                process=stale_runs.this_process(),
                written_at=time.time(),
            ),
        )
        assert registry.complete_interrupted_moves(NAME, KNOWN) is None
        assert registry.aliases(NAME) == {CHAMPION: 1} and intent_of(versions) is not None
    # Its run ended without clearing it: the next caller finishes the moves.
    assert registry.complete_interrupted_moves(NAME, KNOWN) == {PREVIOUS: 1, CHAMPION: 2}
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 2}
