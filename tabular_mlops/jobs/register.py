"""The `register` job: review a candidate for champion (jobs.promote), roll back, list the
versions, or list and end runs left RUNNING by a process that is gone."""

import logging
from dataclasses import dataclass, field

import mlflow

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import Artifact, Verdict
from tabular_mlops.jobs import promote
from tabular_mlops.jobs.entry_points import REGISTER
from tabular_mlops.mlflow import registry, runs
from tabular_mlops.runtime import stale_runs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    decision: promote.Decision | None  # None for `list`, `stale`, `reap`
    stale: list[stale_runs.StaleRun] = field(default_factory=list)  # `stale`, `reap`


def register(
    config: ProjectConfig, action: str = "promote", run_id: str | None = None, dry_run: bool = False
) -> RegisterResult:
    if action in ("stale", "reap"):
        return _stale_runs(config, reap=action == "reap")
    promotion = config.require_promotion()  # before any run: a config without it is a user error
    name = config.tracking.registered_model_name
    with runs.project_run(config, REGISTER.name, None, REGISTER.summary) as run:
        runs.log_config(config)
        if action in ("promote", "rollback") and not dry_run:
            registry.complete_interrupted_moves(name, promotion.aliases)  # before any move
        elif interrupted := registry.interrupted_moves(name, promotion.aliases):
            logger.warning(
                "alias moves of %s interrupted in run %s: the next review or rollback "
                "finishes them",
                name,
                interrupted.run_id,
            )
        decision = None
        if action == "rollback":
            decision = promote.rollback(config, dry_run)
        elif action == "promote":
            decision = promote.promote(config, run_id, dry_run)
        if decision is not None:
            promote.log_decision(decision)
            if decision.verdict == Verdict.FAILED_TO_LOAD:
                raise PromotionError(decision.reason)
            champion = promotion.champion_alias
            registry.record_alias(name, champion, decision.aliases_after.get(champion))
        versions = registry.versions_table(name)
        listing = versions.to_markdown(index=False, floatfmt=".4f") if len(versions) else "none"
        mlflow.log_text(listing, Artifact.VERSIONS)
    if decision is not None:
        logger.info("%s", decision.summary())
    print(f"Versions of {name}:\n{listing}")
    return RegisterResult(run.info.run_id, decision)


def _stale_runs(config: ProjectConfig, reap: bool) -> RegisterResult:
    with runs.project_run(config, REGISTER.name, None, REGISTER.summary) as run:
        runs.log_config(config)
        experiments = {run.info.experiment_id}
        if named := mlflow.get_experiment_by_name(config.tracking.experiment_name):
            experiments.add(named.experiment_id)
        stale = stale_runs.find_stale(sorted(experiments), config.tracking.stale_after_hours)
        if reap:
            stale_runs.reap(stale)
        table = stale_runs.as_table(stale)
        mlflow.log_text(table, Artifact.STALE_RUNS)
        mlflow.log_metric("stale_runs", len(stale))
    verb = "ended KILLED" if reap else "found (end them with -P action=reap)"
    print(f"{len(stale)} stale run(s) {verb}:\n{table}")
    return RegisterResult(run.info.run_id, None, stale)
