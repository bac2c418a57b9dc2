"""A team's MLflow stack on one machine, no Docker: PostgreSQL, SeaweedFS and `mlflow server`
with basic auth (stack, settings, postgres), and users with roles on it (access). Tooling:
not in the wheel that models and jobs install (`scripts/stack.sh` runs it)."""
