"""The team stack as the tests and `python -m bench.stack` see it: its bucket read through
the S3 API with the server's keys, every text it recorded and the scan for secrets."""

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from team_stack.settings import ADMIN_PASSWORD_VARIABLE, SEAWEEDFS_PORTS, Secrets
from team_stack.stack import LocalStack
from test_support.servers import free_port, free_port_block


def s3_client(stack: LocalStack) -> Any:  # -> botocore S3 client
    """An S3 client holding the keys the stack generated for its tracking server."""
    import boto3

    keys = Secrets(stack.settings.root)
    return boto3.client(
        "s3",
        endpoint_url=stack.settings.s3_endpoint,
        aws_access_key_id=keys["s3_access_key"],
        aws_secret_access_key=keys["s3_secret_key"],
        region_name="us-east-1",
    )


def recorded_texts(client: mlflow.MlflowClient) -> dict[str, str]:
    """Every param, tag and description a tracking server holds, one text per record."""
    texts: dict[str, str] = {}
    experiments = client.search_experiments()
    ids = [experiment.experiment_id for experiment in experiments]
    for experiment in experiments:
        texts[f"experiment {experiment.name}"] = repr(experiment.tags)
    for run in client.search_runs(ids, max_results=5000):
        texts[f"run {run.info.run_id}"] = repr((run.data.params, run.data.tags))
    for model in client.search_logged_models(ids, max_results=5000):
        texts[f"logged model {model.model_id}"] = repr((model.params, model.tags))
    for registered in client.search_registered_models():
        texts[f"registered {registered.name}"] = repr((registered.description, registered.tags))
        for version in client.search_model_versions(f"name = '{registered.name}'"):
            texts[f"version {registered.name}/{version.version}"] = repr(
                (version.description, version.tags, version.source)
            )
    return texts


def bucket_keys(stack: LocalStack) -> set[str]:
    """The keys of every object in the stack's bucket, listed through the S3 API."""
    pages = s3_client(stack).get_paginator("list_objects_v2").paginate(Bucket=stack.settings.bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def bucket_objects(stack: LocalStack) -> Iterator[tuple[str, bytes]]:
    s3 = s3_client(stack)
    for key in sorted(bucket_keys(stack)):
        yield key, s3.get_object(Bucket=stack.settings.bucket, Key=key)["Body"].read()


def leaks(
    secrets_by_name: dict[str, str], texts: dict[str, str], objects: dict[str, bytes]
) -> list[tuple[str, str]]:
    """(secret's name, where) for every text or object holding a secret."""
    return [
        (name, where)
        for name, secret in secrets_by_name.items()
        for where, text in texts.items()
        if secret in text
    ] + [
        (name, key)
        for name, secret in secrets_by_name.items()
        for key, body in objects.items()
        if secret.encode() in body
    ]


def scan_stack(
    stack: LocalStack, admin: mlflow.MlflowClient, secrets_by_name: dict[str, str], output: str
) -> tuple[dict[str, str], dict[str, bytes], list[tuple[str, str]]]:
    """The texts and bucket objects scanned (by where they come from) and the leaks found,
    over all the stack holds, its logs and `output`."""
    texts = recorded_texts(admin) | {"output": output}
    texts |= {f"log {p.name}": p.read_text(errors="replace") for p in stack.log_dir.glob("*.log")}
    objects = dict(bucket_objects(stack))
    return texts, objects, leaks(secrets_by_name, texts, objects)


def stack_environment(root: Path) -> dict[str, str]:
    """STACK_* on free ports under `root`, and a new admin password."""
    return {
        "STACK_DIR": str(root),
        "STACK_MLFLOW_PORT": str(free_port()),
        "STACK_POSTGRES_PORT": str(free_port()),
        "STACK_S3_PORT": str(free_port_block(1 + SEAWEEDFS_PORTS)),
        ADMIN_PASSWORD_VARIABLE: secrets.token_urlsafe(16),
    }
