"""What a person reads in the MLflow UI: run names, run descriptions and the registered
models' descriptions (Markdown)."""

from collections.abc import Sequence

from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, ProjectConfig
from tabular_mlops.core.redaction import MASK, is_secret_name, redact

_MAX_RUN_NAME = 100
_LISTED_COLUMNS = 12


def run_name(entry_point: str, config: ProjectConfig) -> str:
    """`train_basic n_estimators=500 learning_rate=0.02`: the entry point and the settings
    that differ from its config file (and the file, when it is not the shipped one)."""
    parts = [entry_point]
    if config.source != DEFAULT_CONFIG_PATH:
        parts.append(config.source.name)
    parts += [
        f"{key.rsplit('.', 1)[-1]}={_shown(key, value)}" for key, value in config.overrides.items()
    ]
    name = " ".join(parts)
    return name if len(name) <= _MAX_RUN_NAME else name[: _MAX_RUN_NAME - 3] + "..."


def run_description(summary: str, config: ProjectConfig) -> str:
    """The step's own summary, then what it ran on."""
    data = config.data
    overrides = ", ".join(
        f"`{key}={_shown(key, value)}`" for key, value in config.overrides.items()
    )
    lines = [
        " ".join(summary.split()),
        "",
        f"- config: `{config.source}`" + (f", with {overrides}" if overrides else ""),
        f"- data: `{data.path}`, predicting `{data.target}` = {_positives(config)}",
    ]
    return "\n".join(lines)


def pipeline_model(
    config: ProjectConfig, numeric: Sequence[str], categorical: Sequence[str]
) -> str:
    """The registered pipeline: what it predicts, its inputs and outputs, how to call it."""
    name, alias = config.tracking.registered_model_name, config.tracking.alias
    return "\n".join(
        [
            f"Predicts whether `{config.data.target}` = {_positives(config)} for a row of "
            f"`{config.data.path.name}`: a scikit-learn pipeline (imputation, one-hot "
            "encoding) ending in LightGBM. Each version's description gives its run, test "
            "metrics, data digest and git commit.",
            "",
            f"- **inputs**: {_columns(numeric)} (numbers: whole or not, as numbers or "
            f"text, missing allowed) and {_columns(categorical)} (text; unseen categories "
            "are ignored); other columns are left out",
            "- **outputs**: `predict` gives 0/1 at probability 0.5; `predict_proba(X)[:, 1]` "
            "the probability of the positive class",
            f"- **call**: `mlflow.pyfunc.load_model('models:/{name}@{alias}').predict(df)`, "
            f"`mlflow.sklearn.load_model('models:/{name}@{alias}')` (the fitted pipeline), "
            f"or `{serve_command(f'models:/{name}@{alias}', 'local')}`",
            f"- **aliases**: `{alias}` (newest version trained), and the `register` step's "
            "champion/challenger",
        ]
    )


def service_model(config: ProjectConfig) -> str:
    """The registered custom model (the pipeline wrapped with its decision policy)."""
    custom = config.require_custom_model()
    uri = f"models:/{custom.registered_model_name}@{custom.alias}"
    bands = ", ".join(custom.risk_band_labels)
    return "\n".join(
        [
            f"Serves decisions on `{config.data.target}` = {_positives(config)}: the "
            f"registered `{config.tracking.registered_model_name}` pipeline wrapped in a "
            "pyfunc model with the decision threshold tuned on the training split.",
            "",
            "- **inputs**: the pipeline's columns (see the signature), at most "
            f"{custom.max_rows} rows per request",
            f"- **outputs** per row: `probability`, `decision` (at the threshold), "
            f"`risk_band` ({bands}); with `explain` the top `top_k` reasons",
            "- **request params**: `threshold`, `explain`, `top_k`",
            f"- **call**: `{serve_command(uri, 'local')}`, then "
            "POST `/invocations` with `dataframe_split`; `batch_score` for a whole table",
        ]
    )


SERVE_MODULE = "tabular_mlops.cli.serve"


def serve_command(model_uri: str, env_manager: str, port: int = 5001) -> str:
    """The command that serves `model_uri`, as a user can paste it: `mlflow models serve`
    behind the check every job applies (SERVE_MODULE); MLflow's own default env manager,
    virtualenv, needs pyenv: always named."""
    return f"python -m {SERVE_MODULE} {model_uri} --env-manager {env_manager} -p {port}"


def runs_page(ui_url: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's UI. Without `workflowType`, the UI of MLflow 3.17
    opens every experiment on its GenAI overview (traces, tokens) until the user switches
    it to "Model training" in that browser."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def next_steps(
    tracking_uri: str, experiment_name: str, experiment_id: str, model_uri: str, env_manager: str
) -> list[str]:
    """What to run after a first `train_basic`: look at the run, run the whole chain
    (which reuses it), serve the model. `tracking_uri` is shown as given: redact it first."""
    if tracking_uri.startswith("sqlite:"):
        ui = f"mlflow ui --backend-store-uri {tracking_uri}, then open "
        ui += runs_page("http://127.0.0.1:5000", experiment_id)
    else:
        ui = f"open {runs_page(tracking_uri, experiment_id)}"
    chain = f"mlflow run . --env-manager {env_manager} --experiment-name {experiment_name}"
    return [
        f"see the run: {ui}",
        f"tune, review and wrap it (this run is reused): {chain}",
        f"serve it: {serve_command(model_uri, env_manager)}",
    ]


def _positives(config: ProjectConfig) -> str:
    data = config.data
    given = data.positive_labels or ([] if data.positive_label is None else [data.positive_label])
    shown = [f"`{label}`" for label in given]
    return " or ".join(shown) if shown else "`1`"


def _columns(columns: Sequence[str]) -> str:
    if not columns:
        return "no columns"
    listed = ", ".join(f"`{column}`" for column in columns[:_LISTED_COLUMNS])
    more = f" and {len(columns) - _LISTED_COLUMNS} more" if len(columns) > _LISTED_COLUMNS else ""
    return f"{len(columns)} columns ({listed}{more})"


def _shown(key: str, value: object) -> str:
    """A setting's value as run names and descriptions show it: secrets masked."""
    if is_secret_name(key):
        return MASK
    return str(value).lower() if isinstance(value, bool) else redact(str(value))
