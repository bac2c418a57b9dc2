"""Alias moves are one step: recorded, applied, cleared; finished by the next caller when a
process dies half-way; refused when the aliases moved meanwhile; serialised on sqlite."""

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tabular_mlops import registry
from tests.conftest import users_environment

NAME = "model"
CHAMPION, PREVIOUS = "champion", "previous-champion"
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
    return client.get_registered_model(NAME).tags.get(registry.ALIAS_INTENT_TAG)


def test_the_aliases_move_together_and_nothing_is_left_behind(
    versions: mlflow.MlflowClient,
) -> None:
    registry.move_aliases(NAME, {PREVIOUS: 1, CHAMPION: 2}, {CHAMPION: 1}, "run")
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 2}
    assert intent_of(versions) is None


def test_nothing_moves_when_the_champion_moved_meanwhile(versions: mlflow.MlflowClient) -> None:
    versions.set_registered_model_alias(NAME, CHAMPION, "3")  # another review won
    with pytest.raises(registry.AliasesMovedError, match="champion v1 -> v3"):
        registry.move_aliases(NAME, {PREVIOUS: 1, CHAMPION: 2}, {CHAMPION: 1}, "run")
    assert registry.aliases(NAME) == {CHAMPION: 3}


_MOVE = """
import sys, json, mlflow
from tabular_mlops import registry
mlflow.set_tracking_uri(sys.argv[1])
moves, expected = json.loads(sys.argv[2]), json.loads(sys.argv[3])
registry.move_aliases("model", moves, expected, "killed-run")
"""


@pytest.mark.e2e  # processes of their own: slow
def test_a_process_killed_between_the_moves_is_finished_by_the_next(
    versions: mlflow.MlflowClient, tracking_uri: str
) -> None:
    moves, expected = {PREVIOUS: 1, CHAMPION: 2}, {CHAMPION: 1}
    killed = subprocess.run(
        [sys.executable, "-c", _MOVE, tracking_uri, json.dumps(moves), json.dumps(expected)],
        env=users_environment() | {registry.FAULT_ENV: "between_alias_moves"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9  # SIGKILL, after the first move
    # The torn state a kill used to leave for good: previous-champion == champion.
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 1}
    assert json.loads(intent_of(versions))["moves"] == {PREVIOUS: 1, CHAMPION: 2}
    assert registry.complete_interrupted_moves(NAME) == moves
    assert registry.aliases(NAME) == {PREVIOUS: 1, CHAMPION: 2}
    assert intent_of(versions) is None
    assert registry.complete_interrupted_moves(NAME) is None


_REVIEWER = """
import sys, time, json
from pathlib import Path
import mlflow
from tabular_mlops import registry
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
            "model", {"previous-champion": seen, "champion": mine}, {"champion": seen}, me
        )
        outcome = "moved"
    except registry.AliasesMovedError:
        outcome = "refused"
    (folder / f"done-{round}-{me}").write_text(outcome)
"""


@pytest.mark.e2e  # processes of their own: slow
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
        (tmp_path / f"go-{round_number}").write_text(json.dumps({"a": a, "b": b}))
        done = [tmp_path / f"done-{round_number}-{me}" for me in ("a", "b")]
        deadline = time.monotonic() + 60
        while not all(path.exists() for path in done) and time.monotonic() < deadline:
            time.sleep(0.01)
        outcomes = sorted(path.read_text() for path in done)
        after = registry.aliases(NAME)
        ok = (
            outcomes == ["moved", "refused"]  # one review wins; the other saw it too late
            and after[CHAMPION] in (a, b)
            and after[PREVIOUS] == start  # the champion it replaced, the one it beat
            and after[PREVIOUS] != after[CHAMPION]
            and intent_of(versions) is None
        )
        if not ok:
            violations.append((round_number, start, outcomes, after))
    for reviewer in reviewers:
        assert reviewer.wait(timeout=60) == 0, reviewer.stderr.read() if reviewer.stderr else ""
    assert violations == []
