"""MLflow glue: the runs of the entry points (runs), datasets (datasets), the two registered
models as MLflow models and the code they carry (pipeline_model, service_model,
shipped_code), the registry (registry), evaluation (evaluation), the tuning report
(tuning_report) and what a person reads in the UI (descriptions). Knows nothing of entry
points: it imports only the runtime and core layers."""
