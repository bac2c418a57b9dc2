"""`custom_model`'s checks: the wrapped model must give the same answers on its input
example loaded in this process, in a fresh Python process (its own `code/` only, this
project off the path) and in an isolated environment built from its requirements."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc.scoring_server import predictions_to_json

from tabular_mlops.core.errors import PromotionError
from tabular_mlops.core.names import Artifact, Tag
from tabular_mlops.mlflow.shipped_code import PACKAGE
from tabular_mlops.runtime.faults import FaultPoint, crash_if_injected

logger = logging.getLogger(__name__)

# Params every check predicts with: the reasons are part of what must match.
CHECK_PARAMS = {"explain": True}
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What the step tells each check process: its own pid, and the scratch folder it made for
# that check (the check's working directory).
_STEP_PID, _SCRATCH = "TABULAR_MLOPS_CHECK_STEP_PID", "TABULAR_MLOPS_CHECK_SCRATCH"
# Run first by each check's process. It runs without the cyclic collector: it lives for
# one prediction, and its imports (MLflow, the model's libraries) took 3.4 s of CPU
# instead of 4.3 s. And, as the leader of its own process group, on Linux: when
# the step that started it dies, even killed outright (an OOM kill runs no handler in the
# step), the check ends too, with every process it started (uv, the environment's Python),
# and removes the scratch folder the step made for it, which the step no longer will. It
# ends by an error: MLflow removes an environment it was building only then
# (mlflow.utils.file_utils.remove_on_error catches errors, not interrupts; checked on
# 3.17.2), and a half-built one would be reused as it is by every later check. The same on
# a stop the step passes on.
_CHECK_PRELUDE = (
    f"STEP_PID, SCRATCH = {_STEP_PID!r}, {_SCRATCH!r}"
    + """
import ctypes, gc, os, shutil, signal, sys
gc.disable()
class StepEnded(Exception):
    pass
def _end_with_the_step(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pid in [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]:
        try:
            if pid != os.getpid() and os.getpgid(pid) == os.getpgrp():
                os.kill(pid, signal.SIGKILL)
        except OSError:  # ended meanwhile
            pass
    if os.getppid() != _step:
        shutil.rmtree(_scratch, ignore_errors=True)
    raise StepEnded(f"the step that started this check ended ({signal.Signals(signum).name})")
_step, _scratch = int(os.environ.pop(STEP_PID)), os.environ.pop(SCRATCH)
if sys.platform == "linux":
    signal.signal(signal.SIGTERM, _end_with_the_step)
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != _step:
        os.kill(os.getpid(), signal.SIGTERM)
"""
)
# Run in a new interpreter, in an empty directory, with this project off sys.path: the
# model must load and predict from what it carries.
_FRESH_PROCESS_SCRIPT = (
    _CHECK_PRELUDE
    + """
import json, sys
from pathlib import Path
project = Path(sys.argv[3]).resolve()
sys.path = [p for p in sys.path if not p or Path(p).resolve() != project]
import mlflow
from mlflow.pyfunc.scoring_server import predictions_to_json
model = mlflow.pyfunc.load_model(sys.argv[1])
with open(sys.argv[2], "w") as output:
    predictions_to_json(model.predict(model.input_example, params=json.loads(sys.argv[4])), output)
package = sys.modules["tabular_custom_model"].__file__
leaked = sorted({m.split(".")[0] for m in sys.modules} & {"tabular_mlops", "steps"})
print(json.dumps({"package_file": package, "project_modules": leaked}))
"""
)

# `mlflow models predict` in a new environment built from the model's requirements. Unlike
# that command, which builds the environment afresh in a temporary directory on every call
# (20-30 s), MLflow's backend here keeps it under MLFLOW_ENV_ROOT (~/.mlflow/envs), keyed by
# the requirement lines: the wheel's version carries its content hash, so changed model code
# gets a new environment and unchanged code reuses its own.
_ISOLATED_ENV_SCRIPT = (
    _CHECK_PRELUDE
    + """
import sys
from mlflow.models.flavor_backend_registry import get_flavor_backend
model, env_manager, request, output = sys.argv[1:5]
backend = get_flavor_backend(model, env_manager=env_manager, install_mlflow=False)
backend.predict(model_uri=model, input_path=request, output_path=output, content_type="json")
"""
)


def check_answers(model_dir: Path, env_manager: str, timeout_seconds: float) -> None:
    """The model's answers on its input example, loaded in this process, in a fresh
    process and in an isolated environment, must be identical; logged to the run. The two
    other processes run at once, beside this one's prediction; one that has not answered
    within `timeout_seconds` is a failed check."""
    elsewhere: dict[str, Callable[[Path], dict[str, Any]]] = {
        "fresh_process": partial(predict_in_fresh_process, timeout_seconds=timeout_seconds)
    }
    if env_manager != "none":
        elsewhere[f"isolated_env_{env_manager}"] = partial(
            predict_in_isolated_env, env_manager=env_manager, timeout_seconds=timeout_seconds
        )
    else:
        logger.warning("isolated-environment check skipped (custom_model.check_env_manager)")
    with ThreadPoolExecutor(max_workers=len(elsewhere)) as pool:
        pending = {where: pool.submit(predict, model_dir) for where, predict in elsewhere.items()}
        expected = predict_in_process(model_dir)
        report = {"in_process": expected}
        for where, future in pending.items():
            try:
                report[where] = future.result()
            except RuntimeError as error:
                raise PromotionError(f"the model failed to predict in {where}: {error}") from None
    mlflow.log_dict(report, Artifact.CHECKS)
    for where, answer in report.items():
        if answer != expected:
            raise PromotionError(
                f"the model's answer in {where} differs from the in-process one "
                f"(see {Artifact.CHECKS})"
            )
    mlflow.set_tag(Tag.CHECKS, ", ".join(report))
    logger.info("identical answers: %s", ", ".join(report))


def predict_in_process(model_dir: Path) -> dict[str, Any]:
    """The model's answer on its own input example, as the scoring server writes it."""
    model = mlflow.pyfunc.load_model(str(model_dir))
    output = io.StringIO()
    predictions_to_json(model.predict(model.input_example, params=CHECK_PARAMS), output)
    return json.loads(output.getvalue())


def predict_in_fresh_process(model_dir: Path, timeout_seconds: float) -> dict[str, Any]:
    """The same, from a new Python process in an empty directory without this project on
    its path; fails if the model's code is not its own `code/` or imports the project."""
    with tempfile.TemporaryDirectory(prefix="fresh-process-") as scratch:
        output = Path(scratch) / "predictions.json"
        command = [sys.executable, "-I", "-c", _FRESH_PROCESS_SCRIPT]
        command += [str(model_dir), str(output), str(_PROJECT_ROOT), json.dumps(CHECK_PARAMS)]
        answered = _finish(_start(command, scratch), "a fresh python process", timeout_seconds)
        report = json.loads(answered.splitlines()[-1])
        code_dir = (model_dir / "code").resolve()
        if Path(report["package_file"]).resolve().parent.parent != code_dir:
            raise RuntimeError(f"{PACKAGE} was imported from {report['package_file']}")
        if report["project_modules"]:
            raise RuntimeError(f"the model imported this project: {report['project_modules']}")
        return json.loads(output.read_text())


def predict_in_isolated_env(
    model_dir: Path, env_manager: str, timeout_seconds: float
) -> dict[str, Any]:
    """The same, as `mlflow models predict` answers: in a new environment built from the
    model's requirements (which install its wheel from `code/`), cached between calls."""
    with tempfile.TemporaryDirectory(prefix="isolated-env-") as scratch:
        request, output = Path(scratch) / "request.json", Path(scratch) / "predictions.json"
        serving_example = json.loads((model_dir / "serving_input_example.json").read_text())
        request.write_text(json.dumps(serving_example | {"params": CHECK_PARAMS}))
        command = [sys.executable, "-c", _ISOLATED_ENV_SCRIPT, str(model_dir), env_manager]
        process = _start([*command, str(request), str(output)], scratch)
        crash_if_injected(FaultPoint.DURING_ISOLATED_CHECK)
        _finish(process, f"mlflow models predict --env-manager {env_manager}", timeout_seconds)
        return json.loads(output.read_text())


def _start(command: list[str], scratch: str) -> subprocess.Popen[str]:
    """`command` in its own process group, in the `scratch` folder made for it:
    `mlflow models predict` starts the model's environment's Python, which must not
    outlive a timeout."""
    # PYTHONPATH would put this project on the path. PYTHONDONTWRITEBYTECODE would make the
    # cached isolated environment (installed by uv without bytecode) compile every module
    # it imports on every check: 14 s a call instead of 9.
    dropped = {"PYTHONPATH", "PYTHONDONTWRITEBYTECODE"}
    environment = {key: value for key, value in os.environ.items() if key not in dropped}
    environment |= {_STEP_PID: str(os.getpid()), _SCRATCH: scratch}
    return subprocess.Popen(
        command,
        cwd=scratch,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen[str], label: str, timeout_seconds: float) -> str:
    """The process's output; a failure, or no answer within `timeout_seconds` (the process
    and every process it started are then killed), is a RuntimeError saying so."""
    try:
        stdout, stderr = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise RuntimeError(
            f"{label} did not answer within {timeout_seconds:g} s "
            "(custom_model.check_timeout_seconds)"
        ) from None
    except BaseException:  # interrupted (Ctrl-C in a notebook, say): the check goes too
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    if process.returncode != 0:
        logger.warning("%s", stderr[-3000:])  # the whole story; the error says the end
        lines = [line for line in stderr.splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {process.returncode}"
        raise RuntimeError(f"{label} failed: {last}")
    return stdout
