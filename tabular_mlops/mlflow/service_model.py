"""The custom model (`churn-service`) as an MLflow model: the settings it is logged with, and
its logging around a registered pipeline.

The model is logged "from code" (`custom_model/model_code.py`): nothing is pickled. It
carries the pipeline's stock sklearn model (skops) as an artifact, its settings and input
schema as `model_config`, and in `code/` both the wheel of `custom_model/` (installed by
the `code/<wheel>` line of its requirements in a fresh environment) and the package source
(importable as is with `--env-manager local`); see tabular_mlops.mlflow.shipped_code.
"""

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema

from tabular_mlops.core.model_sections import CustomModelConfig
from tabular_mlops.mlflow import deserialization
from tabular_mlops.mlflow.pipeline_model import (
    INPUT_SCHEMA,
    PIPELINE_ARTIFACT,
    pip_requirements,
    stock_face,
)
from tabular_mlops.mlflow.runs import INPUT_EXAMPLE_ROWS
from tabular_mlops.mlflow.shipped_code import ShippedCode

MODEL_CODE = "model_code.py"


def model_config(threshold: float, custom: CustomModelConfig, inputs: Schema) -> dict[str, Any]:
    """The settings the wrapper is logged with (keys: tabular_custom_model.Setting)."""
    return {
        "model_name": custom.registered_model_name,
        "threshold": threshold,
        "risk_band_cuts": list(custom.risk_band_cuts),
        "risk_band_labels": list(custom.risk_band_labels),
        "top_k": custom.top_k,
        "max_rows": custom.max_rows,
        INPUT_SCHEMA: inputs.to_dict(),
    }


def log_wrapped_model(
    pipeline_dir: Path, settings: dict[str, Any], code: ShippedCode, name: str
) -> ModelInfo:
    """Log the wrapper around the pipeline model downloaded to `pipeline_dir` to the
    active run. Its signature states outputs and request parameters; its input schema is
    in `settings` (MLflow's signature types would refuse int64 or float64 whole numbers:
    see custom_model/src/tabular_custom_model/inputs.py)."""
    pipeline_model = Model.load(pipeline_dir)
    example = pipeline_model.load_input_example(str(pipeline_dir))
    if not isinstance(example, pd.DataFrame):
        raise ValueError(f"the pipeline model at {pipeline_dir} has no table as input example")
    # MLflow runs the model's code to log it: the package must be importable meanwhile, and
    # loading the pipeline it wraps allowed (this process has just checked it). The model
    # states its own output and params schemas.
    with code.importable(), deserialization.allowed():
        from tabular_custom_model import ChurnModel

        signature = ModelSignature(
            outputs=ChurnModel.output_schema(), params=ChurnModel.params_schema(settings)
        )
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=code.model_file(MODEL_CODE),
            # The stock sklearn model, not the pipeline's pyfunc face: the wrapper encodes
            # rows itself.
            artifacts={PIPELINE_ARTIFACT: str(stock_face(pipeline_dir))},
            model_config=settings,
            code_paths=code.code_paths(),
            pip_requirements=code.requirements(pip_requirements()),
            input_example=example.head(INPUT_EXAMPLE_ROWS),
            signature=signature,
        )
