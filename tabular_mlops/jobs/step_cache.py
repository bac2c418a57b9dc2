"""How `main` runs its steps, as child runs, and the step cache that skips work already done.

Under `--env-manager local`, a step runs inside `main`'s process: MLflow's projects code
creates its child run (the tags and parameters `mlflow run` gives it) and the entry point's
MLproject command line goes to the step's `main(argv)`. Each step thus saves the start-up of
a new Python process (imports, store, MLflow's package scan: about 6 s). Under uv,
virtualenv or conda, each step runs in its own environment through `mlflow.run`.

A step's run is reused when an earlier FINISHED run of the same entry point has the same
cache key: a digest of the step's parameters normalised by their types, the git commit
(a tree with uncommitted changes is never cached), the config file's bytes, the dataset
digest and the run ids of the upstream steps the step consumed. The key is a tag on the
run, found with one server-side `search_runs` filter. A run that left an alias on a
version (`register`, `custom_model`) is reused only while the alias still points there.
"""

import hashlib
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import ExecutionException
from mlflow.projects.utils import get_or_create_run, get_run_env_vars, load_project
from mlflow.utils.mlflow_tags import (
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
)

from tabular_mlops.core.config import ProjectConfig
from tabular_mlops.core.errors import StepFailedError
from tabular_mlops.core.names import Status, Tag
from tabular_mlops.jobs.entry_points import EntryPoint
from tabular_mlops.mlflow import registry, runs
from tabular_mlops.runtime import interrupts

logger = logging.getLogger(__name__)

LOCAL_ENV_MANAGER = "local"


def canonical(value: Any) -> str:
    """A parameter value as one string per meaning: 5, 5.0 and "5" (parsed as a number)
    are all "5"; True is "true"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class ChainContext:
    """What every step of one `main` run shares."""

    project_dir: Path
    experiment_id: str
    env_manager: str  # the one `main` runs under: its steps run under it too
    git_commit: str | None  # None: uncommitted changes or no git, so nothing is cached
    config_sha256: str
    dataset_digest: str
    force: bool = False


@dataclass(frozen=True)
class StepCall:
    """One entry point with its typed parameters (None: unset) and the upstream runs whose
    outputs it consumes (step name -> run id)."""

    entry_point: str
    parameters: Mapping[str, Any]
    upstream: Mapping[str, str] = field(default_factory=dict)

    def arguments(self) -> dict[str, str]:
        """The `-P` values: set parameters only, normalised."""
        return {
            name: canonical(value) for name, value in self.parameters.items() if value is not None
        }


@dataclass(frozen=True)
class StepRun:
    entry_point: str
    run: Run
    reused: bool
    seconds: float

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def cache_key(call: StepCall, context: ChainContext) -> str | None:
    """The step's cache key, or None when its runs must not be cached (uncommitted code)."""
    if context.git_commit is None:
        return None
    content = {
        "entry_point": call.entry_point,
        "parameters": call.arguments(),
        "upstream": dict(call.upstream),
        "git_commit": context.git_commit,
        "config_sha256": context.config_sha256,
        "dataset_digest": context.dataset_digest,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def find_reusable(call: StepCall, key: str, experiment_id: str) -> Run | None:
    """The newest FINISHED run of the step with this key, if its outputs still stand."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=(
            f"tags.{Tag.CACHE_KEY} = '{key}' AND attributes.status = '{Status.FINISHED}' "
            f"AND tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = '{call.entry_point}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        return None
    if not registry.alias_still_at(runs[0]):
        logger.info(
            "%s: run %s has the same key, but alias %r of its model moved since: rerunning",
            call.entry_point,
            runs[0].info.run_id,
            runs[0].data.tags[Tag.CHAMPION_ALIAS],
        )
        return None
    return runs[0]


Launcher = Callable[[StepCall, ChainContext], str]
# An entry point's module (`steps.track`) -> its main(argv), which returns an exit code.
StepMains = Mapping[str, Callable[[list[str]], int]]


def launch(call: StepCall, context: ChainContext) -> str:
    """Run the entry point with `mlflow.run` as a child of the active run; its run id.
    A failed step raises StepFailedError with the reason the step recorded."""
    try:
        submitted = mlflow.projects.run(
            uri=str(context.project_dir),
            entry_point=call.entry_point,
            parameters=call.arguments(),
            experiment_id=context.experiment_id,
            env_manager=context.env_manager,
            run_name=call.entry_point,
            synchronous=True,
        )
    except ExecutionException as error:
        raise StepFailedError(_failure(call.entry_point, context, error)) from None
    return submitted.run_id


def in_process_launcher(mains: StepMains) -> Launcher:
    """A launcher that runs each step in this process (for `--env-manager local`), as
    `mlflow run` would in a new one: same child run, tags, parameters, command line,
    working directory and MLFLOW_* variables."""

    def launch_here(call: StepCall, context: ChainContext) -> str:
        project = load_project(str(context.project_dir))
        parameters = call.arguments()
        run = get_or_create_run(
            None,
            str(context.project_dir),
            context.experiment_id,
            str(context.project_dir),
            None,
            call.entry_point,
            parameters,
        )
        run_id = run.info.run_id
        command = project.get_entry_point(call.entry_point).compute_command(parameters, None)
        python, flag, module, *argv = shlex.split(command)
        if (python, flag) != ("python", "-m") or module not in mains:
            raise StepFailedError(
                f"step {call.entry_point}: cannot run {command!r} in process "
                f"(expected python -m one of {', '.join(mains)})"
            )
        with (
            interrupts.run_ends_killed(run_id),
            _step_environment(context.project_dir, get_run_env_vars(run_id, context.experiment_id)),
        ):
            code = _exit_code(mains[module], argv)
        mlflow.MlflowClient().set_terminated(
            run_id, Status.FINISHED if code == 0 else Status.FAILED
        )
        if code != 0:
            error = ExecutionException(f"Run (ID '{run_id}') failed")
            raise StepFailedError(_failure(call.entry_point, context, error))
        return run_id

    return launch_here


def launcher_for(env_manager: str, mains: StepMains) -> Launcher:
    """In this process under the local env manager; through `mlflow.run` otherwise."""
    return in_process_launcher(mains) if env_manager == LOCAL_ENV_MANAGER else launch


def _exit_code(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """What the step's process would exit with; its traceback, if any, is logged."""
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse refusing a parameter
        return exit_.code if isinstance(exit_.code, int) else 1
    except Exception:
        logger.exception("the step raised")
        return 1


@contextmanager
def _step_environment(directory: Path, variables: Mapping[str, str]) -> Iterator[None]:
    """The working directory and environment variables `mlflow run` gives a step's
    process, restored afterwards."""
    saved = {name: os.environ.get(name) for name in variables}
    previous = Path.cwd()
    os.environ.update(variables)
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_step(
    call: StepCall, context: ChainContext, launcher: Launcher = launch, label: str = ""
) -> StepRun:
    """Reuse the step's earlier run when the cache allows, else run it (and key its run)."""
    label = label or call.entry_point
    key = cache_key(call, context)
    if key is not None and not context.force:
        started = time.monotonic()
        if (run := find_reusable(call, key, context.experiment_id)) is not None:
            logger.info("%s: same inputs as run %s (key %s)", label, run.info.run_id, key[:12])
            return StepRun(call.entry_point, run, reused=True, seconds=time.monotonic() - started)
    logger.info("%s: running (env manager %s)", label, context.env_manager)
    started = time.monotonic()
    run_id = launcher(call, context)
    seconds = time.monotonic() - started
    client = mlflow.MlflowClient()
    for step, upstream_run_id in call.upstream.items():
        client.set_tag(run_id, f"{Tag.UPSTREAM_PREFIX}{step}", upstream_run_id)
    if key is not None:  # only a finished run gets a key: a failed one raised above
        client.set_tag(run_id, Tag.CACHE_KEY, key)
    return StepRun(call.entry_point, client.get_run(run_id), reused=False, seconds=seconds)


def key_run_alone(entry: EntryPoint, config: ProjectConfig, dataset_digest: str) -> None:
    """Give the active run, a step with no upstream step (train_basic) run on its own, the
    cache key `main` would give it, so that a later `main` with the same inputs reuses it
    instead of registering an identical version. Not for a run `main` started (it keys its
    own), nor on uncommitted code."""
    run = mlflow.active_run()
    if run is None or MLFLOW_PARENT_RUN_ID in run.data.tags:
        return
    git = runs.git_tags(Path.cwd())
    if not git or git[Tag.GIT_DIRTY] == "true":
        return
    given = {
        parameter: config.overrides[key]
        for parameter, key in entry.overrides().items()
        if key in config.overrides
    }
    context = ChainContext(
        project_dir=Path.cwd(),
        experiment_id=run.info.experiment_id,
        env_manager=LOCAL_ENV_MANAGER,  # not part of the key
        git_commit=git[Tag.GIT_COMMIT],
        config_sha256=file_sha256(config.source),
        dataset_digest=dataset_digest,
    )
    call = StepCall(entry.name, {"config": config.source} | given)
    if key := cache_key(call, context):
        mlflow.set_tag(Tag.CACHE_KEY, key)


def env_manager_of(run: Run) -> str:
    """The environment manager `mlflow run` started `run` with: MLflow tags the run with
    it for uv, virtualenv and conda, and not at all for local."""
    return run.data.tags.get(MLFLOW_PROJECT_ENV, LOCAL_ENV_MANAGER)


def clean_commit(project_dir: Path) -> str | None:
    """HEAD of the project's git checkout; None if it has uncommitted changes or no git."""
    tags = runs.git_tags(project_dir)
    if not tags:
        logger.warning("%s is not a git checkout: no step is cached or reused", project_dir)
        return None
    if tags[Tag.GIT_DIRTY] == "true":
        logger.warning("uncommitted changes in %s: no step is cached or reused", project_dir)
        return None
    return tags[Tag.GIT_COMMIT]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _failure(entry_point: str, context: ChainContext, error: ExecutionException) -> str:
    """'step <name> failed (run <id>): <reason>', the reason from the run's `error` tag."""
    found = mlflow.search_runs(
        experiment_ids=[context.experiment_id],
        filter_string=(
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{runs.active_run_id()}' "
            f"AND tags.`{MLFLOW_PROJECT_ENTRY_POINT}` = '{entry_point}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not found:
        return f"step {entry_point} failed: {error}"
    reason = found[0].data.tags.get(Tag.ERROR, "it recorded no reason; see its output above")
    return f"step {entry_point} failed (run {found[0].info.run_id}): {reason}"
