"""Who may do what on a tracking server run with MLflow's basic auth (`--app-name
basic-auth`, as team_stack.stack starts it): users get a role on the project's
experiment and registered models, through MLflow's own auth client.

    python -m team_stack.access NAME trainer|viewer [--config ...]   (scripts/stack.sh user)

Run it as the admin (MLFLOW_TRACKING_USERNAME/PASSWORD). The new user's password comes
from USER_PASSWORD or a prompt, never the command line (`ps` shows that to everyone).
"""

import argparse
import contextlib
import getpass
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, ProjectConfig, load_config
from tabular_mlops.core.errors import UserInputError

if TYPE_CHECKING:
    from mlflow.server.auth.client import AuthServiceClient

logger = logging.getLogger(__name__)

# trainer: runs, models, versions and aliases; viewer: reads and serves them. Deleting an
# alias needs MANAGE, which stays with the admin (a rollback to "no champion" is theirs).
ROLES: Mapping[str, str] = {"trainer": "EDIT", "viewer": "READ"}
PASSWORD_VARIABLE = "USER_PASSWORD"


def project_resources(config: ProjectConfig) -> tuple[str, list[str]]:
    """The experiment and the registered models the project writes to."""
    custom = config.require_custom_model()
    models = [config.tracking.registered_model_name, custom.registered_model_name]
    return config.tracking.experiment_name, models


def grant_role(username: str, password: str, role: str, config: ProjectConfig) -> None:
    """Create `username` (or reset its password) and give it `role` on the project's
    experiment and registered models, creating those (empty) if they do not exist yet."""
    if role not in ROLES:
        raise UserInputError(f"role {role!r} is none of {', '.join(ROLES)}")
    tracking_uri = mlflow.get_tracking_uri()
    if not tracking_uri.startswith(("http://", "https://")):
        raise UserInputError(
            f"users live on a tracking server: set MLFLOW_TRACKING_URI to one (not {tracking_uri})"
        )
    with warnings.catch_warnings():  # Starlette's deprecation, in what mlflow.server imports
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server import get_app_client

        auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
    try:
        auth.create_user(username, password)
        logger.info("user %s created", username)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        auth.update_user_password(username, password)
        logger.info("user %s exists: password updated", username)
    experiment_name, model_names = project_resources(config)
    permission = ROLES[role]
    _grant(auth, username, "experiment", _experiment_id(experiment_name), permission)
    for name in model_names:
        _ensure_registered_model(name)
        _grant(auth, username, "registered_model", name, permission)
    logger.info(
        "%s is %s (%s) on experiment %s and models %s",
        username,
        role,
        permission,
        experiment_name,
        ", ".join(model_names),
    )


def _grant(
    auth: "AuthServiceClient", username: str, kind: str, resource: str, permission: str
) -> None:
    """Give `username` exactly `permission` on one resource (a role change replaces it)."""
    if auth.get_user_permission(username, kind, resource).permission == permission:
        return
    # Granting over an existing grant is refused: the old one goes first.
    with contextlib.suppress(MlflowException):
        auth.revoke_user_permission(username, kind, resource)
    auth.grant_user_permission(username, kind, resource, permission)


def _experiment_id(name: str) -> str:
    """The experiment `name`, created if missing (another admin may create it meanwhile)."""
    if experiment := mlflow.get_experiment_by_name(name):
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        if (existing := mlflow.get_experiment_by_name(name)) is None:
            raise
        return existing.experiment_id


def _ensure_registered_model(name: str) -> None:
    """The registered model `name`, created empty if missing (or meanwhile by another)."""
    try:
        mlflow.MlflowClient().create_registered_model(name)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _new_password(environ: Mapping[str, str]) -> str:
    if password := environ.get(PASSWORD_VARIABLE):
        return password
    if not sys.stdin.isatty():
        raise UserInputError(f"set {PASSWORD_VARIABLE} to the new user's password")
    return getpass.getpass("new user's password: ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="access", description=__doc__.split("\n\n")[0])
    parser.add_argument("username")
    parser.add_argument("role", choices=list(ROLES))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="access: %(message)s")
    try:
        grant_role(args.username, _new_password(os.environ), args.role, load_config(args.config))
    except (UserInputError, MlflowException) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
