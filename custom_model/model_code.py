"""The model MLflow logs "from code": it runs this file to build the model, so nothing is
pickled. `tabular_custom_model` comes from the model's own `code/` directory."""

import mlflow
from tabular_custom_model import ChurnModel

mlflow.models.set_model(ChurnModel())
