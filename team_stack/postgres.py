"""The team stack's PostgreSQL: its cluster made once, connections, and the databases and
roles of the tracking store, the auth store and the shared Optuna studies."""

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from team_stack.settings import (
    DATABASE_USER,
    DATABASES,
    LOOPBACK,
    OPTUNA_DATABASE,
    SUPERUSER,
    Secrets,
    StackError,
    StackSettings,
    as_user,
    reachable_by,
)

logger = logging.getLogger(__name__)


def init_cluster(bin_dir: Path, data: Path, user: str | None, password: str) -> None:
    """`initdb` a new cluster in `data`, owned by `user` (None: this user)."""
    logger.info("postgres: creating the cluster in %s", data)
    if user and not reachable_by(user, data.parent):
        raise StackError(
            f"as root, PostgreSQL runs as `{user}`, which cannot reach {data.parent}: "
            "set STACK_DIR to a folder it can reach"
        )
    data.mkdir(parents=True, mode=0o700)
    password_file = data.parent / "postgres-initdb-password"
    password_file.write_text(password)
    if user:  # PostgreSQL refuses to run as root: its files belong to `postgres`
        shutil.chown(data, user)
        shutil.chown(password_file, user)
    command = [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER]
    command += [f"--pwfile={password_file}", "--auth=scram-sha-256", "--no-locale", "-E", "UTF8"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, **as_user(user))
    finally:
        password_file.unlink()
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"postgres: initdb failed: {done.stderr.strip()[-500:]}")


def connect(settings: StackSettings, secrets: Secrets, database: str = "postgres") -> Any:
    """A psycopg connection (autocommit) as the cluster's superuser."""
    import psycopg

    return psycopg.connect(
        host=LOOPBACK,
        port=settings.postgres_port,
        user=SUPERUSER,
        password=secrets["postgres"],
        dbname=database,
        autocommit=True,
        connect_timeout=5,
    )


def create_databases(settings: StackSettings, secrets: Secrets) -> None:
    """The tracking and auth databases, owned by the tracking server's role, and the Optuna
    database with a role of its own; neither role may create roles or databases."""
    from psycopg import sql

    owners = {DATABASE_USER: "mlflow_database", OPTUNA_DATABASE: OPTUNA_DATABASE}
    with connect(settings, secrets) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        roles = {row[0] for row in connection.execute("SELECT rolname FROM pg_roles")}
        for role, secret in owners.items():
            if role not in roles:
                connection.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                    ).format(sql.Identifier(role), sql.Literal(secrets[secret]))
                )
        for database in (*DATABASES, OPTUNA_DATABASE):
            if database not in existing:
                owner = OPTUNA_DATABASE if database == OPTUNA_DATABASE else DATABASE_USER
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(owner)
                    )
                )
