from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
CHURN_CONFIG = PROJECT_DIR / "config" / "churn.yaml"
CHURN_CSV = PROJECT_DIR / "data" / "wa_churn.csv"


@cache
def _churn_frame() -> pd.DataFrame:
    return pd.read_csv(CHURN_CSV)


def churn_frame() -> pd.DataFrame:
    """The shipped table, a fresh copy each call."""
    return _churn_frame().copy()


def churn_settings() -> dict[str, Any]:
    """The shipped config as a dict, with an absolute data path."""
    settings = yaml.safe_load(CHURN_CONFIG.read_text())
    settings["data"]["path"] = str(CHURN_CSV)
    return settings


def write_config(path: Path, settings: dict[str, Any], **changes: dict[str, Any]) -> Path:
    """Write `settings` with some sections' keys replaced, e.g. data={"target": "x"}."""
    settings = {section: dict(values) for section, values in settings.items()}
    for section, values in changes.items():
        settings.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(settings))
    return path


def mixed_table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """A small table unlike the churn one: 0/1 target, bools, text, ints with gaps."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(rows)],
            "age": rng.integers(18, 90, rows),
            "income": rng.normal(50_000, 10_000, rows),
            "member": rng.random(rows) < 0.5,
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "region": rng.choice(["north", "south", None], rows),
            "label": rng.integers(0, 2, rows),
        }
    )
    frame.loc[::7, "income"] = np.nan
    return frame


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh sqlite store; the working directory is tmp_path, where artifacts land."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run():  # a failed assertion inside a run must not leak into the next test
        mlflow.end_run()
