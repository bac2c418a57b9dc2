"""Each MLproject entry point's parameters, declared once: name, kind, the config setting it
overrides (or the job argument it is) and what it means.

From this: the steps' parsers (tabular_mlops.cli.commands), `main`'s routing of its
parameters to the steps it runs, the cache key of a step run alone (jobs.step_cache); and
MLproject's parameter lists and the documentation's tables are checked against it
(tests/test_entry_points.py).

MLproject declares (with a default) only the parameters whose default means something;
MLflow logs every declared parameter on the run, an unset one as ''. The others are listed
under `# optional:`: MLflow passes them as `--name value` when given.
"""

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """How a parameter's text is read; MLproject's own types are `string` and `float`."""

    TEXT = "string"
    NUMBER = "float"
    WHOLE = "whole number"  # MLproject's `float`; 5.0 reads as 5
    BOOLEAN = "boolean"  # MLproject's `string`: true/false, yes/no, 1/0

    @property
    def mlproject_type(self) -> str:
        return "float" if self in (Kind.NUMBER, Kind.WHOLE) else "string"


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: Kind
    help: str
    setting: str | None = None  # the config key it overrides; None: an argument of the job
    default: str | None = None  # declared in MLproject with this default
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return f"--{self.name.replace('_', '-')}"


@dataclass(frozen=True)
class EntryPoint:
    name: str
    module: str  # `python -m <module>`, MLproject's command
    summary: str
    parameters: tuple[Parameter, ...]

    def parameter(self, name: str) -> Parameter:
        return next(parameter for parameter in self.parameters if parameter.name == name)

    def overrides(self) -> dict[str, str]:
        """Parameter -> the config setting it overrides."""
        return {p.name: p.setting for p in self.parameters if p.setting is not None}


def _p(name: str, kind: Kind, setting: str | None, help: str, **more: object) -> Parameter:
    return Parameter(name, kind, help, setting, **more)  # type: ignore[arg-type]


TEXT, NUMBER, WHOLE, BOOLEAN = Kind.TEXT, Kind.NUMBER, Kind.WHOLE, Kind.BOOLEAN
CONFIG = _p("config", TEXT, None, "the YAML config", default="config/churn.yaml")
DATA_PATH = _p("data_path", TEXT, "data.path", "the table to train on")
AUTOLOG = _p("autolog", BOOLEAN, "tracking.autolog", "true: MLflow's autologging of the fit too")
ALLOW_PICKLE = _p(
    "allow_pickle", BOOLEAN, "trust.allow_pickle", "true: load a pickled model (trusted author)"
)

TRAIN_BASIC = EntryPoint(
    "train_basic",
    "steps.train_basic",
    "Train, evaluate, log and register one LightGBM pipeline.",
    (
        CONFIG,
        DATA_PATH,
        _p("target", TEXT, "data.target", "the column to predict"),
        _p("positive_label", TEXT, "data.positive_label", "the target's positive class"),
        _p("test_size", NUMBER, "split.test_size", "share of rows held out for testing"),
        _p("seed", WHOLE, "split.seed", "seed of the split (and the model)"),
        _p("n_estimators", WHOLE, "model.n_estimators", "trees"),
        _p("learning_rate", NUMBER, "model.learning_rate", "LightGBM's learning rate"),
        _p("num_leaves", WHOLE, "model.num_leaves", "leaves per tree"),
        _p("registered_model_name", TEXT, "tracking.registered_model_name", "registered model"),
        _p("alias", TEXT, "tracking.alias", "alias moved to the new version"),
        AUTOLOG,
    ),
)
TRACK = EntryPoint(
    "track",
    "steps.track",
    "Tune the pipeline with nested trial runs, refit the best, report.",
    (
        CONFIG,
        DATA_PATH,
        _p("baseline_run_id", TEXT, None, "an untuned run to compare with"),
        _p("n_trials", WHOLE, "tuning.n_trials", "trials to run"),
        _p("timeout", NUMBER, "tuning.timeout_seconds", "stop starting trials after (s)"),
        _p("n_jobs", WHOLE, "tuning.n_jobs", "trials at once"),
        _p("cv_folds", WHOLE, "tuning.cv_folds", "cross-validation folds"),
        _p("storage", TEXT, "tuning.storage", "an Optuna RDB URL shared by several workers"),
        _p("study_name", TEXT, "tuning.study_name", "the Optuna study"),
        AUTOLOG,
    ),
)
REGISTER = EntryPoint(
    "register",
    "steps.register",
    "Review a candidate for champion, roll back, list versions, find or end stale runs.",
    (
        CONFIG,
        _p(
            "action",
            TEXT,
            None,
            "promote, rollback, list, stale or reap",
            default="promote",
            choices=("promote", "rollback", "list", "stale", "reap"),
        ),
        _p("dry_run", BOOLEAN, None, "true: decide, change nothing", default="false"),
        _p("run_id", TEXT, None, "the candidate; unset: the experiment's best run"),
        DATA_PATH,
        _p("registered_model_name", TEXT, "tracking.registered_model_name", "registered model"),
        _p("metric", TEXT, "promotion.metric", "the metric the gate judges by"),
        _p("threshold", NUMBER, "promotion.threshold", "the challenger's bar"),
        _p("min_improvement", NUMBER, "promotion.min_improvement", "over the champion"),
        _p("holdout_path", TEXT, "promotion.holdout_path", "rows no candidate trained on"),
        ALLOW_PICKLE,
        _p(
            "stale_after_hours",
            NUMBER,
            "tracking.stale_after_hours",
            "stale/reap: runs of other hosts",
        ),
    ),
)
CUSTOM_MODEL = EntryPoint(
    "custom_model",
    "steps.custom_model",
    "Wrap the registered pipeline in the custom pyfunc model, check it serves the same "
    "answers everywhere, register it and point its alias at it.",
    (
        CONFIG,
        _p("model_uri", TEXT, None, "the pipeline; unset: the first of source_aliases"),
        DATA_PATH,
        _p(
            "registered_model_name",
            TEXT,
            "custom_model.registered_model_name",
            "registered model",
        ),
        _p("alias", TEXT, "custom_model.alias", "alias moved to the checked version"),
        _p("objective", TEXT, "custom_model.decision.objective", "f1 or cost"),
        _p(
            "check_env_manager",
            TEXT,
            "custom_model.check_env_manager",
            "uv, virtualenv, conda or none",
        ),
        _p("max_rows", WHOLE, "custom_model.max_rows", "rows per request the model takes"),
        ALLOW_PICKLE,
    ),
)
BATCH_SCORE = EntryPoint(
    "batch_score",
    "steps.batch_score",
    "Score a CSV/Parquet table with the custom model into a Parquet folder, with pandas on "
    "this machine or with Spark.",
    (
        CONFIG,
        _p("input", TEXT, "batch.input", "a CSV or Parquet file, or a folder of Parquet parts"),
        _p("output", TEXT, "batch.output", "a Parquet folder, written when complete"),
        _p("model_uri", TEXT, "batch.model_uri", "unset: the custom model's alias"),
        _p("engine", TEXT, "batch.engine", "pandas or spark"),
        _p("explain", BOOLEAN, "batch.explain", "true: each row's top reasons"),
        _p("threshold", NUMBER, "batch.threshold", "unset: the model's tuned threshold"),
        _p("overwrite", BOOLEAN, "batch.overwrite", "true: replace an output it wrote"),
    ),
)
MONITOR = EntryPoint(
    "monitor",
    "steps.monitor",
    "Judge a batch of inputs (and its outcomes, once known) against the model's training "
    "profile: drift, realized performance and a verdict, ok, warn or retrain.",
    (
        CONFIG,
        _p(
            "input", TEXT, "monitoring.input", "a CSV or Parquet file, or a folder of Parquet parts"
        ),
        _p("labels", TEXT, "monitoring.labels", "id columns and the target of the same rows"),
        _p("model_uri", TEXT, "monitoring.model_uri", "unset: the custom model's alias"),
        _p("engine", TEXT, "monitoring.engine", "pandas or spark"),
    ),
)
STEPS = (TRAIN_BASIC, TRACK, REGISTER, CUSTOM_MODEL)

# The parameters of `main` each step receives (besides `config`, and what `main` passes from
# step to step: track's baseline_run_id, register's run_id, custom_model's model_uri).
MAIN_ROUTES: dict[str, tuple[str, ...]] = {
    TRAIN_BASIC.name: ("data_path", "n_estimators", "learning_rate", "num_leaves"),
    TRACK.name: ("data_path", "n_trials", "timeout"),
    REGISTER.name: ("data_path", "metric", "threshold", "min_improvement"),
    CUSTOM_MODEL.name: ("data_path", "objective", "check_env_manager"),
}


def _routed() -> tuple[Parameter, ...]:
    routed: dict[str, Parameter] = {}
    for step in STEPS:
        for name in MAIN_ROUTES[step.name]:
            routed.setdefault(name, step.parameter(name))
    return tuple(routed.values())


MAIN = EntryPoint(
    "main",
    "steps.main",
    "The whole lifecycle, train_basic -> track -> register -> custom_model, each a child run; "
    "steps whose inputs did not change are reused.",
    (
        CONFIG,
        _p("force", BOOLEAN, None, "true: rerun every step", default="false"),
        *_routed(),
    ),
)

ENTRY_POINTS: dict[str, EntryPoint] = {
    entry.name: entry for entry in (MAIN, *STEPS, BATCH_SCORE, MONITOR)
}


def optional_lines(entry: EntryPoint) -> list[str]:
    """MLproject's `# optional:` block of `entry`: the parameters it does not declare, each
    with its type and the setting it overrides (or what it is)."""
    optional = [p for p in entry.parameters if p.default is None]
    width = max((len(f"{p.name} ({p.kind.mlproject_type})") for p in optional), default=0)
    lines = []
    for p in optional:
        head = f"{p.name} ({p.kind.mlproject_type})"
        what = f"{p.setting}: {p.help}" if p.setting else p.help
        lines.append(f"    #   {head:<{width}}  {what}")
    return ["    # optional:", *lines] if lines else []
