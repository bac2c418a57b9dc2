"""The registered pipeline as an MLflow model, with two faces:

- `sklearn`: the fitted scikit-learn pipeline, saved with skops. `mlflow.sklearn.load_model`
  gives the stock `Pipeline`, with no code of this project.
- `python_function`: `tabular_custom_model.PipelineModel`, logged from code, which reads
  input rows as callers hold them (whole numbers as ints or floats, gaps, numeric text)
  and answers the pipeline's `predict`. MLflow's signature types cannot accept both int64
  and float64 in one column (see custom_model/src/tabular_custom_model/inputs.py), so the
  signature states the output only and the input schema rides in `model_config`.

The model directory:

    MLmodel              python_function (PipelineModel) and sklearn flavors
    artifacts/pipeline/  the stock sklearn MLflow model, as `mlflow.sklearn.save_model`
                         writes it (its own MLmodel and typed signature): the `sklearn`
                         flavor's file, the artifact PipelineModel loads, and the model
                         MLflow's evaluator is given (it reads probabilities only from a
                         stock flavor)
    code/                the wheel and the source of tabular_custom_model

A module with `save_model`: the flavor `mlflow.models.Model.log` is given.
"""

import json
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.model import MLMODEL_FILE_NAME, MODEL_CONFIG, ModelInfo
from mlflow.pyfunc import FLAVOR_NAME as PYFUNC
from mlflow.types import Schema

from tabular_mlops.core.names import Tag
from tabular_mlops.core.sections import TrackingConfig
from tabular_mlops.mlflow import deserialization
from tabular_mlops.mlflow.datasets import sampled_schema
from tabular_mlops.mlflow.runs import INPUT_EXAMPLE_ROWS, quiet_integer_schema_hint
from tabular_mlops.mlflow.shipped_code import ShippedCode, skops_trusted_types
from tabular_mlops.runtime.faults import FaultPoint, crash_if_injected

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# What a clean environment needs to load and run the logged pipeline.
MODEL_REQUIREMENTS = ["mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "scipy", "skops"]
SKLEARN = "sklearn"
PIPELINE_ARTIFACT = "pipeline"  # tabular_custom_model.PIPELINE_ARTIFACT
INPUT_SCHEMA = "input_schema"  # tabular_custom_model.Setting.INPUT_SCHEMA
PIPELINE_CODE = "pipeline_code.py"  # custom_model/pipeline_code.py: PipelineModel from code
STOCK_FACE = Path("artifacts") / PIPELINE_ARTIFACT


def save_model(
    path: str,
    mlflow_model: Model,
    pipeline_dir: Path,
    code: ShippedCode,
    pinned: list[str],
    **pyfunc_settings: Any,
) -> None:
    """Write the model directory (the layout above) at `path`; `pipeline_dir` holds the
    stock sklearn model. What `mlflow.models.Model.log` calls."""
    mlflow.pyfunc.save_model(
        path,
        mlflow_model=mlflow_model,
        python_model=code.model_file(PIPELINE_CODE),
        artifacts={PIPELINE_ARTIFACT: str(pipeline_dir)},
        code_paths=code.code_paths(),
        pip_requirements=code.requirements(pinned),
        **pyfunc_settings,
    )
    stock = Model.load(pipeline_dir / MLMODEL_FILE_NAME).flavors[SKLEARN]
    file = (STOCK_FACE / stock["pickled_model"]).as_posix()
    mlflow_model.add_flavor(SKLEARN, **(stock | {"pickled_model": file}))
    mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))


def log_pipeline(
    pipeline: "Pipeline",
    X_train: pd.DataFrame,
    raw_rows: pd.DataFrame,
    tracking: TrackingConfig,
    code: ShippedCode,
) -> ModelInfo:
    """Log the fitted pipeline to the active run; `raw_rows` are training rows of its
    inputs as read from the table, the input example callers see."""
    crash_if_injected(FaultPoint.BEFORE_MODEL_LOGGED)
    schema = sampled_schema(X_train)
    stock_example = X_train.head(INPUT_EXAMPLE_ROWS)
    with quiet_integer_schema_hint():
        outputs = infer_signature(stock_example, pipeline.predict(stock_example)).outputs
    with tempfile.TemporaryDirectory(prefix="pipeline-") as scratch:
        stock = Path(scratch) / PIPELINE_ARTIFACT
        mlflow.sklearn.save_model(
            pipeline,
            str(stock),
            signature=ModelSignature(inputs=schema, outputs=outputs),
            input_example=stock_example,
            pip_requirements=pip_requirements(),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=skops_trusted_types(code.package_dir),
        )
        # MLflow loads the model it logs, to check its input example: the one just saved.
        with code.importable(), deserialization.allowed():
            info = Model.log(
                None,
                flavor=sys.modules[__name__],
                name=tracking.model_name,
                pipeline_dir=stock,
                code=code,
                pinned=pip_requirements(),
                signature=ModelSignature(outputs=outputs),
                input_example=raw_rows[list(X_train.columns)].head(INPUT_EXAMPLE_ROWS),
                model_config={INPUT_SCHEMA: schema.to_dict()},
            )
    mlflow.set_tag(Tag.MODEL_URI, info.model_uri)
    return info


def stock_face(model_dir: Path) -> Path:
    """The stock sklearn model in a downloaded pipeline model: `artifacts/pipeline` of one
    logged by `log_pipeline`, the directory itself for a plain sklearn-flavor model."""
    face = model_dir / STOCK_FACE
    return face if (face / MLMODEL_FILE_NAME).is_file() else model_dir


def declared_inputs(model: Model | ModelInfo) -> Schema:
    """The input columns a model of this project takes: its `model_config`'s schema, or
    (a model logged before, or a plain sklearn one) its signature's."""
    settings = model.flavors.get(PYFUNC, {}).get(MODEL_CONFIG) or {}
    if INPUT_SCHEMA in settings:
        return Schema.from_json(json.dumps(settings[INPUT_SCHEMA]))
    if model.signature is None or model.signature.inputs is None:
        raise ValueError("the model declares no input schema")
    return model.signature.inputs


def pip_requirements() -> list[str]:
    """Exact versions of what a logged model needs, as installed now."""
    return [f"{package}=={version(package)}" for package in MODEL_REQUIREMENTS]
