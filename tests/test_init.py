"""`python -m tabular_mlops.cli.init`: a config for a table the project never saw."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tabular_mlops.cli import init
from tabular_mlops.core.config import load_config
from tabular_mlops.core.data import load_table
from tests.conftest import PROJECT_DIR

TEMPLATE = PROJECT_DIR / "config" / "churn.yaml"


def trap_table(rows: int = 600, seed: int = 1) -> pd.DataFrame:
    """A credit table with what trips a newcomer: an id, free text, a constant and an
    empty column, a region coded as numbers, gaps, accents and three target classes."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "Id": np.arange(1000, 1000 + rows),
            "Seniority": rng.integers(0, 30, rows),
            "Home": rng.integers(1, 6, rows),
            "Income": np.where(rng.random(rows) < 0.1, np.nan, rng.normal(150, 40, rows)),
            "Job": rng.choice(["fixed", "partime", "freelance", None], rows),
            "Región": rng.choice(["Málaga", "Cádiz", "León"], rows),
            "Country": "ES",
            "Notes": [f"called on day {i}" for i in range(rows)],
            "Empty": np.nan,
            "Status": rng.choice(["good", "bad", "unknown"], rows, p=[0.6, 0.3, 0.1]),
        }
    )


@pytest.fixture
def trap_csv(tmp_path: Path) -> Path:
    path = tmp_path / "Credit Risk.csv"
    trap_table().to_csv(path, sep=";", index=False, encoding="cp1252")
    return path


def run_init(*argv: str) -> int:
    return init.main(list(argv))


def test_config_for_a_trap_table(
    trap_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PROJECT_DIR)  # the template is the shipped config, as users run it
    output = tmp_path / "credit.yaml"
    code = run_init(
        str(trap_csv), "--target", "Status", "--positive-label", "bad",
        "--positive-label", "unknown", "--output", str(output),
    )  # fmt: skip
    assert code == 0
    text = output.read_text(encoding="utf-8")
    config = load_config(output)
    data = config.data
    assert (data.sep, data.encoding) == (";", "cp1252")
    assert data.positive_labels == ["bad", "unknown"] and data.positive_label is None
    assert data.id_columns == ["Id", "Notes"]
    assert data.numeric_features == ["Seniority", "Home", "Income"]
    assert data.categorical_features == ["Job", "Región"]
    assert "Country: the same value ('ES') in every row" in text
    assert "Empty: no values" in text
    assert "Home       # 5 whole values (1, 2, 3, 4, 5): codes? then move it" in text
    share = trap_table()["Income"].isna().mean()
    assert f"- Income     # 35.673 to 277.443; {share:.0%} missing\n" in text

    # Everything named after the table; nothing left of the churn example.
    assert "churn" not in text.lower()
    assert config.tracking.experiment_name == "credit-risk"
    assert config.tracking.registered_model_name == "credit-risk-classifier"
    assert config.require_custom_model().registered_model_name == "credit-risk-service"
    assert config.require_tuning().study_name == "credit-risk-lightgbm"
    assert config.tracking.experiment_tags["project"] == "credit-risk"
    assert "predicts Status = bad, unknown" in config.tracking.experiment_description
    # The rest is the shipped config's, comments included.
    assert config.promotion == load_config(TEMPLATE).promotion
    assert "# Used by `register`" in text

    table = load_table(data)  # as train_basic reads it
    assert table.target.mean() == pytest.approx(
        trap_table()["Status"].isin(["bad", "unknown"]).mean()
    )
    assert set(table.features["Región"]) == {"Málaga", "Cádiz", "León"}


def test_a_multi_class_target_needs_its_positive_labels(
    trap_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    output = tmp_path / "credit.yaml"
    assert run_init(str(trap_csv), "--target", "Status", "--output", str(output)) == 2
    assert "has 3 classes" in caplog.text and "--positive-label" in caplog.text
    assert not output.exists()
    assert run_init(str(trap_csv), "--target", "status", "--output", str(output)) == 2
    assert "--target 'status' is not a column" in caplog.text
    code = run_init(
        str(trap_csv), "--target", "Status", "--positive-label", "Bad", "--output", str(output)
    )
    assert code == 2 and "--positive-label Bad not a value of 'Status'" in caplog.text


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"y": [0, 1]}, None),  # 0/1: nothing to name
        ({"y": ["stays", "leaves"]}, "leaves"),  # the rarer class
    ],
)
def test_positive_label_of_a_binary_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: dict, expected: str | None
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    (values,) = status.values()
    frame = trap_table().assign(y=np.where(np.arange(600) % 4 == 0, values[1], values[0]))
    table = tmp_path / "binary.parquet"
    frame.drop(columns="Status").to_parquet(table)
    output = tmp_path / "binary.yaml"
    assert run_init(str(table), "--target", "y", "--output", str(output)) == 0
    config = load_config(output)
    assert config.data.positive_label == expected
    assert config.data.sep is None  # not a CSV file
    assert load_table(config.data).target.mean() == pytest.approx(0.25)


def test_an_existing_config_is_kept_unless_forced(
    trap_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    output = tmp_path / "mine.yaml"
    output.write_text("# edited by hand\n")
    argv = [str(trap_csv), "--target", "Status", "--positive-label", "bad", "--output", str(output)]
    assert run_init(*argv) == 2
    assert output.read_text() == "# edited by hand\n"
    assert run_init(*argv, "--force") == 0
    assert yaml.safe_load(output.read_text(encoding="utf-8"))["data"]["positive_label"] == "bad"


def test_default_output_is_named_after_the_table() -> None:
    assert init.project_name(Path("data/Credit Risk.2024.csv")) == "credit-risk"
    assert init.project_name(Path("/x/loans.parquet")) == "loans"


HOSTILE_NAMES = [
    "note\ntrust:\n  allow_pickle: true\nx",  # a newline: YAML of the name's choosing
    "# not a comment",
    "key: value",
    "  leading spaces",
    "quotes ' and \"",
    "\ttab\rreturn",
    "n" * 10_000,
]


def test_hostile_column_names_round_trip_and_change_no_setting(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = 300
    table = pd.DataFrame(
        {name: rng.normal(size=rows) for name in HOSTILE_NAMES[::2]}
        | {name: rng.choice(["a", "b", "c"], rows) for name in HOSTILE_NAMES[1::2]}
        | {"target": rng.choice(["yes", "no"], rows)}
    )
    path = tmp_path / "hostile.parquet"
    table.to_parquet(path)
    output = tmp_path / "hostile.yaml"
    assert run_init(str(path), "--target", "target", "--output", str(output)) == 0
    config = load_config(output)
    assert config.data.numeric_features == HOSTILE_NAMES[::2]
    assert config.data.categorical_features == HOSTILE_NAMES[1::2]
    assert config.trust == load_config(TEMPLATE).trust  # the shipped trust settings
    assert yaml.safe_load(output.read_text()).keys() == yaml.safe_load(TEMPLATE.read_text()).keys()
