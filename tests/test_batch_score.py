"""Batch scoring's pieces, without a model store: inputs, output schema, staged output."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.types import ColSpec, Schema
from tabular_custom_model import ChurnModel, Output, Param, Setting

from tabular_mlops.core.batch_sections import BatchConfig
from tabular_mlops.core.errors import DataError
from tabular_mlops.jobs import pandas_engine, score_io, scoring_model
from tabular_mlops.jobs.scoring_model import ScoringModel

INPUTS = Schema(
    [
        ColSpec("double", "tenure"),
        ColSpec("double", "monthly_charges", required=False),
        ColSpec("string", "contract", required=False),
    ]
)


def a_model(max_rows: int = 10_000) -> ScoringModel:
    return ScoringModel(
        uri="models:/churn-service/1",
        inputs=INPUTS,
        outputs=ChurnModel.output_schema(),
        max_rows=max_rows,
        threshold=0.4,
        band_labels=("low", "medium", "high"),
    )


def test_the_names_it_relies_on_are_the_custom_models() -> None:
    assert scoring_model.MAX_ROWS_SETTING == Setting.MAX_ROWS
    assert scoring_model.THRESHOLD_SETTING == Setting.THRESHOLD
    assert scoring_model.BAND_LABELS_SETTING == Setting.RISK_BAND_LABELS
    assert (scoring_model.EXPLAIN_PARAM, scoring_model.THRESHOLD_PARAM) == (
        Param.EXPLAIN,
        Param.THRESHOLD,
    )
    assert (
        scoring_model.PROBABILITY,
        scoring_model.DECISION,
        scoring_model.RISK_BAND,
        scoring_model.REASONS,
    ) == (
        Output.PROBABILITY,
        Output.DECISION,
        Output.RISK_BAND,
        Output.REASONS,
    )


def test_the_output_schema_is_the_ids_then_every_output_of_the_model(tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"id": [7], "tenure": [1.0], "contract": ["One year"]}).to_parquet(path)
    source = score_io.open_input(path, INPUTS, ["id"])
    schema = score_io.output_schema(a_model().outputs, source)
    reason = pa.struct([("contribution", pa.float64()), ("feature", pa.string())])
    assert schema == pa.schema(
        [
            ("id", pa.int64()),
            (Output.PROBABILITY, pa.float64()),
            (Output.DECISION, pa.bool_()),
            (Output.RISK_BAND, pa.string()),
            (Output.UNSEEN_CATEGORIES, pa.list_(pa.string())),
            (Output.REASONS, pa.list_(reason)),
            (Output.MODEL_NAME, pa.string()),
            (Output.MODEL_VERSION, pa.string()),
        ]
    )


def test_a_csv_means_what_pandas_reads_in_it(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        "id,tenure,monthly_charges,contract\n1,3,NA,One year\n2,,20.5,\n3,7,null,NA\n4,1,N/A,n/a\n"
    )
    source = score_io.open_input(path, INPUTS, ["id"])
    (batch,) = pandas_engine._batches(source, 100)
    read = batch.to_pandas()
    expected = pd.read_csv(path)
    pd.testing.assert_frame_equal(
        read.astype({"contract": object}),
        expected.astype({"tenure": float, "contract": object}),
    )
    assert source.schema.field("tenure").type == pa.float64()  # as the signature says


def test_batches_never_exceed_the_size_asked(tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    frame = pd.DataFrame({"tenure": np.arange(2_500.0), "contract": "One year"})
    pq.write_table(pa.Table.from_pandas(frame), path, row_group_size=1_000)
    sizes = [len(b) for b in pandas_engine._batches(score_io.open_input(path, INPUTS, []), 300)]
    assert max(sizes) <= 300
    assert sum(sizes) == 2_500
    settings = BatchConfig(batch_rows=10_000)
    assert scoring_model.batch_rows(settings, a_model(max_rows=50)) == 50


def test_a_missing_column_is_named_before_anything_is_scored(tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"monthly_charges": [1.0], "contract": ["x"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"lacks required column\(s\): customer_id, tenure$"):
        score_io.open_input(path, INPUTS, ["customer_id"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.parquet", None, "input not found"),
        ("rows.txt", "a,b\n", "use a .csv or .parquet file"),
        ("rows.parquet", "not parquet at all", "cannot read input"),
        ("rows.csv", "", "cannot read input"),
    ],
)
def test_an_unusable_input_is_one_line(tmp_path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as raised:
        score_io.open_input(path, INPUTS, [])
    assert "\n" not in str(raised.value)


def test_text_in_a_numeric_column_is_one_line(tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    pd.DataFrame({"tenure": ["3", "abc"], "contract": ["x", "y"]}).to_parquet(path)
    source = score_io.open_input(path, INPUTS, [])
    with pytest.raises(DataError, match=r"cannot read input .*abc"):
        list(pandas_engine._batches(source, 10))


def test_a_folder_of_parts_is_one_input_with_one_digest(tmp_path) -> None:
    folder = tmp_path / "parts"
    folder.mkdir()
    for part in range(3):
        frame = pd.DataFrame({"tenure": [float(part)], "contract": ["x"]})
        frame.to_parquet(folder / f"part-{part}.parquet")
    source = score_io.open_input(folder, INPUTS, [])
    assert len(source.files) == 3
    assert sum(len(b) for b in pandas_engine._batches(source, 10)) == 3
    (folder / "part-0.parquet").write_bytes((folder / "part-1.parquet").read_bytes())
    assert score_io.open_input(folder, INPUTS, []).digest != source.digest


def test_the_output_appears_only_when_complete(tmp_path) -> None:
    final = tmp_path / "scores"
    staged = score_io.staged_output(final, overwrite=False, run_id="r1")
    with pytest.raises(RuntimeError), staged as staging:
        (staging / "part-00000.parquet").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging folder
    with score_io.staged_output(final, overwrite=False, run_id="r1") as staging:
        (staging / "part-00000.parquet").write_text("first")
        assert not final.exists()
    assert (final / "part-00000.parquet").read_text() == "first"
    assert json.loads((final / score_io.OUTPUT_MARKER).read_text()) == {"run_id": "r1"}


def test_an_output_of_batch_score_is_replaced_only_when_asked(tmp_path) -> None:
    final = tmp_path / "scores"
    with score_io.staged_output(final, overwrite=False, run_id="r1") as staging:
        (staging / "part-00000.parquet").write_text("old")
    refused = pytest.raises(DataError, match="exists: pass -P overwrite=true")
    with refused, score_io.staged_output(final, overwrite=False, run_id="r2"):
        pass
    with score_io.staged_output(final, overwrite=True, run_id="r2") as staging:
        (staging / "part-00000.parquet").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [score_io.OUTPUT_MARKER, "part-00000.parquet"]
    assert (final / "part-00000.parquet").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["scores"]


@pytest.mark.parametrize(
    ("foreign", "why"),
    [
        ({"results.csv": "a user's"}, "it holds no _batch_score.json"),
        (
            {"_batch_score.json": '{"run_id": "r1"}', "part-00000.parquet": "", "notes.txt": "x"},
            "it holds notes.txt",
        ),
        ({"_batch_score.json": "[]"}, "it holds no _batch_score.json"),
    ],
)
def test_a_folder_batch_score_did_not_write_is_never_replaced(
    tmp_path, foreign: dict[str, str], why: str
) -> None:
    final = tmp_path / "scores"
    final.mkdir()
    for name, text in foreign.items():
        (final / name).write_text(text)
    refused = pytest.raises(DataError, match=f"is not replaced: {why}, so batch_score did not")
    with refused, score_io.staged_output(final, overwrite=True, run_id="r2"):
        pytest.fail("nothing may be scored into a folder that is not ours")
    assert {p.name: p.read_text() for p in final.iterdir()} == foreign
    assert [p.name for p in tmp_path.iterdir()] == ["scores"]


def test_parts_roll_over_and_an_empty_output_keeps_its_schema(tmp_path) -> None:
    schema = pa.schema([("id", pa.int64())])
    with score_io.PartWriter(tmp_path, schema, rows_per_file=4) as writer:
        for start in (0, 3, 6):
            writer.write(pa.table({"id": list(range(start, start + 3))}, schema=schema))
    parts = sorted(tmp_path.iterdir())
    assert [pq.read_metadata(p).num_rows for p in parts] == [4, 4, 1]
    assert pq.read_table(tmp_path)["id"].to_pylist() == list(range(9))
    empty = tmp_path / "empty"
    empty.mkdir()
    with score_io.PartWriter(empty, schema, rows_per_file=4):
        pass
    assert pq.read_table(empty).schema == schema
    assert pq.read_table(empty).num_rows == 0


def test_the_summary_counts_rows_decisions_bands_and_scores() -> None:
    summary = scoring_model.ScoreSummary()
    summary.add(np.array([0.1, 0.5, 0.99]), np.array([False, True, True]), ["low", "mid", "hi"])
    summary.add(np.array([1.0]), np.array([True]), ["hi"])
    metrics = summary.metrics(2.0, ["low", "mid", "hi"])
    assert metrics == {
        "rows": 4,
        "seconds": 2.0,
        "rows_per_second": 2.0,
        "decision_rate": 0.75,
        "risk_band.low": 1,
        "risk_band.mid": 1,
        "risk_band.hi": 2,
    }
    assert summary.histogram.sum() == 4
    assert summary.histogram[-1] == 2  # 0.99 and 1.0 share the last bin
