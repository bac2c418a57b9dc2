"""Code that ships inside the project's models: the custom churn model (model.py) and the
registered pipeline's pyfunc face (pipeline_model.py), both reading their input rows with
inputs.py."""

from tabular_custom_model.inputs import InputSpec
from tabular_custom_model.model import PIPELINE_ARTIFACT, ChurnModel, Output, Param, Setting
from tabular_custom_model.pipeline_model import PipelineModel

__all__ = [
    "PIPELINE_ARTIFACT",
    "ChurnModel",
    "InputSpec",
    "Output",
    "Param",
    "PipelineModel",
    "Setting",
]
