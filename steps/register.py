"""Entry point `register`: review a candidate for `champion`, roll back, list versions,
or list (`stale`) and end (`reap`) runs left RUNNING by a process that is gone."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow

from tabular_mlops import interrupts, registry, stale_runs, tracking
from tabular_mlops.cli import (
    boolean,
    config_parser,
    configure_logging,
    number,
    run_with_config,
    unset_or,
)
from tabular_mlops.config import ProjectConfig
from tabular_mlops.errors import PromotionError

if TYPE_CHECKING:
    from tabular_mlops import promotion

ENTRY_POINT = "register"
ACTIONS = ("promote", "rollback", "list", "stale", "reap")
logger = logging.getLogger(__name__)

# Parameter -> config key it overrides.
OVERRIDES = {
    "data_path": "data.path",
    "registered_model_name": "tracking.registered_model_name",
    "metric": "promotion.metric",
    "threshold": "promotion.threshold",
    "min_improvement": "promotion.min_improvement",
    "holdout_path": "promotion.holdout_path",
    "allow_pickle": "trust.allow_pickle",
    "stale_after_hours": "tracking.stale_after_hours",
}


@dataclass(frozen=True)
class RegisterResult:
    run_id: str
    decision: promotion.Decision | None  # None for `list`, `stale`, `reap`
    stale: list[stale_runs.StaleRun] = field(default_factory=list)  # `stale`, `reap`


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(ENTRY_POINT, __doc__)
    text = unset_or(str)
    parser.add_argument("--action", choices=ACTIONS, default="promote")
    parser.add_argument("--run-id", type=text)
    parser.add_argument("--dry-run", type=boolean, default=False)
    parser.add_argument("--data-path", type=text)
    parser.add_argument("--registered-model-name", type=text)
    parser.add_argument("--metric", type=text)
    parser.add_argument("--threshold", type=unset_or(number))
    parser.add_argument("--min-improvement", type=unset_or(number))
    parser.add_argument("--holdout-path", type=text)
    parser.add_argument("--allow-pickle", type=unset_or(boolean))
    parser.add_argument("--stale-after-hours", type=unset_or(number))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def register(
    config: ProjectConfig, action: str = "promote", run_id: str | None = None, dry_run: bool = False
) -> RegisterResult:
    # Heavy (sklearn, LightGBM): imported when the step runs (see train_basic).
    from tabular_mlops import promotion

    if action in ("stale", "reap"):
        return _stale_runs(config, reap=action == "reap")
    config.require_promotion()  # before any run: a config without it is a user error
    name = config.tracking.registered_model_name
    with tracking.project_run(config, ENTRY_POINT, None, __doc__) as run:
        tracking.log_config(config)
        registry.complete_interrupted_moves(name)  # first, whatever the action
        decision = None
        if action == "rollback":
            decision = promotion.rollback(config, dry_run)
        elif action == "promote":
            decision = promotion.promote(config, run_id, dry_run)
        if decision is not None:
            promotion.log_decision(decision)
            if decision.verdict == promotion.Verdict.FAILED_TO_LOAD:
                raise PromotionError(decision.reason)
            champion = config.require_promotion().champion_alias
            registry.record_alias(name, champion, decision.aliases_after.get(champion))
        versions = registry.versions_table(name)
        listing = versions.to_markdown(index=False, floatfmt=".4f") if len(versions) else "none"
        mlflow.log_text(listing, "registry/versions.md")
    if decision is not None:
        logger.info("%s", decision.summary())
    print(f"Versions of {name}:\n{listing}")
    return RegisterResult(run.info.run_id, decision)


def _stale_runs(config: ProjectConfig, reap: bool) -> RegisterResult:
    with tracking.project_run(config, ENTRY_POINT, None, __doc__) as run:
        tracking.log_config(config)
        experiments = {run.info.experiment_id}
        if named := mlflow.get_experiment_by_name(config.tracking.experiment_name):
            experiments.add(named.experiment_id)
        stale = stale_runs.find_stale(sorted(experiments), config.tracking.stale_after_hours)
        if reap:
            stale_runs.reap(stale)
        table = stale_runs.as_table(stale)
        mlflow.log_text(table, "maintenance/stale_runs.md")
        mlflow.log_metric("stale_runs", len(stale))
    verb = "ended KILLED" if reap else "found (end them with -P action=reap)"
    print(f"{len(stale)} stale run(s) {verb}:\n{table}")
    return RegisterResult(run.info.run_id, None, stale)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    return run_with_config(
        args, OVERRIDES, lambda config: register(config, args.action, args.run_id, args.dry_run)
    )


if __name__ == "__main__":
    interrupts.run_as_process(main)
