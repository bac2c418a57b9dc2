"""The build context of a registered model's serving image (deploy/model/Dockerfile).

    python -m tabular_mlops.cli.image models:/churn-service@champion build/image

An alias is resolved to the version it names now: the image records that version (its
labels, `image.json`), never the alias. The model is downloaded and checked as every job
checks one (tabular_mlops.mlflow.model_trust), then written with what the image installs:

    build/image/Dockerfile          deploy/model/Dockerfile
    build/image/model/              the checked model, served from /opt/ml/model
    build/image/requirements.txt    the model's pinned requirements, its wheel by path
    build/image/constraints.txt     the project's lock: every other package at its version
    build/image/image.json          model name, version, alias, LoggedModel, run, commit

`docker build` then needs nothing else (deploy/model/build.sh runs both). `--github-output`
appends the version, labels and build arguments to a GitHub Actions output file.
"""

import argparse
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow

from tabular_mlops.cli.commands import configure_logging
from tabular_mlops.core.config import DEFAULT_CONFIG_PATH, load_config
from tabular_mlops.core.errors import UserInputError
from tabular_mlops.core.names import Tag
from tabular_mlops.mlflow.model_trust import LoadPolicy
from tabular_mlops.mlflow.runs import configure_tracking, git_tags

logger = logging.getLogger(__name__)

# Run from the project directory, as every entry point is.
DOCKERFILE = Path("deploy/model/Dockerfile")
LOCK = Path("requirements.lock")
MODEL_DIR = "model"  # in the context; /opt/ml/model in the image, where MLflow's server reads
# The model's requirements end with its wheel as `code/<wheel>`: from the context's root.
WHEEL_PREFIX = "code/"
LABEL_PREFIX = "io.github.tabular-mlops.model"


@dataclass(frozen=True)
class ImageFacts:
    """What an image serves, recorded in its labels and in image.json."""

    model_name: str
    model_version: str
    model_alias: str  # "" when a version was asked for
    model_id: str
    run_id: str
    git_commit: str

    def build_args(self) -> dict[str, str]:
        return {key.upper(): value for key, value in asdict(self).items()}

    def labels(self) -> dict[str, str]:
        labels = {
            f"{LABEL_PREFIX}.{key.replace('model_', '')}": v for key, v in asdict(self).items()
        }
        return labels | {
            "org.opencontainers.image.title": self.model_name,
            "org.opencontainers.image.version": self.model_version,
            "org.opencontainers.image.revision": self.git_commit,
        }


def resolve(model_uri: str) -> tuple[str, ImageFacts]:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> `models:/NAME/VERSION` and the
    image's facts."""
    target = model_uri.removeprefix("models:/")
    if target == model_uri or ("@" not in target and "/" not in target):
        raise UserInputError(f"{model_uri}: an image serves a registered model, models:/NAME@ALIAS")
    client = mlflow.MlflowClient()
    if "@" in target:
        name, alias = target.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, number = target.rsplit("/", 1)
        alias, version = "", client.get_model_version(name, number)
    facts = ImageFacts(
        model_name=name,
        model_version=str(version.version),
        model_alias=alias,
        model_id=version.model_id or "",
        run_id=version.run_id or "",
        git_commit=git_tags().get(Tag.GIT_COMMIT, ""),
    )
    return f"models:/{name}/{version.version}", facts


def write_context(model_uri: str, context: Path, policy: LoadPolicy) -> ImageFacts:
    """The build context of `model_uri`'s image in `context` (a new or empty folder)."""
    if context.exists() and any(context.iterdir()):
        raise UserInputError(f"{context} is not empty: give a new folder for the build context")
    version_uri, facts = resolve(model_uri)
    if not DOCKERFILE.is_file():
        raise UserInputError(f"{DOCKERFILE} not found: run from the project directory")
    download = context / ".download"
    checked = policy.checked(version_uri, download)
    shutil.move(str(checked.local), context / MODEL_DIR)
    shutil.rmtree(download, ignore_errors=True)
    model = context / MODEL_DIR
    requirements = (model / "requirements.txt").read_text().splitlines()
    shipped = [
        f"./{MODEL_DIR}/{line}" if line.startswith(WHEEL_PREFIX) else line for line in requirements
    ]
    (context / "requirements.txt").write_text("\n".join(shipped) + "\n")
    shutil.copy(LOCK, context / "constraints.txt")
    shutil.copy(DOCKERFILE, context / "Dockerfile")
    (context / "image.json").write_text(json.dumps(asdict(facts), indent=2) + "\n")
    return facts


def github_output(facts: ImageFacts) -> str:
    """GitHub Actions step outputs: `version`, and multi-line `labels`, `build-args`."""
    lines = [f"version={facts.model_version}"]
    for key, values in (("labels", facts.labels()), ("build-args", facts.build_args())):
        lines += [f"{key}<<EOF", *(f"{k}={v}" for k, v in values.items()), "EOF"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tabular_mlops.cli.image", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    parser.add_argument("context", type=Path, help="the build context to write (new folder)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--github-output", type=Path, help="append step outputs to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        configure_tracking(config.tracking.profile)
        facts = write_context(args.model_uri, args.context, LoadPolicy.of(config))
    except UserInputError as error:
        logger.error("%s", error)
        return 2
    if args.github_output:
        with args.github_output.open("a") as output:
            output.write(github_output(facts))
    logger.info(
        "%s version %s (%s), checked: build context in %s",
        facts.model_name,
        facts.model_version,
        f"@{facts.model_alias}" if facts.model_alias else "by version",
        args.context,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
