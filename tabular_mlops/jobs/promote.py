"""The champion/challenger gate of `register`, and its rollback, on plain MLflow.

A candidate (a run's logged model) is registered once, must load from the registry and
predict on its input example, then takes the `challenger` alias and is judged against the
`champion` on the same held-out rows: `mlflow.models.evaluate` for both, then
`mlflow.validate_evaluation_results` with the config's thresholds. Only a pass moves
`champion`; the champion it replaces keeps `previous-champion`, so a rollback is one call.
"""

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import EvaluationResult, MetricThreshold
from mlflow.models.evaluation.validation import ModelValidationFailedException

from tabular_mlops.core import data
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import MAX_TAG_LENGTH, Artifact, Tag, Verdict
from tabular_mlops.core.sections import PromotionConfig
from tabular_mlops.jobs import candidates
from tabular_mlops.mlflow import datasets, descriptions, evaluation, registry
from tabular_mlops.mlflow.model_trust import CheckedModel, LoadPolicy
from tabular_mlops.runtime import interrupts, stale_runs

logger = logging.getLogger(__name__)


@dataclass
class Decision:
    """Everything `register` decided, and on what grounds: logged to its run."""

    action: str
    registered_model: str
    dry_run: bool
    aliases_before: dict[str, int]
    verdict: Verdict | None = None
    reason: str = ""
    applied: bool = False  # whether the registry changed
    candidate_run_id: str | None = None
    candidate_model_uri: str | None = None
    selected_by: str | None = None
    candidate_version: int | None = None  # None: a dry run of a model not yet registered
    champion_version: int | None = None
    holdout: dict[str, Any] = field(default_factory=dict)
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    aliases_after: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        prefix = "dry run, nothing changed: " if self.dry_run else ""
        return f"{prefix}{self.verdict}: {self.reason}"


def promote(config: ProjectConfig, run_id: str | None, dry_run: bool) -> Decision:
    """Review a candidate (`run_id`, or the experiment's best run) for `champion`."""
    promotion = config.require_promotion()
    name = config.tracking.registered_model_name
    with tempfile.TemporaryDirectory(prefix="review-") as scratch:
        # A wrong run id, or a model that is not safe to load, fails before any work.
        given = candidates.from_run(run_id, config, Path(scratch, "given")) if run_id else None
        training = data.load_table(config.data)
        holdout = data.load_holdout(training, config.data, config.split, promotion.holdout_path)
        datasets.log_dataset(holdout.table, context="holdout")
        # What a run must have trained on for these rows to be held out from it.
        trained_on = candidates.training_fingerprint(config, training.digest)

        candidate = given or candidates.best_candidate(
            config, trained_on, holdout.is_test_split, Path(scratch, "ranked")
        )
        if holdout.is_test_split and (
            mismatch := candidates.differences(candidate.run, trained_on)
        ):
            raise PromotionError(
                f"run {candidate.run_id} was trained on other data or another split "
                f"({mismatch}), so the test split is not held out from it: retrain it with "
                "this config, or set promotion.holdout_path to rows no candidate trained on"
            )
        decision = Decision(
            action="promote",
            registered_model=name,
            dry_run=dry_run,
            aliases_before=registry.aliases(name),
            candidate_run_id=candidate.run_id,
            candidate_model_uri=candidate.model_uri,
            selected_by=candidate.selected_by,
            holdout={
                "source": str(holdout.table.source),
                "rows": len(holdout.y),
                "test_split": holdout.is_test_split,
            },
        )
        decision.champion_version = decision.aliases_before.get(promotion.champion_alias)
        # The champion is checked too: whoever may move an alias may point it at any model.
        champion = (
            LoadPolicy.of(config).checked(
                registry.version_uri(name, decision.champion_version), Path(scratch, "champion")
            )
            if decision.champion_version is not None
            else None
        )
        spec = training.spec
        described = descriptions.pipeline_model(config, spec.numeric, spec.categorical)
        review = Review(candidate, champion, promotion, holdout, trained_on, described)
        _review(decision, review, dry_run)
    decision.aliases_after = registry.aliases(name)
    return decision


@dataclass(frozen=True)
class Review:
    """What a review compares, on what rows."""

    candidate: candidates.Candidate
    champion: CheckedModel | None  # the champion's version, checked; None: there is none
    promotion: PromotionConfig
    holdout: data.Holdout
    trained_on: dict[str, str]
    model_description: str


def _review(decision: Decision, review: Review, dry_run: bool) -> None:
    candidate, promotion, holdout = review.candidate, review.promotion, review.holdout
    name, champion = decision.registered_model, decision.champion_version
    existing = registry.find_version(name, candidate.run_id, candidate.model_uri)
    if existing is not None and int(existing.version) == champion:
        decision.candidate_version = champion
        decision.verdict = Verdict.ALREADY_CHAMPION
        decision.reason = f"version {champion} of {name} ({candidate.model_uri}) is the champion"
        return

    # The version the registry is changed for; None in a dry run, which changes nothing.
    registered: int | None = None
    if dry_run:
        version = int(existing.version) if existing is not None else None
        review_uri = registry.version_uri(name, version) if version else candidate.model_uri
    else:
        done = registry.register_run_model(
            candidate.run_id, candidate.model_uri, name, review.model_description
        )
        version = registered = done.version
        review_uri = done.uri
    decision.candidate_version = version

    try:
        check_loads(candidate.model)  # the version's model: registered from that very URI
    except Exception as error:  # whatever breaks loading or predicting, the model is unusable
        decision.verdict = Verdict.FAILED_TO_LOAD
        decision.reason = f"{review_uri} cannot serve: {_one_line(error)}"
        if registered is not None:
            registry.set_review(name, registered, Verdict.FAILED_TO_LOAD)
        return
    if registered is not None:
        registry.move_alias(name, promotion.challenger_alias, registered)

    challenger_result = _evaluate("challenger", candidate.model, review_uri, holdout)
    champion_result = None
    if champion is not None and review.champion is not None:
        champion_run = mlflow.MlflowClient().get_model_version(name, str(champion)).run_id
        if holdout.is_test_split and champion_run:
            candidates.warn_if_not_held_out(champion, champion_run, review.trained_on)
        champion_result = _evaluate("champion", review.champion, review.champion.uri, holdout)
    decision.challenger_metrics = dict(challenger_result.metrics)
    decision.champion_metrics = dict(champion_result.metrics) if champion_result else {}

    passed, decision.reason = judge(promotion, challenger_result, champion_result)
    if passed and registered is not None:
        # Tagged before it can become champion, so that a champion always shows it passed,
        # even when a later `register` completes moves this process was killed amid.
        registry.set_review(name, registered, Verdict.PASSED)
        # Both aliases in one step, only if `champion` is still the version just compared.
        moves: dict[str, int | None] = {promotion.champion_alias: registered}
        if champion is not None:
            moves = {promotion.previous_champion_alias: champion, **moves}
        try:
            expected = {promotion.champion_alias: champion}
            registry.move_aliases(name, moves, expected, _run_id(), promotion.aliases)
        except registry.AliasesMovedError as moved:
            passed = False
            decision.reason = (
                f"{moved}: the challenger was compared with version {champion}, not with the "
                "champion now; run register again to compare it with that one"
            )
    decision.verdict = Verdict.PASSED if passed else Verdict.REJECTED
    if registered is None:
        return
    registry.set_review(name, registered, decision.verdict)
    decision.applied = True


def rollback(config: ProjectConfig, dry_run: bool) -> Decision:
    """Move `champion` back to `previous-champion`, which is then cleared (so a second
    rollback cannot bring the withdrawn version back)."""
    promotion = config.require_promotion()
    name = config.tracking.registered_model_name
    before = registry.aliases(name)
    previous = before.get(promotion.previous_champion_alias)
    if previous is None:
        raise PromotionError(
            f"{name} has no {promotion.previous_champion_alias!r} alias: nothing to roll back to"
        )
    current = before.get(promotion.champion_alias)
    if not dry_run:
        # `previous-champion` is cleared (not left equal to `champion`) in the same step.
        moves = {promotion.champion_alias: previous, promotion.previous_champion_alias: None}
        expected = {promotion.champion_alias: current, promotion.previous_champion_alias: previous}
        try:
            registry.move_aliases(name, moves, expected, _run_id(), promotion.aliases)
        except registry.AliasesMovedError as moved:
            raise PromotionError(f"rollback not done: {moved}; run it again") from None
        if current is not None:
            registry.set_review(name, current, Verdict.ROLLED_BACK)
    return Decision(
        action="rollback",
        registered_model=name,
        dry_run=dry_run,
        aliases_before=before,
        verdict=Verdict.ROLLED_BACK,
        reason=f"{promotion.champion_alias!r} moves from version {current} back to {previous}",
        applied=not dry_run,
        candidate_version=previous,
        champion_version=current,
        aliases_after=registry.aliases(name),
    )


def _run_id() -> str:
    run = mlflow.active_run()
    return run.info.run_id if run else "none"


def check_loads(checked: CheckedModel) -> None:
    """Load a checked model as a pyfunc and predict on its input example, or raise."""
    with checked.loading() as local:
        model = mlflow.pyfunc.load_model(str(local))
    example = model.input_example
    if example is None:
        raise ValueError("the model has no input example to predict on")
    predictions = model.predict(example)
    if len(predictions) != len(example):
        raise ValueError(f"{len(predictions)} predictions for {len(example)} example rows")


def judge(
    promotion: PromotionConfig,
    challenger: EvaluationResult,
    champion: EvaluationResult | None,
) -> tuple[bool, str]:
    """MLflow's validation of the challenger against the threshold and, when there is a
    champion, against it; returns whether it passed and why."""
    threshold = MetricThreshold(
        threshold=promotion.threshold,
        min_absolute_change=promotion.min_improvement if champion is not None else None,
        greater_is_better=promotion.greater_is_better,
    )
    try:
        mlflow.validate_evaluation_results({promotion.metric: threshold}, challenger, champion)
    except ModelValidationFailedException as failure:
        return False, _one_line(failure.message)
    metric = promotion.metric
    reason = f"{metric} {challenger.metrics[metric]:.4f} reaches {promotion.threshold}"
    if champion is not None:
        reason += (
            f" and beats the champion's {champion.metrics[metric]:.4f} "
            f"by at least {promotion.min_improvement}"
        )
    return True, reason + " on the held-out rows"


def log_decision(decision: Decision) -> None:
    """The decision as params, metrics, a tag and a JSON artifact of the active run."""
    record = asdict(decision)
    mlflow.log_dict(record, Artifact.DECISION)
    scalars = {
        key: value
        for key, value in record.items()
        if key not in {"reason", "aliases_before", "aliases_after", "holdout"}
        and not isinstance(value, dict)
        and value is not None
    }
    mlflow.log_params({f"decision.{key}": value for key, value in scalars.items()})
    mlflow.log_metrics(
        {f"challenger.{key}": value for key, value in decision.challenger_metrics.items()}
        | {f"champion.{key}": value for key, value in decision.champion_metrics.items()}
    )
    mlflow.set_tags(
        {
            Tag.VERDICT: str(decision.verdict),
            Tag.VERDICT_REASON: decision.reason[:MAX_TAG_LENGTH],
        }
    )


def _evaluate(
    role: str, model: CheckedModel, model_uri: str, holdout: data.Holdout
) -> EvaluationResult:
    """Evaluate in a child run of the register run, so both evaluations keep every metric
    and plot side by side."""
    tags = {
        Tag.ENTRY_POINT: "register",
        Tag.PROCESS: stale_runs.this_process(),
        Tag.ROLE: role,
        Tag.EVALUATED_MODEL_URI: model_uri,
    }
    run = mlflow.start_run(run_name=f"evaluate {role}", nested=True, tags=tags)
    with run, interrupts.run_ends_killed(run.info.run_id):
        return evaluation.evaluate_model(model, holdout.X, holdout.y)


def _one_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return " ".join(text.split())
