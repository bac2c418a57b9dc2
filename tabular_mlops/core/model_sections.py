"""The config sections of the served model: `custom_model` (the wrapper, its decision
threshold and costs) and `model_code` (the code shipped inside both models). Split from
core.sections, which holds the rest."""

import itertools
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tabular_mlops.core.sections import Alias, _Section


class CostMatrix(_Section):
    """Cost of each outcome of a decision, in any one unit (money, say)."""

    false_positive: float = Field(1.0, ge=0)
    """Cost of acting on a row that turns out negative."""
    false_negative: float = Field(1.0, ge=0)
    """Cost of missing a positive row."""
    true_positive: float = Field(0.0, ge=0)
    """Cost of acting on a positive row."""
    true_negative: float = Field(0.0, ge=0)
    """Cost of leaving a negative row alone."""


class DecisionConfig(_Section):
    """How the custom model's decision threshold is tuned, on out-of-fold predictions of
    the training split (rows the test split's metrics never see)."""

    objective: Literal["f1", "cost"] = "f1"
    """Maximise F1, or minimise the expected cost."""
    costs: CostMatrix = CostMatrix()
    """Used when objective is cost."""
    cv_folds: int = Field(5, ge=2, le=20)
    """Folds of the cross-validation."""


class CustomModelConfig(_Section):
    """The pyfunc wrapper served in front of the registered pipeline."""

    registered_model_name: str = Field(min_length=1)
    """The registered model's name."""
    alias: Alias = "champion"
    """Set once the wrapped model passes its checks."""
    source_aliases: list[Alias] = Field(["champion", "latest-model"], min_length=1)
    """The pipeline wrapped by default: the first of these aliases that exists."""
    decision: DecisionConfig = DecisionConfig()
    """How the decision threshold is tuned."""
    risk_band_cuts: list[float] = Field([0.3, 0.6])
    """Probabilities below the first cut get the first label, and so on."""
    risk_band_labels: list[str] = Field(["low", "medium", "high"])
    """One label per band: one more than the cuts."""
    top_k: int = Field(3, ge=1)
    """Reasons returned per row when asked (`explain`)"""
    max_rows: int = Field(10_000, ge=1)
    """Per request; larger ones are refused (HTTP 400)"""
    check_env_manager: Literal["uv", "virtualenv", "conda", "none"] = "uv"
    """`mlflow models predict --env-manager` of the isolated-environment check; none skips it."""
    check_timeout_seconds: float = Field(900, gt=0)
    """A check process that has not answered by then is a failed check (and is stopped)."""

    @model_validator(mode="after")
    def _bands_fit(self) -> "CustomModelConfig":
        cuts = self.risk_band_cuts
        if any(not 0 < cut < 1 for cut in cuts) or any(a >= b for a, b in itertools.pairwise(cuts)):
            raise ValueError(f"risk_band_cuts must rise strictly within (0, 1), got {cuts}")
        if len(self.risk_band_labels) != len(cuts) + 1:
            raise ValueError(
                f"{len(cuts)} risk_band_cuts make {len(cuts) + 1} bands, but "
                f"{len(self.risk_band_labels)} risk_band_labels are given"
            )
        return self


class ModelCodeConfig(_Section):
    """The code that ships inside both registered models (`custom_model/`): built into a
    wheel, carried in each model's `code/` directory."""

    package_dir: Path = Path("custom_model")
    """The package built into the wheel."""
    wheel_dir: Path = Path("wheels")
    """Where the wheel is written."""
