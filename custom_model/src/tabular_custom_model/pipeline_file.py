"""The fitted scikit-learn pipeline a model carries (its `pipeline` artifact: an MLflow
sklearn model directory, saved with skops), loaded with the types this package trusts.

MLflow's own loader (`mlflow.sklearn.load_model`) trusts the list of types written in that
directory's MLmodel file, by whoever logged the model, so it answers only while
MLFLOW_ALLOW_PICKLE_DESERIALIZATION is on. This loader reads only skops files and trusts
only SKOPS_TRUSTED_TYPES: the models of this project load with that switch off (a
serving image keeps it off).
"""

from pathlib import Path
from typing import Any

import yaml

# Types skops must be told to trust when loading the fitted pipeline (tests check the list
# is complete); listing them keeps the safe skops format instead of falling back to pickle.
# The project saves pipelines with it and checks every model against it (one declaration:
# tabular_mlops reads it from this file).
SKOPS_TRUSTED_TYPES = [
    "collections.OrderedDict",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "numpy.dtype",
]
SKOPS = "skops"


def load_pipeline(model_dir: str | Path) -> Any:
    """The pipeline saved in the MLflow sklearn model directory `model_dir`. One saved
    otherwise (pickle, cloudpickle: a model whose author the project was told to trust)
    goes to MLflow's loader, which refuses it unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION
    is on."""
    import skops.io

    directory = Path(model_dir)
    flavor = yaml.safe_load((directory / "MLmodel").read_text())["flavors"]["sklearn"]
    if flavor.get("serialization_format") != SKOPS:
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(directory))
    name = str(flavor.get("pickled_model", ""))
    if not name or Path(name).name != name:
        raise ValueError(f"{directory}: its MLmodel names no skops file in it ({name!r})")
    return skops.io.load(directory / name, trusted=SKOPS_TRUSTED_TYPES)
