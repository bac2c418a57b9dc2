"""Reusable library of the project: config, data, pipeline, evaluation, tracking, registry."""

from tabular_mlops.resources import share_cores_politely

# Before any module of the library loads LightGBM: OpenMP reads its settings once, at load.
share_cores_politely()
