"""Model registry: versions, their descriptions and aliases (stages are deprecated)."""

import json
import logging
import re
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from sqlite_store_lock import sqlite_path, store_lock
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import Tag, Verdict
from tabular_mlops.core.sections import HEADLINE_METRICS
from tabular_mlops.runtime.faults import FaultPoint, crash_if_injected

logger = logging.getLogger(__name__)

# Tag on a version: the outcome of its last review by `register` (see tabular_mlops.jobs.promote).
Tag.REVIEW = "validation_status"
# The latest versions `versions_table` lists.
LISTED_VERSIONS = 100
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


def refuse_pickled(model_uri: str, allow_pickle: bool) -> None:
    """A PromotionError unless `model_uri` is a pipeline saved with skops: pickle and
    cloudpickle run code of the model's author when loaded, so such a model is loaded only
    if the caller says they trust that author (`allow_pickle`)."""
    if allow_pickle:
        return
    try:
        flavors = mlflow.models.get_model_info(model_uri).flavors
    except MlflowException as error:
        raise PromotionError(f"model {model_uri} cannot be read: {error.message}") from None
    saved_as = flavors.get("sklearn", {}).get("serialization_format", "no sklearn flavor")
    if saved_as != mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS:
        raise PromotionError(
            f"model {model_uri} is saved with {saved_as}, not skops: loading it would run "
            "code of whoever logged it; pass -P allow_pickle=true only if you trust them"
        )


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
        version = int(mlflow.register_model(model_uri, name).version)
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


def move_aliases(
    name: str, moves: dict[str, int | None], expected: dict[str, int | None], run_id: str
) -> None:
    """Move several aliases of `name` as one step (None deletes an alias), only if the
    aliases in `expected` are still where the caller saw them (else AliasesMovedError and
    nothing moves). The moves are recorded on the registered model first and cleared last:
    if this process dies in between, the next call (or complete_interrupted_moves) finishes
    them. On a sqlite store, concurrent callers are serialised by a file lock."""
    with _registry_lock():
        complete_interrupted_moves(name)
        now = aliases(name)
        if moved := {a: (v, now.get(a)) for a, v in expected.items() if now.get(a) != v}:
            raise AliasesMovedError(name, moved)
        client = mlflow.MlflowClient()
        intent = {"moves": moves, "run_id": run_id}
        client.set_registered_model_tag(name, Tag.ALIAS_MOVES, json.dumps(intent))
        for number, (alias, version) in enumerate(moves.items()):
            if number == 1:
                crash_if_injected(FaultPoint.BETWEEN_ALIAS_MOVES)
            _apply_move(name, alias, version)
        client.delete_registered_model_tag(name, Tag.ALIAS_MOVES)


def complete_interrupted_moves(name: str) -> dict[str, int | None] | None:
    """Finish alias moves a killed process left half-done (see move_aliases): the moves
    finished, or None if there were none."""
    try:
        tags = mlflow.MlflowClient().get_registered_model(name).tags
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if Tag.ALIAS_MOVES not in tags:
        return None
    intent = json.loads(tags[Tag.ALIAS_MOVES])
    logger.warning("completing alias moves of %s interrupted in run %s", name, intent["run_id"])
    for alias, version in intent["moves"].items():
        _apply_move(name, alias, version)
    mlflow.MlflowClient().delete_registered_model_tag(name, Tag.ALIAS_MOVES)
    return intent["moves"]


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
