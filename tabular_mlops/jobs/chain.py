"""The `main` job: the whole lifecycle, train_basic -> track -> register -> custom_model, each
a child run (see jobs.step_cache: in this process under `--env-manager local`, through
`mlflow.run` otherwise); a step whose inputs did not change since an earlier run is reused."""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from tabular_mlops.core import data
from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import StepFailedError
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.core.sections import PromotionConfig
from tabular_mlops.jobs import step_cache
from tabular_mlops.jobs.entry_points import CUSTOM_MODEL, MAIN, REGISTER, STEPS, TRACK, TRAIN_BASIC
from tabular_mlops.jobs.step_cache import StepCall, StepMains, StepRun
from tabular_mlops.mlflow import descriptions, registry, runs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MainResult:
    run_id: str
    steps: list[StepRun]
    served_uri: str  # models:/<custom model>@<alias>


def run_chain(
    config: ProjectConfig,
    step_parameters: Mapping[str, Mapping[str, Any]],
    force: bool,
    project_dir: Path,
    mains: StepMains,
) -> MainResult:
    """Run the steps in order; `step_parameters` holds each step's typed parameters (those
    of `main` routed to it), `mains` each step module's `main(argv)` (for in-process runs)."""
    promotion, custom = config.require_promotion(), config.require_custom_model()
    config.require_tuning()
    with runs.project_run(config, MAIN.name, None, MAIN.summary) as run:
        runs.log_config(config)
        table = data.load_table(config.data)  # bad data fails here, before any step
        context = step_cache.ChainContext(
            project_dir=project_dir,
            experiment_id=run.info.experiment_id,
            env_manager=step_cache.env_manager_of(mlflow.get_run(run.info.run_id)),
            git_commit=step_cache.clean_commit(project_dir),
            config_sha256=step_cache.file_sha256(config.source),
            dataset_digest=table.digest,
            force=force,
        )
        launcher = step_cache.launcher_for(context.env_manager, mains)
        steps: list[StepRun] = []

        def run_step(call: StepCall) -> StepRun:
            position = f"[{len(steps) + 1}/{len(STEPS)}] {call.entry_point}"
            done = step_cache.run_step(call, context, launcher, label=position)
            how = "reused run" if done.reused else f"ran in {done.seconds:.1f} s: run"
            logger.info("%s: %s %s", position, how, done.run_id)
            steps.append(done)
            return done

        def parameters(step: str) -> dict[str, Any]:
            return {"config": config.source} | dict(step_parameters.get(step, {}))

        basic = run_step(StepCall(TRAIN_BASIC.name, parameters(TRAIN_BASIC.name)))
        tuned = run_step(
            StepCall(
                TRACK.name,
                parameters(TRACK.name) | {"baseline_run_id": basic.run_id},
                upstream={TRAIN_BASIC.name: basic.run_id},
            )
        )
        candidate = better_of(basic, tuned, promotion)
        review = run_step(
            StepCall(
                REGISTER.name,
                parameters(REGISTER.name) | {"run_id": candidate.run_id},
                upstream={TRAIN_BASIC.name: basic.run_id, TRACK.name: tuned.run_id},
            )
        )
        champion_uri = review.run.data.tags.get(Tag.CHAMPION_URI)
        if champion_uri is None:
            raise StepFailedError(
                f"register left no {promotion.champion_alias!r} version of "
                f"{config.tracking.registered_model_name} to wrap: "
                f"{review.run.data.tags.get(Tag.VERDICT)}: "
                f"{review.run.data.tags.get(Tag.VERDICT_REASON)}"
            )
        run_step(
            StepCall(
                CUSTOM_MODEL.name,
                parameters(CUSTOM_MODEL.name) | {"model_uri": champion_uri},
                upstream={REGISTER.name: review.run_id},
            )
        )
        summary = summarize(steps, config, context.env_manager)
        log_chain(steps, summary)
    print(summary)
    served_uri = registry.alias_uri(custom.registered_model_name, custom.alias)
    return MainResult(run.info.run_id, steps, served_uri)


def better_of(basic: StepRun, tuned: StepRun, promotion: PromotionConfig) -> StepRun:
    """The run whose test `promotion.metric` is better: `register`'s candidate."""
    scores = {}
    for step in (basic, tuned):
        if promotion.metric not in step.run.data.metrics:
            raise StepFailedError(
                f"step {step.entry_point} (run {step.run_id}) logged no {promotion.metric!r}"
            )
        scores[step.entry_point] = step.run.data.metrics[promotion.metric]
    sign = 1 if promotion.greater_is_better else -1
    best = tuned if sign * scores[TRACK.name] > sign * scores[TRAIN_BASIC.name] else basic
    logger.info(
        "candidate: %s (test %s %s)",
        best.entry_point,
        promotion.metric,
        ", ".join(f"{step} {score:.4f}" for step, score in scores.items()),
    )
    return best


def summarize(steps: list[StepRun], config: ProjectConfig, env_manager: str) -> str:
    """The steps' runs, both registered models' aliases and the command to serve."""
    custom = config.require_custom_model()
    reused = sum(step.reused for step in steps)
    lines = [f"main: {len(steps)} steps, {reused} reused"]
    lines += [
        f"  {step.entry_point:<13} run {step.run_id}  "
        + ("reused" if step.reused else f"ran in {step.seconds:.1f} s")
        for step in steps
    ]
    for name in (config.tracking.registered_model_name, custom.registered_model_name):
        aliases = registry.aliases(name)
        listed = ", ".join(f"{alias} -> v{version}" for alias, version in sorted(aliases.items()))
        lines.append(f"{name}: {listed or 'no aliases'}")
    uri = registry.alias_uri(custom.registered_model_name, custom.alias)
    lines.append(f"serve it: {descriptions.serve_command(uri, env_manager)}")
    return "\n".join(lines)


def log_chain(steps: list[StepRun], summary: str) -> None:
    """Which run did each step, and whether it was reused, on `main`'s run."""
    for step in steps:
        prefix = f"{Tag.STEP_PREFIX}{step.entry_point}"
        mlflow.set_tags(
            {f"{prefix}.run_id": step.run_id, f"{prefix}.reused": str(step.reused).lower()}
        )
    record = [
        {"step": s.entry_point, "run_id": s.run_id, "reused": s.reused, "seconds": s.seconds}
        for s in steps
    ]
    mlflow.log_text(json.dumps(record, indent=2), Artifact.CHAIN_STEPS)
    mlflow.log_text(summary, Artifact.CHAIN_SUMMARY)
