import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tabular_mlops.core.data import load_table, prepare, split
from tabular_mlops.core.errors import DataError
from tabular_mlops.core.sections import DataConfig, SplitConfig
from tabular_mlops.core.tables import infer_separator
from tests.conftest import CHURN_CSV, churn_frame, churn_settings, mixed_table


def churn_data_config(**changes: Any) -> DataConfig:
    return DataConfig(**(churn_settings()["data"] | changes))


def test_shipped_table() -> None:
    table = load_table(churn_data_config())
    assert len(table.features) == 7043
    assert table.features.shape[1] == 19
    assert table.target.mean() == pytest.approx(0.2654, abs=1e-3)
    assert table.features["total_charges"].isna().sum() == 11
    assert table.positive_label == "Yes"
    assert list(table.ids.columns) == ["customer_id"]
    assert (table.features[list(table.spec.numeric)].dtypes == "float64").all()
    assert (table.features[list(table.spec.categorical)].dtypes == "str").all()
    assert table.features["contract"].iloc[0] == "Month-to-month"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_other_table_by_config_alone_with_inferred_features(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mixed{suffix}"
    frame = mixed_table()
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    table = load_table(DataConfig(path=path, target="label", id_columns=["id"]))
    assert table.spec.numeric == ("age", "income", "member")
    assert table.spec.categorical == ("plan", "region")
    assert table.positive_label == 1  # inferred for a 0/1 target
    assert table.features["member"].isin([0.0, 1.0]).all()
    assert table.features["region"].isna().sum() == frame["region"].isna().sum() > 0
    assert table.target.tolist() == frame["label"].tolist()


def test_one_listed_kind_and_the_other_inferred() -> None:
    config = DataConfig(path=Path("t.csv"), target="label", numeric_features=["age"])
    table = prepare(mixed_table(), config)
    assert table.spec.numeric == ("age",)
    assert table.spec.categorical == ("id", "plan", "region")


def test_positive_label_matches_numbers_given_as_text() -> None:
    config = DataConfig(path=Path("t.csv"), target="label", positive_label="0")
    table = prepare(mixed_table(), config)
    assert table.positive_label == 0
    assert table.target.tolist() == (mixed_table()["label"] == 0).astype(int).tolist()


def test_rows_without_target_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    frame = churn_frame()
    frame.loc[:4, "churn"] = None
    with caplog.at_level(logging.WARNING):
        table = prepare(frame, churn_data_config())
    assert len(table.features) == 7043 - 5
    assert "dropping 5 rows" in caplog.text


def test_id_like_inferred_column_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    config = DataConfig(path=Path("t.csv"), target="label")  # `id` not declared as id
    with caplog.at_level(logging.WARNING):
        prepare(mixed_table(), config)
    assert "column 'id' has 200 distinct values" in caplog.text


def test_categories_given_as_numbers_become_text() -> None:
    frame = mixed_table()
    frame["zone"] = [1, 2, None, 4] * 50
    config = DataConfig(path=Path("t.csv"), target="label", categorical_features=["zone"])
    zone = prepare(frame, config).features["zone"]
    assert zone.iloc[0] == "1.0" and pd.isna(zone.iloc[2])


def test_split_is_seeded_and_stratified() -> None:
    table = load_table(churn_data_config())
    first = split(table, SplitConfig(test_size=0.2, seed=7))
    again = split(table, SplitConfig(test_size=0.2, seed=7))
    other = split(table, SplitConfig(test_size=0.2, seed=8))
    assert first.X_test.index.equals(again.X_test.index)
    assert not first.X_test.index.equals(other.X_test.index)
    assert len(first.y_test) == 1409
    assert first.y_test.mean() == pytest.approx(first.y_train.mean(), abs=0.002)
    assert first.ids_test.index.equals(first.X_test.index)


# Bad input: each one a DataError with a one-line message naming the problem.


def expect_data_error(config: DataConfig, frame: pd.DataFrame | None, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        load_table(config) if frame is None else prepare(frame, config)
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    expect_data_error(churn_data_config(path=tmp_path / "gone.csv"), None, "data file not found")


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "table.xlsx"
    path.write_text("x")
    expect_data_error(churn_data_config(path=path), None, "unsupported data file type '.xlsx'")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    expect_data_error(churn_data_config(path=path), None, "cannot read data file .*broken.parquet")


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    expect_data_error(churn_data_config(path=path), None, "cannot read data file")


def test_header_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    churn_frame().head(0).to_csv(path, index=False)
    expect_data_error(churn_data_config(path=path), None, "no labelled rows in .*header.csv")


def test_target_missing() -> None:
    config = churn_data_config(target="churned")
    expect_data_error(config, churn_frame(), "target column 'churned' not in .*wa_churn.csv")


def test_listed_feature_missing() -> None:
    frame = churn_frame().drop(columns=["tenure", "contract"])
    expect_data_error(
        churn_data_config(), frame, r"data.numeric_features not in .*wa_churn.csv: tenure"
    )


def test_single_class() -> None:
    frame = churn_frame().assign(churn="No")
    expect_data_error(churn_data_config(), frame, "has a single class .*a classifier needs two")


def test_more_than_two_classes() -> None:
    frame = churn_frame()
    frame.loc[:10, "churn"] = "Maybe"
    expect_data_error(churn_data_config(), frame, "has 3 classes")


def test_more_than_two_classes_names_the_one_vs_rest_setting() -> None:
    frame = churn_frame()
    frame.loc[:10, "churn"] = "Maybe"
    expect_data_error(churn_data_config(), frame, r"set data\.positive_labels: .*\(one-vs-rest\)")


def test_one_vs_rest_positive_labels() -> None:
    frame = churn_frame()
    frame.loc[:99, "churn"] = "Maybe"
    table = prepare(frame, churn_data_config(positive_label=None, positive_labels=["Yes", "Maybe"]))
    assert table.target.tolist() == frame["churn"].isin(["Yes", "Maybe"]).astype(int).tolist()
    assert table.positive_label == ["Yes", "Maybe"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["Yes", "Perhaps"], "positive_labels 'Perhaps' not values of target"),
        (["Yes", "No"], "name every class .* nothing is left"),
    ],
)
def test_positive_labels_refused(labels: list[str], message: str) -> None:
    config = churn_data_config(positive_label=None, positive_labels=labels)
    expect_data_error(config, churn_frame(), message)


def test_positive_label_and_labels_together_are_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"positive_label or data\.positive_labels, not both"):
        churn_data_config(positive_labels=["Yes"])


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_csv_separator_is_inferred(tmp_path: Path, sep: str) -> None:
    path = tmp_path / "table.csv"
    frame = mixed_table()
    frame.to_csv(path, sep=sep, index=False)
    assert infer_separator(path) == sep
    table = load_table(DataConfig(path=path, target="label", id_columns=["id"]))
    assert table.target.tolist() == frame["label"].tolist()
    assert table.spec.categorical == ("plan", "region")


def test_a_wrong_separator_names_the_likely_one(tmp_path: Path) -> None:
    path = tmp_path / "semicolons.csv"
    mixed_table().to_csv(path, sep=";", index=False)
    config = DataConfig(path=path, target="label", sep=",")
    expect_data_error(config, None, "read as one column named 'id;age.*set data.sep: ';'")


def test_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    mixed_table().assign(plan="Málaga").to_csv(path, index=False, encoding="latin-1")
    expect_data_error(
        DataConfig(path=path, target="label"), None, "not utf-8 text .*set data.encoding"
    )
    table = load_table(DataConfig(path=path, target="label", encoding="latin-1"))
    assert set(table.features["plan"]) == {"Málaga"}
    with pytest.raises(ValueError, match="unknown encoding 'latin-9x'"):
        DataConfig(path=path, target="label", encoding="latin-9x")


def test_parquet_folders_plain_and_hive_partitioned(tmp_path: Path) -> None:
    frame = mixed_table()
    plain = tmp_path / "parts.parquet"  # a folder named like a file, as Spark writes them
    plain.mkdir()
    frame.iloc[:100].to_parquet(plain / "part-0.parquet")
    frame.iloc[100:].to_parquet(plain / "part-1.parquet")
    table = load_table(DataConfig(path=plain, target="label", id_columns=["id"]))
    assert sorted(table.ids["id"]) == sorted(frame["id"])

    hive = tmp_path / "hive"
    frame.assign(year=[2023, 2024] * 100).to_parquet(hive, partition_cols=["year"])
    table = load_table(DataConfig(path=hive, target="label", id_columns=["id"]))
    assert "year" in table.spec.categorical
    assert set(table.features["year"]) == {"2023", "2024"}


def test_a_folder_without_parquet_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    expect_data_error(DataConfig(path=tmp_path, target="label"), None, "holds no .parquet files")


def test_positive_label_not_in_target() -> None:
    config = churn_data_config(positive_label="yes")
    expect_data_error(config, churn_frame(), "positive_label 'yes' is not a value of target")


def test_positive_label_required_for_text_target() -> None:
    config = churn_data_config(positive_label=None)
    expect_data_error(config, churn_frame(), "set data.positive_label: .* holds No, Yes")


def test_too_few_rows() -> None:
    frame = churn_frame().sample(60, random_state=0)
    expect_data_error(churn_data_config(), frame, "too few rows: .* 60 labelled rows")


def test_too_few_rows_of_one_class() -> None:
    frame = churn_frame()
    frame = pd.concat([frame[frame.churn == "No"].head(500), frame[frame.churn == "Yes"].head(4)])
    expect_data_error(churn_data_config(), frame, "too few rows of class 'Yes': 4")


def test_text_in_numeric_column() -> None:
    frame = churn_frame()
    frame["tenure"] = frame["tenure"].astype(object)
    frame.loc[3, "tenure"] = "ten"
    expect_data_error(
        churn_data_config(), frame, "'tenure' is listed as numeric but holds 1 non-numeric .*'ten'"
    )


def test_listed_feature_with_no_values() -> None:
    frame = churn_frame().assign(tenure=None)
    expect_data_error(churn_data_config(), frame, "listed feature.* with no values in .*: tenure")


def test_empty_unlisted_column_is_not_inferred(caplog: pytest.LogCaptureFixture) -> None:
    frame = mixed_table().assign(notes=None)
    with caplog.at_level(logging.WARNING):
        table = prepare(frame, DataConfig(path=Path("t.csv"), target="label", id_columns=["id"]))
    assert "notes" not in table.spec.columns
    assert "not used as features: notes" in caplog.text


def test_split_too_small_for_test_size() -> None:
    table = prepare(churn_frame(), churn_data_config())
    with pytest.raises(DataError, match=r"cannot split .* split\.test_size=0\.0001"):
        split(table, SplitConfig(test_size=0.0001))


def test_shipped_csv_is_the_documented_file() -> None:
    # data/README.md quotes this digest: a changed file must change the provenance note.
    import hashlib

    digest = hashlib.sha256(CHURN_CSV.read_bytes()).hexdigest()
    assert digest in (CHURN_CSV.parent / "README.md").read_text()


def test_a_table_read_before_is_reused_until_its_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    mixed_table().to_csv(path, index=False)
    config = DataConfig(path=path, target="label", id_columns=["id"])
    first = load_table(config)
    assert load_table(config) is first  # read and checked once
    assert load_table(config.model_copy(update={"min_rows": 20})) is not first  # other settings
    mixed_table(rows=150).to_csv(path, index=False)
    changed = load_table(config)
    assert changed is not first and len(changed.features) == 150
    path.unlink()
    with pytest.raises(DataError, match="data file not found"):
        load_table(config)
