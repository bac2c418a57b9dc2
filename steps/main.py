"""Entry point `main`: the whole lifecycle, train_basic -> track -> register -> custom_model,
each a child run: run in this process under `--env-manager local`, launched with
`mlflow.run` in its own environment otherwise. A step whose inputs did not change since an
earlier run is reused instead (see tabular_mlops.chain); `--force true` reruns them all."""

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import mlflow

from steps import custom_model, register, track, train_basic
from tabular_mlops import chain, data, descriptions, interrupts, registry, tracking
from tabular_mlops.chain import StepCall, StepRun
from tabular_mlops.cli import boolean, config_parser, configure_logging, run_with_config, unset_or
from tabular_mlops.config import ProjectConfig, PromotionConfig
from tabular_mlops.errors import StepFailedError
from tabular_mlops.tags import Tag

ENTRY_POINT = "main"
PROJECT_DIR = Path(__file__).resolve().parent.parent
STEPS: dict[str, ModuleType] = {
    module.ENTRY_POINT: module for module in (train_basic, track, register, custom_model)
}
STEP_MAINS = {module.__name__: module.main for module in STEPS.values()}
# The parameters of `main` each step receives (besides `config`, and what `main` passes
# from step to step: track's baseline_run_id, register's run_id, custom_model's model_uri).
ROUTES: dict[str, tuple[str, ...]] = {
    "train_basic": ("data_path", "n_estimators", "learning_rate", "num_leaves"),
    "track": ("data_path", "n_trials", "timeout"),
    "register": ("data_path", "metric", "threshold", "min_improvement"),
    "custom_model": ("data_path", "objective", "check_env_manager"),
}
# Parameter -> config key it overrides, as the steps that take it define it.
OVERRIDES = {name: STEPS[step].OVERRIDES[name] for step, names in ROUTES.items() for name in names}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MainResult:
    run_id: str
    steps: list[StepRun]
    served_uri: str  # models:/<custom model>@<alias>


def build_parser() -> argparse.ArgumentParser:
    parser = config_parser(ENTRY_POINT, __doc__)
    parser.add_argument("--force", type=boolean, default=False)
    for name in OVERRIDES:  # as text here; each step's own parser checks its values
        parser.add_argument(_flag(name), type=unset_or(str))
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """`main`'s parameters; each step's share is parsed (so checked) by the step's own
    parser now, before any work, and stored typed on the namespace as `<step>`."""
    args = build_parser().parse_args(argv)
    for step, names in ROUTES.items():
        argv_of_step = ["--config", str(args.config)]
        for name in names:
            if getattr(args, name) is not None:
                argv_of_step += [_flag(name), getattr(args, name)]
        parsed = vars(STEPS[step].parse_args(argv_of_step))
        typed = {name: parsed[name] for name in names}
        vars(args).update(typed)  # typed, for the config too
        setattr(args, step, {"config": args.config} | typed)
    return args


def run_chain(config: ProjectConfig, args: argparse.Namespace) -> MainResult:
    promotion, custom = config.require_promotion(), config.require_custom_model()
    config.require_tuning()
    with tracking.project_run(config, ENTRY_POINT, None, __doc__) as run:
        tracking.log_config(config)
        table = data.load_table(config.data)  # bad data fails here, before any step
        context = chain.ChainContext(
            project_dir=PROJECT_DIR,
            experiment_id=run.info.experiment_id,
            env_manager=chain.env_manager_of(mlflow.get_run(run.info.run_id)),
            git_commit=chain.clean_commit(PROJECT_DIR),
            config_sha256=chain.file_sha256(Path(args.config)),
            dataset_digest=table.digest,
            force=args.force,
        )
        launcher = chain.launcher_for(context.env_manager, STEP_MAINS)
        steps: list[StepRun] = []

        def run_step(call: StepCall) -> StepRun:
            position = f"[{len(steps) + 1}/{len(STEPS)}] {call.entry_point}"
            done = chain.run_step(call, context, launcher, label=position)
            how = "reused run" if done.reused else f"ran in {done.seconds:.1f} s: run"
            logger.info("%s: %s %s", position, how, done.run_id)
            steps.append(done)
            return done

        basic = run_step(StepCall("train_basic", args.train_basic))
        tuned = run_step(
            StepCall(
                "track",
                args.track | {"baseline_run_id": basic.run_id},
                upstream={"train_basic": basic.run_id},
            )
        )
        candidate = better_of(basic, tuned, promotion)
        review = run_step(
            StepCall(
                "register",
                args.register | {"run_id": candidate.run_id},
                upstream={"train_basic": basic.run_id, "track": tuned.run_id},
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
                "custom_model",
                args.custom_model | {"model_uri": champion_uri},
                upstream={"register": review.run_id},
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
    best = tuned if sign * scores["track"] > sign * scores["train_basic"] else basic
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
        mlflow.set_tags(
            {
                f"step.{step.entry_point}.run_id": step.run_id,
                f"step.{step.entry_point}.reused": str(step.reused).lower(),
            }
        )
    record = [
        {"step": s.entry_point, "run_id": s.run_id, "reused": s.reused, "seconds": s.seconds}
        for s in steps
    ]
    mlflow.log_text(json.dumps(record, indent=2), "chain/steps.json")
    mlflow.log_text(summary, "chain/summary.txt")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    return run_with_config(args, OVERRIDES, lambda config: run_chain(config, args))


if __name__ == "__main__":
    interrupts.run_as_process(main)
