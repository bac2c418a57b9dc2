"""Monitoring's statistics on the shipped table: no false alarm on resamples of the held-out
split, an alarm naming each feature that really moved, realized performance judged with
its confidence interval, and a profile that survives JSON."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tabular_mlops.core import data
from tabular_mlops.core.batch_sections import MonitoringConfig
from tabular_mlops.core.monitoring import (
    SCORE_COLUMN,
    Profile,
    count,
    count_frames,
    drift,
    from_counted_rows,
    numeric_shares,
    profile,
)
from tabular_mlops.core.sections import DataConfig, SplitConfig
from tabular_mlops.core.verdict import Realized, Verdict, bootstrap, judge
from tests.conftest import churn_settings

LIMITS = MonitoringConfig()  # the shipped thresholds


@pytest.fixture(scope="module")
def table() -> data.LabeledTable:
    return data.load_table(DataConfig(**churn_settings()["data"]))


@pytest.fixture(scope="module")
def parts(table: data.LabeledTable) -> data.Split:
    return data.split(table, SplitConfig(**churn_settings().get("split", {})))


def score(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model: the statistics only need scores that depend on the inputs."""
    z = -0.04 * frame["tenure"].astype(float) + 0.02 * frame["monthly_charges"].astype(float) - 1
    return 1 / (1 + np.exp(-z.to_numpy()))


@pytest.fixture(scope="module")
def reference(table: data.LabeledTable, parts: data.Split) -> Profile:
    numeric, categorical = list(table.spec.numeric), list(table.spec.categorical)
    return profile(parts.X_train, numeric, categorical, score(parts.X_test), {"roc_auc": 0.84})


def resample(frame: pd.DataFrame, seed: int, rows: int = 5000) -> pd.DataFrame:
    return frame.sample(rows, replace=True, random_state=seed).reset_index(drop=True)


def test_twenty_resamples_of_the_held_out_split_raise_no_retrain_and_one_warn_at_most(
    parts: data.Split, reference: Profile
) -> None:
    verdicts = []
    for seed in range(20):
        batch = resample(parts.X_test, seed)
        verdicts.append(
            judge(drift(reference, count(reference, batch, score(batch))), [], LIMITS).verdict
        )
    assert Verdict.RETRAIN not in verdicts
    assert verdicts.count(Verdict.WARN) <= 1, verdicts


def test_a_shifted_charge_a_new_category_and_more_missing_values_each_raise_retrain(
    parts: data.Split, reference: Profile
) -> None:
    batch = resample(parts.X_test, 0)
    batch["monthly_charges"] = batch["monthly_charges"] * 1.2
    batch["contract"] = batch["contract"].astype(object).replace("Two year", "Three year")
    gaps = np.random.default_rng(0).random(len(batch)) < 0.2
    batch.loc[gaps, "tenure"] = np.nan
    judgement = judge(drift(reference, count(reference, batch, score(batch))), [], LIMITS)
    assert judgement.verdict == Verdict.RETRAIN
    retrain = " ".join(r for r in judgement.reasons if r.startswith("retrain"))
    assert "monthly_charges PSI" in retrain
    assert "contract unseen categories" in retrain
    assert "tenure missing +" in retrain
    untouched = ("partner", "payment_method", "senior_citizen")
    assert not any(name in retrain for name in untouched), retrain


def test_realized_performance_alarms_on_flipped_outcomes_not_on_a_small_honest_night(
    parts: data.Split,
) -> None:
    truth = parts.y_test.to_numpy()
    scores = np.clip(truth * 0.35 + np.random.default_rng(1).random(len(truth)) * 0.65, 0, 1)
    reference_auc = roc_auc_score(truth, scores)
    small = np.random.default_rng(2).choice(len(truth), 300, replace=False)
    honest = Realized(
        "roc_auc", *bootstrap(roc_auc_score, truth[small], scores[small]), reference_auc
    )
    assert judge([], [honest], LIMITS).verdict != Verdict.RETRAIN
    flipped = truth.copy()
    chosen = np.random.default_rng(3).random(len(truth)) < 0.3
    flipped[chosen] = 1 - flipped[chosen]
    worse = Realized("roc_auc", *bootstrap(roc_auc_score, flipped, scores), reference_auc)
    judgement = judge([], [worse], LIMITS)
    assert judgement.verdict == Verdict.RETRAIN and judgement.reasons[0].startswith(
        "retrain: roc_auc"
    )


def test_the_profile_round_trips_through_json_and_holds_no_row(reference: Profile) -> None:
    text = reference.to_json()
    assert Profile.from_dict(json.loads(text)) == reference
    assert len(text) < 60_000  # compact: bins and quantiles, not rows
    assert set(reference.numeric) >= {"tenure", "monthly_charges"}
    assert "contract" in reference.categorical


def test_discrete_columns_do_not_drift_against_themselves(
    parts: data.Split, reference: Profile
) -> None:
    found = {d.feature: d for d in drift(reference, count(reference, parts.X_train, None))}
    for name in ("senior_citizen", "female", "tenure", "contract"):
        assert found[name].psi < 1e-6 and found[name].distance < 0.02, found[name]


def test_a_batch_counted_in_parts_adds_up_to_the_batch_counted_whole(
    parts: data.Split, reference: Profile
) -> None:
    """What lets pandas stream a batch and Spark count it by partition: the same figures."""
    batch = resample(parts.X_test, 5, rows=3000)
    batch.loc[batch.index[::7], "monthly_charges"] = np.nan
    whole = count(reference, batch, score(batch))
    pieces = [batch.iloc[start : start + 700] for start in range(0, len(batch), 700)]
    summed = sum((count(reference, piece, score(piece)) for piece in pieces[1:]),
                 count(reference, pieces[0], score(pieces[0])))  # fmt: skip
    assert summed.rows == whole.rows == 3000
    assert summed.features.keys() == whole.features.keys()
    for name, counts in whole.features.items():
        assert np.array_equal(summed.features[name], counts), name
    assert drift(reference, summed) == drift(reference, whole)


def test_the_counts_give_the_shares_a_direct_binning_gives(
    parts: data.Split, reference: Profile
) -> None:
    batch = resample(parts.X_test, 6)
    counted = count(reference, batch, None)
    for name in ("tenure", "monthly_charges", "total_charges"):
        values = pd.to_numeric(batch[name], errors="coerce").dropna().to_numpy()
        edges = np.asarray(reference.numeric[name].edges)
        direct = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        shares = numeric_shares(reference.numeric[name], counted.features[name])
        assert np.allclose(shares, direct / len(values), atol=1e-15), name
    contract = {d.feature: d for d in drift(reference, counted)}["contract"]
    assert contract.missing_rate == batch["contract"].isna().mean()


def test_counted_rows_summed_by_feature_and_slot_give_the_counts_back(
    parts: data.Split, reference: Profile
) -> None:
    """What the Spark engine does: count_frames per partition, a groupBy sum, then
    from_counted_rows; here the partitions are slices and the groupBy is pandas'."""
    batch = resample(parts.X_test, 7, rows=2000).assign(**{SCORE_COLUMN: lambda f: score(f)})
    partitions = [[batch.iloc[:500], batch.iloc[500:900]], [], [batch.iloc[900:]]]
    rows = pd.concat(
        [frame for part in partitions for frame in count_frames(reference, iter(part))]
    )
    sums = rows.groupby(["feature", "slot"], dropna=False)["count"].sum().reset_index()
    counts = from_counted_rows(
        reference, [(None if pd.isna(f) else f, s, n) for f, s, n in sums.itertuples(index=False)]
    )
    assert drift(reference, counts) == drift(reference, count(reference, batch, score(batch)))
