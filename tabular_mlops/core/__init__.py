"""Pure ML and the project's vocabulary: the config and its sections, reading and checking
tables, the pipeline, the cross-validated search, decision thresholds, CPU threads, and the
names of tags, artifacts and statuses. Imports no MLflow and nothing of the layers above."""
