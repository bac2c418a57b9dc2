"""Reusable library of the project: config, data, pipeline, evaluation, tracking, registry."""
