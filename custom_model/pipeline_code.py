"""The registered pipeline's pyfunc face, logged "from code" (see pipeline_model.py)."""

import mlflow
from tabular_custom_model import PipelineModel

mlflow.models.set_model(PipelineModel())
