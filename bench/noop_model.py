"""A pyfunc that ignores its input: served with the custom model's signature, it measures
the scoring server's own floor (HTTP, JSON to DataFrame, schema enforcement, JSON back)."""

from typing import Any

import mlflow
import pandas as pd


class NoOpModel(mlflow.pyfunc.PythonModel):
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[float]:
        return [0.0] * len(model_input)


mlflow.models.set_model(NoOpModel())
