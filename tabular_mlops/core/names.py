"""The project's vocabulary in MLflow, declared once: the tags it sets, the artifact paths it
logs, run statuses, review verdicts and model types. A leaf module: every layer may import
it, and it imports nothing."""

from enum import StrEnum

# MLflow refuses longer tag values.
MAX_TAG_LENGTH = 5000


class Tag:
    """Tags this project sets on runs, registered models and versions (MLflow's own
    `mlflow.*` tags come on top)."""

    ENTRY_POINT = "entry_point"
    GIT_COMMIT = "git_commit"
    GIT_DIRTY = "git_dirty"
    DATASET_DIGEST = "dataset_digest"
    MODEL_TYPE = "model_type"  # a ModelType value
    MODEL_URI = "model_uri"
    ERROR = "error"
    # `<host> <pid> <start>` of the process that opened the run (see runtime.stale_runs)
    PROCESS = "process"
    # batch_score: the model version that answered, where the answers went
    SCORED_WITH = "scored_with"  # models:/<name>/<version>
    OUTPUT_PATH = "output_path"
    # register
    VERDICT = "verdict"
    VERDICT_REASON = "verdict_reason"
    ROLE = "role"  # of an evaluation child run: challenger or champion
    EVALUATED_MODEL_URI = "evaluated_model_uri"
    # monitor: the version judged; the verdict (ok, warn, retrain) goes in VERDICT
    MONITORED_MODEL = "monitored_model"  # models:/<name>/<version>
    VERDICT_REASONS = "verdict_reasons"
    # custom_model
    SOURCE_MODEL_URI = "source_model_uri"  # the pipeline wrapped
    WHEEL = "wheel"
    CHECKS = "checks"  # where the model's answers were found identical
    # register, custom_model: the version an alias pointed at when the run finished
    CHAMPION_URI = "champion_uri"  # models:/<name>/<version>
    CHAMPION_ALIAS = "champion_alias"
    # track
    BASELINE_RUN_ID = "baseline_run_id"  # the untuned run it is compared with
    STUDY = "optuna_study"
    TRIAL = "optuna_trial"
    TRIAL_STATE = "optuna_trial_state"  # COMPLETE or PRUNED, as Optuna names them
    # main: what a step's run was keyed and fed by (see jobs.step_cache)
    CACHE_KEY = "cache_key"
    UPSTREAM_PREFIX = "upstream."  # + step name -> the run id the step consumed
    STEP_PREFIX = "step."  # + step name + .run_id / .reused, on main's run
    # On a registered model's version: the outcome of its last review (a Verdict).
    REVIEW = "validation_status"
    # On a registered model while its aliases move (see mlflow.registry.move_aliases).
    ALIAS_MOVES = "alias_moves_in_progress"
    # MLflow's UI reads these: an experiment's (or run's) description, and its kind.
    DESCRIPTION = "mlflow.note.content"
    EXPERIMENT_KIND = "mlflow.experimentKind"


class ModelType:
    """Values of Tag.MODEL_TYPE: what a run's logged model is."""

    PIPELINE = "sklearn-pipeline-lightgbm"
    WRAPPER = "pyfunc-wrapper"


class Status:
    """MLflow's run statuses, as its API spells them."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class Verdict(StrEnum):
    """How a review ended: `register`'s gate, and `custom_model`'s checks."""

    PASSED = "passed"
    REJECTED = "rejected"
    ALREADY_CHAMPION = "already_champion"
    FAILED_TO_LOAD = "failed_to_load"
    ROLLED_BACK = "rolled_back"
    FAILED_CHECK = "failed_check"  # custom_model: answered differently somewhere


class Artifact:
    """Paths of what the project logs to its runs."""

    CONFIG = "config/config.yaml"
    SAMPLE_PREDICTIONS = "predictions/sample_predictions.csv"
    IMPORTANCE_TABLE = "feature_importance/gain_share.csv"
    IMPORTANCE_PLOT = "feature_importance/gain_share.png"
    LEADERBOARD_CSV = "tuning/leaderboard.csv"
    LEADERBOARD_MD = "tuning/leaderboard.md"
    TUNING_PLOTS = "tuning"  # optimization_history.png, intermediate_values.png, ...
    DECISION = "promotion/decision.json"
    VERSIONS = "registry/versions.md"
    STALE_RUNS = "maintenance/stale_runs.md"
    CHECKS = "checks/predictions.json"
    SCORE_PLOT = "score_distribution.png"
    CHAIN_STEPS = "chain/steps.json"
    CHAIN_SUMMARY = "chain/summary.txt"
    PROFILE = "monitoring/profile.json"  # the reference `monitor` compares batches with
    MONITOR_REPORT = "monitoring/report.html"
    MONITOR_TABLE = "monitoring/drift.csv"
    MONITOR_PLOTS = "monitoring/plots"
