"""Which run `register` reviews: the one named (`-P run_id`), or the experiment's best run
trained on this data and split; and whether the held-out rows are really held out from it.

Anyone who may write to the experiment writes runs' tags and metrics, so neither decides
what is loaded: a candidate's model is a LoggedModel whose source is that very run (the
tracking server's record, not the run's `model_uri` tag), downloaded and checked
(mlflow.model_trust) before anything of it loads. The automatic choice skips a run whose
model is refused, with a warning, and takes the next best: a crafted run with a forged
metric cannot stop the reviews."""

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import ModelType, Status, Tag, Verdict
from tabular_mlops.mlflow import registry, runs
from tabular_mlops.mlflow.model_trust import CheckedModel, LoadPolicy

logger = logging.getLogger(__name__)

# Versions the automatic choice of a candidate skips.
WITHDRAWN = (Verdict.ROLLED_BACK, Verdict.FAILED_TO_LOAD)


# Runs the automatic choice looks at, best first, for one whose model is not refused.
RANKED_RUNS = 20


@dataclass(frozen=True)
class Candidate:
    run: Run
    model: CheckedModel  # its logged model, downloaded and checked: what is loaded
    selected_by: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def model_uri(self) -> str:
        return self.model.uri


def from_run(run_id: str, config: ProjectConfig, scratch: Path) -> Candidate:
    """The run `-P run_id` names, its model checked; any refusal is a PromotionError."""
    run = runs.finished_run(run_id, PromotionError)
    model = LoadPolicy.of(config).checked(own_model_uri(run, config.tracking.model_name), scratch)
    return Candidate(run, model, selected_by="run_id parameter")


def own_model_uri(run: Run, model_name: str) -> str:
    """`models:/<id>` of the model `run` logged: the LoggedModel its `model_uri` tag names
    only if the tracking server records this run as its source; without the tag (a run
    not made by this project), its LoggedModel named `model_name`."""
    run_id = run.info.run_id
    tagged = run.data.tags.get(Tag.MODEL_URI)
    if tagged is None:
        models = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{model_name}'",
            output_format="list",
        )
        if not models:
            raise PromotionError(f"run {run_id} logged no model named {model_name!r}")
        return f"models:/{models[0].model_id}"
    try:
        source = mlflow.get_logged_model(tagged.removeprefix("models:/")).source_run_id
    except MlflowException:
        raise PromotionError(
            f"run {run_id}'s {Tag.MODEL_URI} tag names {tagged!r}, which is not a logged model"
        ) from None
    if source != run_id:
        raise PromotionError(
            f"run {run_id}'s {Tag.MODEL_URI} tag names {tagged}, a model logged by "
            f"{f'run {source}' if source else 'no run'}: a candidate's model must be its own"
        )
    return tagged


def training_fingerprint(config: ProjectConfig, digest: str) -> dict[str, str]:
    """Tag and params (as MLflow stores them: strings) of runs trained like this config."""
    return {
        f"tags.{Tag.DATASET_DIGEST}": digest,
        "params.split.seed": str(config.split.seed),
        "params.split.test_size": str(config.split.test_size),
    }


def best_candidate(
    config: ProjectConfig, trained_on: dict[str, str], same_split: bool, scratch: Path
) -> Candidate:
    """The finished run with a logged pipeline, trained on this data (and split, when the
    held-out rows are the test split), that scored best on `promotion.metric`, and whose
    model is its own and passes the checks (the runs before it are skipped, each with a
    warning). Runs whose version was rolled back or failed to load are skipped: only
    `-P run_id` brings them back."""
    promotion = config.require_promotion()
    name = config.tracking.registered_model_name
    required = trained_on if same_split else {k: v for k, v in trained_on.items() if "tags." in k}
    conditions = [
        f"attributes.status = '{Status.FINISHED}'",
        f"tags.{Tag.MODEL_URI} LIKE 'models:/%'",
        f"tags.{Tag.MODEL_TYPE} = '{ModelType.PIPELINE}'",  # not a wrapper's run
        f"metrics.{promotion.metric} >= 0",  # has the metric (every gate metric is >= 0)
        *(f"{_backticked(key)} = '{value}'" for key, value in required.items()),
    ]
    if withdrawn := registry.runs_with_review(name, WITHDRAWN):
        logger.info(
            "skipping %d run(s) whose version was rolled back or failed to load", len(withdrawn)
        )
        conditions.append(f"attributes.run_id NOT IN ({', '.join(map(repr, sorted(withdrawn)))})")
    order = "DESC" if promotion.greater_is_better else "ASC"
    experiment_id = mlflow.get_run(runs.active_run_id()).info.experiment_id
    ranked = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=" and ".join(conditions),
        order_by=[f"metrics.{promotion.metric} {order}"],
        max_results=RANKED_RUNS,
        output_format="list",
    )
    policy, refused = LoadPolicy.of(config), 0
    for run in ranked:
        try:
            model = policy.checked(
                own_model_uri(run, config.tracking.model_name), scratch / run.info.run_id
            )
        except PromotionError as error:
            logger.warning("skipping run %s: %s", run.info.run_id, error)
            refused += 1
            continue
        logger.info(
            "best run by %s: %s (%.4f)",
            promotion.metric,
            run.info.run_id,
            run.data.metrics[promotion.metric],
        )
        return Candidate(run, model, selected_by=f"best {promotion.metric}")
    skipped = f" ({refused} whose model was refused: see the warnings above)" if refused else ""
    raise PromotionError(
        f"no finished run in experiment {experiment_id} has a model trained on this data "
        f"({trained_on[f'tags.{Tag.DATASET_DIGEST}']}) and split{skipped}: run train_basic "
        "or track first, or pass -P run_id=..."
    )


def _backticked(key: str) -> str:
    """`params.split.seed` as MLflow's filter syntax wants it: params.`split.seed`."""
    kind, _, name = key.partition(".")
    return f"{kind}.`{name}`"


def differences(run: Run, trained_on: dict[str, str]) -> str:
    """How the run's data or split differs from `trained_on`; empty when it does not."""
    found = {f"tags.{key}": value for key, value in run.data.tags.items()}
    found |= {f"params.{key}": value for key, value in run.data.params.items()}
    return ", ".join(
        f"{key.partition('.')[2]} {found.get(key, 'not recorded')}, not {expected}"
        for key, expected in trained_on.items()
        if found.get(key) != expected
    )


def warn_if_not_held_out(champion: int, run_id: str, trained_on: dict[str, str]) -> None:
    """A champion trained on other data or split may have seen some held-out rows: its
    score is then optimistic, which makes the gate stricter, not looser."""
    if differ := differences(mlflow.MlflowClient().get_run(run_id), trained_on):
        logger.warning(
            "champion version %d was trained differently (%s): its held-out score may be "
            "optimistic",
            champion,
            differ,
        )
