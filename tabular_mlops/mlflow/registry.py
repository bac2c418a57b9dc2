"""Model registry: versions, their descriptions and aliases (stages are deprecated)."""

import json
import logging
import re
import time
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
import pandas as pd
import requests
from mlflow.entities import Run, RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from sqlite_store_lock import sqlite_path, store_lock
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import Tag, Verdict
from tabular_mlops.core.sections import HEADLINE_METRICS
from tabular_mlops.runtime import processes, stale_runs
from tabular_mlops.runtime.faults import FaultPoint, crash_if_injected

logger = logging.getLogger(__name__)

# Tag on a version: the outcome of its last review by `register` (see tabular_mlops.jobs.promote).
Tag.REVIEW = "validation_status"
# The latest versions `versions_table` lists.
LISTED_VERSIONS = 100
# Creates of one version sent before its failure stands (see _create_version).
CREATE_ATTEMPTS = 3
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


class AliasesMovedError(Exception):
    """Aliases were not where the caller saw them: someone else moved them meanwhile."""

    def __init__(self, name: str, moved: dict[str, tuple[int | None, int | None]]) -> None:
        self.moved = moved  # alias -> (expected version, current version)
        shown = ", ".join(f"{a} v{was} -> v{now}" for a, (was, now) in moved.items())
        super().__init__(f"aliases of {name} moved meanwhile: {shown}")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    created: bool  # False: the model was registered before and that version is reused

    @property
    def uri(self) -> str:
        return version_uri(self.name, self.version)


def alias_uri(registered_model_name: str, alias: str) -> str:
    return f"models:/{registered_model_name}@{alias}"


def version_uri(registered_model_name: str, version: int) -> str:
    return f"models:/{registered_model_name}/{version}"


def parse_version_uri(uri: str) -> tuple[str, int]:
    """(name, version) of a `models:/<name>/<version>` URI."""
    match = _VERSION_URI.match(uri)
    if match is None:
        raise PromotionError(f"{uri!r} is not a models:/<name>/<version> URI")
    return match["name"], int(match["version"])


def record_alias(name: str, alias: str, version: int | None) -> None:
    """Tag the active run with the version `alias` of `name` points at as it ends (None:
    no version has it), the one this run leaves in charge; `main` reuses the run only
    while the alias stays there."""
    if version is not None:
        mlflow.set_tags({Tag.CHAMPION_URI: version_uri(name, version), Tag.CHAMPION_ALIAS: alias})


def alias_still_at(run: Run) -> bool:
    """Whether the alias a run recorded (see `record_alias`) still points where it did."""
    uri, alias = run.data.tags.get(Tag.CHAMPION_URI), run.data.tags.get(Tag.CHAMPION_ALIAS)
    if uri is None or alias is None:
        return True
    name, version = parse_version_uri(uri)
    return aliases(name).get(alias) == version


def find_version(name: str, run_id: str, model_uri: str) -> ModelVersion | None:
    """The version of `name` registered from the model `run_id` logged at `model_uri`."""
    versions = mlflow.MlflowClient().search_model_versions(
        f"name = '{name}' and run_id = '{run_id}'"
    )
    return next((version for version in versions if version.source == model_uri), None)


def register_run_model(
    run_id: str, model_uri: str, name: str, model_description: str = ""
) -> RegisteredVersion:
    """Register the model `run_id` logged at `model_uri`, once: registering the same model
    again reuses its version. Either way the version gets a description and tags taken
    from the run (metrics, data digest, git commit), and the registered model
    `model_description` (when given and different)."""
    client = mlflow.MlflowClient()
    existing = find_version(name, run_id, model_uri)
    if existing is None:
        version = _create_version(run_id, model_uri, name)
        if model_description and client.get_registered_model(name).description != model_description:
            client.update_registered_model(name, description=model_description)
    else:
        version = int(existing.version)
        logger.info("%s is already %s version %d: reusing it", model_uri, name, version)
    run = client.get_run(run_id)
    client.update_model_version(name, str(version), description=describe(run))
    for key in (Tag.ENTRY_POINT, Tag.DATASET_DIGEST, Tag.GIT_COMMIT):
        if key in run.data.tags:
            client.set_model_version_tag(name, str(version), key, run.data.tags[key])
    return RegisteredVersion(name, version, run_id, created=existing is None)


def _create_version(run_id: str, model_uri: str, name: str) -> int:
    """`mlflow.register_model`, made idempotent. MLflow's client retries a request that
    timed out or was cut, POSTs included: a create the server had received then makes a
    second version. Here the create is sent without those retries; after a failure the
    version is looked for (with them) and created again only if absent, at most
    CREATE_ATTEMPTS times. Sound while the server gives up a request before the client
    does (the team stack: gunicorn's 60 s against MLflow's 120 s, MLFLOW_HTTP_REQUEST_TIMEOUT):
    a create the server gave up was rolled back, so absent means never made."""
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with processes.environment_variable(MLFLOW_HTTP_REQUEST_MAX_RETRIES.name, "0"):
                return int(mlflow.register_model(model_uri, name).version)
        except (MlflowException, requests.exceptions.RequestException) as error:
            found = find_version(name, run_id, model_uri)
            if found is not None:
                logger.info(
                    "%s became %s version %s (its answer was lost)", model_uri, name, found.version
                )
                return int(found.version)
            if attempt == CREATE_ATTEMPTS:
                raise
            logger.warning(
                "registering %s as %s failed (%s): trying again (%d/%d)",
                model_uri,
                name,
                str(error).splitlines()[0][:300],
                attempt + 1,
                CREATE_ATTEMPTS,
            )
    raise AssertionError("not reached")


def describe(run: Run) -> str:
    """A version's description: where its model comes from and how it scored."""
    tags, metrics = run.data.tags, run.data.metrics
    scores = ", ".join(
        f"{name} {metrics[name]:.4f}" for name in HEADLINE_METRICS if name in metrics
    )
    commit = tags.get(Tag.GIT_COMMIT, "unknown")
    if tags.get(Tag.GIT_DIRTY) == "true":
        commit += " (uncommitted changes)"
    return (
        f"Logged by run {run.info.run_id} (entry point {tags.get(Tag.ENTRY_POINT, 'unknown')}). "
        f"Test split: {scores or 'no metrics'}. "
        f"Data digest {tags.get(Tag.DATASET_DIGEST, 'unknown')}; git commit {commit}."
    )


def aliases(name: str) -> dict[str, int]:
    """Alias -> version of the registered model `name`; empty when it does not exist."""
    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return {}
        raise
    return {alias: int(version) for alias, version in model.aliases.items()}


def first_alias_version_uri(name: str, candidates: list[str]) -> str:
    """`models:/name/<version>` of the first alias in `candidates` that `name` has."""
    existing = aliases(name)
    for alias in candidates:
        if alias in existing:
            logger.info("%s is version %d of %s", alias_uri(name, alias), existing[alias], name)
            return version_uri(name, existing[alias])
    raise PromotionError(
        f"no version of {name!r} has alias {' or '.join(map(repr, candidates))}: "
        "run train_basic (and register) first, or pass -P model_uri=..."
    )


# A record of alias moves older than this is finished by the next caller even if its
# writer seems alive (a process on another host cannot be asked).
REPLAY_AFTER_SECONDS = 600


class BrokenRecordError(Exception):
    """The alias-move record on a registered model is not one `move_aliases` wrote."""


@dataclass(frozen=True)
class AliasMoves:
    """What `move_aliases` writes on the registered model before it moves anything: the
    moves, and who wrote them when."""

    moves: dict[str, int | None]
    run_id: str
    process: str  # as Tag.PROCESS: host, pid, start
    written_at: float  # seconds since the epoch

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def parse(cls, text: str, name: str, known_aliases: Collection[str]) -> "AliasMoves":
        """The record, checked against the registry: anyone who may edit the registered
        model may write its tags, so nothing in it is taken on trust."""
        try:
            record = json.loads(text)
            moves, run_id = record["moves"], record["run_id"]
            process, written_at = record["process"], float(record["written_at"])
        except (ValueError, TypeError, KeyError):
            raise BrokenRecordError("not a record move_aliases writes") from None
        if (
            not isinstance(moves, dict)
            or not isinstance(run_id, str)
            or not isinstance(process, str)
        ):
            raise BrokenRecordError("not a record move_aliases writes")
        client = mlflow.MlflowClient()
        for alias, version in moves.items():
            if alias not in known_aliases:
                raise BrokenRecordError(f"alias {alias!r} is none of {', '.join(known_aliases)}")
            if version is not None:
                if not isinstance(version, int) or isinstance(version, bool):
                    raise BrokenRecordError(f"version {version!r} of {alias!r} is not a number")
                try:
                    client.get_model_version(name, str(version))
                except MlflowException:
                    raise BrokenRecordError(f"version {version} of {name} does not exist") from None
        try:
            client.get_run(run_id)
        except MlflowException:
            raise BrokenRecordError(f"its writer, run {run_id!r}, does not exist") from None
        return cls(moves, run_id, process, written_at)

    def writer_may_run(self) -> bool:
        """Whether its writer may still be moving the aliases: its run RUNNING, its process
        not known to be gone, and the record recent."""
        if time.time() - self.written_at > REPLAY_AFTER_SECONDS:
            return False
        if mlflow.MlflowClient().get_run(self.run_id).info.status != RunStatus.to_string(
            RunStatus.RUNNING
        ):
            return False
        return not stale_runs.process_gone(self.process)


def move_aliases(
    name: str,
    moves: dict[str, int | None],
    expected: dict[str, int | None],
    run_id: str,
    known_aliases: Collection[str],
) -> None:
    """Move several aliases of `name` as one step (None deletes an alias), only if the
    aliases in `expected` are still where the caller saw them (else AliasesMovedError and
    nothing moves). The moves are recorded on the registered model first and cleared last:
    if this process dies in between, the next call (or complete_interrupted_moves) finishes
    them. On a sqlite store, concurrent callers are serialised by a file lock; on a
    tracking server nothing serialises them (see the README: two reviews at once)."""
    with _registry_lock():
        complete_interrupted_moves(name, known_aliases)
        now = aliases(name)
        if moved := {a: (v, now.get(a)) for a, v in expected.items() if now.get(a) != v}:
            raise AliasesMovedError(name, moved)
        client = mlflow.MlflowClient()
        record = AliasMoves(moves, run_id, stale_runs.this_process(), time.time())
        client.set_registered_model_tag(name, Tag.ALIAS_MOVES, record.to_json())
        for number, (alias, version) in enumerate(moves.items()):
            if number == 1:
                crash_if_injected(FaultPoint.BETWEEN_ALIAS_MOVES)
            _apply_move(name, alias, version)
        client.delete_registered_model_tag(name, Tag.ALIAS_MOVES)


def interrupted_moves(name: str, known_aliases: Collection[str]) -> AliasMoves | None:
    """The alias moves a process left half-done on `name` (see move_aliases), checked; None
    if there are none. A record that does not check out is reported in one line and left
    alone (the next move_aliases replaces it)."""
    try:
        tags = mlflow.MlflowClient().get_registered_model(name).tags
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if Tag.ALIAS_MOVES not in tags:
        return None
    try:
        return AliasMoves.parse(tags[Tag.ALIAS_MOVES], name, known_aliases)
    except BrokenRecordError as error:
        logger.warning("ignoring the alias-move record on %s: %s", name, error)
        return None


def complete_interrupted_moves(
    name: str, known_aliases: Collection[str]
) -> dict[str, int | None] | None:
    """Finish alias moves a killed process left half-done (see move_aliases), unless their
    writer may still be at it: the moves finished, or None. An interrupted move never
    deletes an alias (deleting needs MANAGE: a record anyone may write must not do it)."""
    record = interrupted_moves(name, known_aliases)
    if record is None:
        return None
    if record.writer_may_run():
        logger.info("alias moves of %s are in progress in run %s: left to it", name, record.run_id)
        return None
    logger.warning("completing alias moves of %s interrupted in run %s", name, record.run_id)
    for alias, version in record.moves.items():
        if version is None:
            logger.warning(
                "alias %r of %s not deleted: only its own review deletes one", alias, name
            )
        else:
            _apply_move(name, alias, version)
    mlflow.MlflowClient().delete_registered_model_tag(name, Tag.ALIAS_MOVES)
    return record.moves


def _apply_move(name: str, alias: str, version: int | None) -> None:
    if version is not None:
        move_alias(name, alias, version)
    elif alias in aliases(name):
        delete_alias(name, alias)


def _registry_lock() -> AbstractContextManager[None]:
    uri = mlflow.get_registry_uri()
    return store_lock(uri) if uri.startswith("sqlite:") and sqlite_path(uri) else nullcontext()


def move_alias(name: str, alias: str, version: int) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))
    logger.info("alias %r of %s -> version %d", alias, name, version)


def delete_alias(name: str, alias: str) -> None:
    mlflow.MlflowClient().delete_registered_model_alias(name, alias)
    logger.info("alias %r of %s deleted", alias, name)


def set_review(name: str, version: int, outcome: Verdict) -> None:
    mlflow.MlflowClient().set_model_version_tag(name, str(version), Tag.REVIEW, outcome)


def runs_with_review(name: str, outcomes: tuple[Verdict, ...]) -> set[str]:
    """Run ids of the versions of `name` whose last review ended in one of `outcomes`."""
    client = mlflow.MlflowClient()
    return {
        version.run_id
        for outcome in outcomes
        for version in client.search_model_versions(
            f"name = '{name}' and tags.{Tag.REVIEW} = '{outcome}'"
        )
        if version.run_id
    }


def versions_table(name: str, metrics: tuple[str, ...] = HEADLINE_METRICS) -> pd.DataFrame:
    """The latest versions of `name`, newest first, with their aliases, review outcome and
    their runs' test metrics (from one `search_runs` call)."""
    versions = mlflow.MlflowClient().search_model_versions(
        f"name = '{name}'", max_results=LISTED_VERSIONS, order_by=["version_number DESC"]
    )
    # Search results may leave aliases out (MLflow says so): take them from the model.
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases(name).items():
        by_version.setdefault(version, []).append(alias)
    run_ids = sorted({version.run_id for version in versions if version.run_id})
    runs = (
        mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"attributes.run_id IN ({', '.join(repr(r) for r in run_ids)})",
            output_format="list",
        )
        if run_ids
        else []
    )
    run_metrics = {run.info.run_id: run.data.metrics for run in runs}
    rows = [
        {
            "version": int(version.version),
            "aliases": ", ".join(sorted(by_version.get(int(version.version), []))),
            "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
            "run_id": version.run_id,
            "entry_point": version.tags.get(Tag.ENTRY_POINT, ""),
            Tag.REVIEW: version.tags.get(Tag.REVIEW, ""),
        }
        | {metric: run_metrics.get(version.run_id, {}).get(metric) for metric in metrics}
        for version in versions
    ]
    return pd.DataFrame(rows)
