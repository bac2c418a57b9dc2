"""Which run `register` reviews: the one named (`-P run_id`), or the experiment's best run
trained on this data and split; and whether the held-out rows are really held out from it."""

import logging
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import ModelType, Status, Tag, Verdict
from tabular_mlops.core.sections import PromotionConfig
from tabular_mlops.mlflow import registry, runs

logger = logging.getLogger(__name__)

# Versions the automatic choice of a candidate skips.
WITHDRAWN = (Verdict.ROLLED_BACK, Verdict.FAILED_TO_LOAD)


@dataclass(frozen=True)
class Candidate:
    run: Run
    model_uri: str
    selected_by: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def from_run(run_id: str, model_name: str) -> Candidate:
    run = runs.finished_run(run_id, PromotionError)
    model_uri = run.data.tags.get(Tag.MODEL_URI) or _logged_model_uri(run, model_name)
    return Candidate(run, model_uri, selected_by="run_id parameter")


def _logged_model_uri(run: Run, model_name: str) -> str:
    """The model named `model_name` a run logged (for runs not made by this project)."""
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{model_name}'",
        output_format="list",
    )
    if not models:
        raise PromotionError(f"run {run.info.run_id} logged no model named {model_name!r}")
    return f"models:/{models[0].model_id}"


def training_fingerprint(config: ProjectConfig, digest: str) -> dict[str, str]:
    """Tag and params (as MLflow stores them: strings) of runs trained like this config."""
    return {
        f"tags.{Tag.DATASET_DIGEST}": digest,
        "params.split.seed": str(config.split.seed),
        "params.split.test_size": str(config.split.test_size),
    }


def best_candidate(
    promotion: PromotionConfig, name: str, trained_on: dict[str, str], same_split: bool
) -> Candidate:
    """The finished run with a logged pipeline, trained on this data (and split, when the
    held-out rows are the test split), that scored best on `promotion.metric`. Runs whose
    version was rolled back or failed to load are skipped: only `-P run_id` brings them
    back."""
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
    best = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=" and ".join(conditions),
        order_by=[f"metrics.{promotion.metric} {order}"],
        max_results=1,
        output_format="list",
    )
    if not best:
        raise PromotionError(
            f"no finished run in experiment {experiment_id} has a model trained on this data "
            f"({trained_on[f'tags.{Tag.DATASET_DIGEST}']}) and split: run train_basic or "
            "track first, or pass -P run_id=..."
        )
    run = best[0]
    logger.info(
        "best run by %s: %s (%.4f)",
        promotion.metric,
        run.info.run_id,
        run.data.metrics[promotion.metric],
    )
    return Candidate(run, run.data.tags[Tag.MODEL_URI], selected_by=f"best {promotion.metric}")


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
