"""Code that ships inside the custom churn model (see model.py)."""

from tabular_custom_model.model import PIPELINE_ARTIFACT, ChurnModel, Output, Param, Setting

__all__ = ["PIPELINE_ARTIFACT", "ChurnModel", "Output", "Param", "Setting"]
