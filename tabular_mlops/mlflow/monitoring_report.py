"""What a `monitor` run logs besides its verdict: one metric per figure (MLflow's UI charts
them night after night), the drift table, plots of the most drifted features and of the
scores against the reference, and an HTML report that holds them all (plots inline, so that
it opens from the run's artifacts as it is)."""

import base64
import html
import io
import re

import mlflow
import numpy as np
import pandas as pd

from tabular_mlops.core import monitoring, verdict
from tabular_mlops.core.batch_sections import MonitoringConfig
from tabular_mlops.core.names import Artifact
from tabular_mlops.core.plots import pyplot

# What a metric name may hold in MLflow; anything else in a column's name becomes "_".
_UNSAFE = re.compile(r"[^\w\-. /]")


def metric_key(figure: str, feature: str) -> str:
    return f"{figure}/{_UNSAFE.sub('_', feature)[:200]}"


def log(
    reference: monitoring.Profile,
    counts: monitoring.Counts,
    drifts: list[monitoring.FeatureDrift],
    realized: list[verdict.Realized],
    judgement: verdict.Judgement,
    model_uri: str,
    settings: MonitoringConfig,
) -> None:
    table = pd.DataFrame([vars(found) for found in drifts]).sort_values("psi", ascending=False)
    metrics: dict[str, float] = {}
    for found in drifts:
        for figure in ("psi", "distance", "missing_change", "unseen_share"):
            metrics[metric_key(f"drift_{figure}", found.feature)] = float(getattr(found, figure))
    for each in realized:
        metrics |= {
            f"realized_{each.metric}": each.value,
            f"realized_{each.metric}_low": each.low,
            f"realized_{each.metric}_high": each.high,
        }
    metrics["drifted_features_warn_or_worse"] = float(
        sum(1 for reason in judgement.reasons if reason.split(": ")[0] != "ok")
    )
    mlflow.log_metrics(metrics)
    mlflow.log_text(table.to_csv(index=False), Artifact.MONITOR_TABLE)
    plotted = [f for f in table["feature"] if f != "score"][: settings.plotted_features]
    figures = {}
    if counts.scores is not None:
        figures["score"] = _figure(reference.scores, counts.scores, "model score")
    for name in plotted:
        shown = reference.numeric.get(name) or reference.categorical[name]
        figures[name] = _figure(shown, counts.features[name], name)
    for name, png in figures.items():
        mlflow.log_image(_image(png), f"{Artifact.MONITOR_PLOTS}/{_UNSAFE.sub('_', name)}.png")
    mlflow.log_text(
        _report(table, realized, judgement, model_uri, counts.rows, figures),
        Artifact.MONITOR_REPORT,
    )


def _figure(
    reference: monitoring.NumericReference | monitoring.CategoricalReference,
    counts: np.ndarray,
    title: str,
) -> bytes:
    """The reference's shares beside the batch's, bin by bin (category by category)."""
    plt = pyplot()
    if isinstance(reference, monitoring.NumericReference):
        edges = reference.edges
        labels = [f"< {edges[0]:.3g}", *[f"{e:.3g}+" for e in edges]] if edges else ["all"]
        expected = reference.shares
        actual = list(monitoring.numeric_shares(reference, counts))
    else:
        labels = [c for c in reference.shares if c != monitoring.OTHER] + ["(other, unseen)"]
        expected = [reference.shares[c] for c in labels[:-1]]
        expected.append(reference.shares.get(monitoring.OTHER, 0.0))
        actual = list(monitoring.categorical_shares(reference, counts))
    figure, axes = plt.subplots(figsize=(7, 3.2))
    positions = np.arange(len(labels))
    axes.bar(positions - 0.2, expected, width=0.4, label="training")
    axes.bar(positions + 0.2, actual, width=0.4, label="batch")
    axes.set_xticks(
        positions, [label[:18] for label in labels], rotation=45, ha="right", fontsize=7
    )
    axes.set_ylabel("share of rows")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _image(png: bytes) -> np.ndarray:
    plt = pyplot()
    return np.asarray(plt.imread(io.BytesIO(png), format="png"))


def _report(
    table: pd.DataFrame,
    realized: list[verdict.Realized],
    judgement: verdict.Judgement,
    model_uri: str,
    rows: int,
    figures: dict[str, bytes],
) -> str:
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in judgement.reasons) or "<li>none</li>"
    performance = (
        pd.DataFrame([vars(r) for r in realized]).to_html(index=False, float_format="%.4f")
        if realized
        else "<p>No labels given.</p>"
    )
    plots = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'></figure>"
        for name, png in figures.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>monitor</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>"
        f"<h1>Verdict: {judgement.verdict.value}</h1>"
        f"<p>{html.escape(model_uri)}, {rows} rows</p><ul>{reasons}</ul>"
        f"<h2>Realized performance</h2>{performance}"
        f"<h2>Drift, most moved first</h2>"
        f"{table.to_html(index=False, float_format='%.4f', escape=True)}"
        f"<h2>Distributions</h2>{plots}</body></html>"
    )
