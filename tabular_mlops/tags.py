"""Names of the tags this project sets: a leaf module, so that any module can use them."""

# MLflow refuses longer tag values.
MAX_TAG_LENGTH = 5000


class Tag:
    """Tags this project sets on its runs (MLflow's own `mlflow.*` tags come on top)."""

    ENTRY_POINT = "entry_point"
    GIT_COMMIT = "git_commit"
    GIT_DIRTY = "git_dirty"
    DATASET_DIGEST = "dataset_digest"
    MODEL_TYPE = "model_type"
    MODEL_URI = "model_uri"
    ERROR = "error"
    # `<host> <pid> <start>` of the process that opened the run (see stale_runs)
    PROCESS = "process"
    # batch_score: the model version that answered, where the answers went
    SCORED_WITH = "scored_with"  # models:/<name>/<version>
    OUTPUT_PATH = "output_path"
    # register
    VERDICT = "verdict"
    VERDICT_REASON = "verdict_reason"
    ROLE = "role"  # of an evaluation child run: challenger or champion
    EVALUATED_MODEL_URI = "evaluated_model_uri"
    # custom_model
    SOURCE_MODEL_URI = "source_model_uri"  # the pipeline wrapped
    WHEEL = "wheel"
    CHECKS = "checks"  # where the model's answers were found identical
    # register, custom_model: the version an alias pointed at when the run finished
    CHAMPION_URI = "champion_uri"  # models:/<name>/<version>
    CHAMPION_ALIAS = "champion_alias"
    # track
    BASELINE_RUN_ID = "baseline_run_id"  # the untuned run it is compared with
    # main: what a step's run was keyed and fed by (see tabular_mlops.chain)
    CACHE_KEY = "cache_key"
    UPSTREAM_PREFIX = "upstream."  # + step name -> the run id the step consumed
