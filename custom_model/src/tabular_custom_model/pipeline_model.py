"""The registered pipeline's `python_function` face: its rows read as `inputs.InputSpec`
says, then the scikit-learn pipeline's own `predict` (the class, 0 or 1), as MLflow's
sklearn flavor answers.

The pipeline itself stays a stock scikit-learn model (skops-saved, the `pipeline`
artifact); the same model directory also carries it as its `sklearn` flavor, so that
`mlflow.sklearn.load_model` gives the fitted `Pipeline` with no code of this package.
"""

from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from tabular_custom_model.inputs import InputSpec
from tabular_custom_model.model import PIPELINE_ARTIFACT, Setting
from tabular_custom_model.pipeline_file import load_pipeline


class PipelineModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self._pipeline = load_pipeline(context.artifacts[PIPELINE_ARTIFACT])
        self._inputs = InputSpec.from_schema(context.model_config[Setting.INPUT_SCHEMA])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        return self._pipeline.predict(self._inputs.frame(model_input))
