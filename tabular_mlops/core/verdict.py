"""The verdict of a `monitor` run: each drift figure (core.monitoring) and each realized
metric against its `[warn, retrain]` thresholds, with the reasons; and the bootstrap
intervals that keep a small night's realized metrics from raising a false alarm."""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from tabular_mlops.core.batch_sections import MonitoringConfig
from tabular_mlops.core.monitoring import FeatureDrift


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    RETRAIN = "retrain"


@dataclass(frozen=True)
class Realized:
    """The model's performance on labelled rows, with bootstrap confidence intervals."""

    metric: str
    value: float
    low: float
    high: float
    reference: float


@dataclass
class Judgement:
    verdict: Verdict = Verdict.OK
    reasons: list[str] = field(default_factory=list)

    def raise_to(self, level: Verdict, reason: str) -> None:
        order = list(Verdict)
        if order.index(level) > order.index(self.verdict):
            self.verdict = level
        self.reasons.append(f"{level.value}: {reason}")


def judge(
    drifts: list[FeatureDrift], realized: list[Realized], limits: MonitoringConfig
) -> Judgement:
    """The verdict, and a reason for each figure past its `[warn, retrain]` thresholds in
    `limits` (the config's `monitoring` section), retrain first."""
    judgement = Judgement()

    def check(value: float, bounds: tuple[float, float], what: str) -> None:
        if value >= bounds[1]:
            judgement.raise_to(Verdict.RETRAIN, what)
        elif value >= bounds[0]:
            judgement.raise_to(Verdict.WARN, what)

    for found in drifts:
        name = found.feature
        check(found.psi, limits.psi, f"{name} PSI {found.psi:.3f}")
        check(found.distance, limits.distance, f"{name} distance {found.distance:.3f}")
        check(
            found.missing_change,
            limits.missing_change,
            f"{name} missing +{found.missing_change:.1%}",
        )
        check(
            found.unseen_share,
            limits.unseen_share,
            f"{name} unseen categories {found.unseen_share:.1%}",
        )
    for each in realized:
        # The drop the interval allows at best: a small night is not a false alarm.
        drop = each.reference - each.high
        check(
            drop,
            limits.metric_drop,
            f"{each.metric} {each.value:.3f} (CI {each.low:.3f}-{each.high:.3f}) "
            f"against {each.reference:.3f}",
        )
    judgement.reasons.sort(key=lambda reason: not reason.startswith(Verdict.RETRAIN.value))
    return judgement


def bootstrap(
    metric: Any, y_true: np.ndarray, scores: np.ndarray, rounds: int = 200, seed: int = 0
) -> tuple[float, float, float]:
    """`metric(y_true, scores)` and its 95% bootstrap interval (resamples lacking a class
    are skipped)."""
    rng = np.random.default_rng(seed)
    value = float(metric(y_true, scores))
    samples = []
    n = len(y_true)
    for _ in range(rounds):
        picked = rng.integers(0, n, n)
        truth = y_true[picked]
        if truth.min() == truth.max():
            continue
        samples.append(float(metric(truth, scores[picked])))
    if not samples:
        return value, value, value
    low, high = np.quantile(samples, [0.025, 0.975])
    return value, float(low), float(high)
