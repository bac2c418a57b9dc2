"""Thread counts from the cores a process may use, and OpenMP threads that do not spin."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tabular_mlops.core import resources
from tabular_mlops.core.pipeline import build_classifier, configured_threads
from tabular_mlops.core.resources import available_cores, cgroup_cpu_quota, plan_tuning_threads
from tabular_mlops.core.sections import ComputeConfig, ModelConfig
from tests.conftest import PROJECT_DIR


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5), ("junk", None)],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    assert cgroup_cpu_quota(v2_max=write(tmp_path / "cpu.max", cpu_max)) == quota


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    period = write(tmp_path / "period", "100000\n")
    limited = write(tmp_path / "quota", "200000\n")
    unlimited = write(tmp_path / "unlimited", "-1\n")
    assert cgroup_cpu_quota(v2_max=missing, v1_quota=limited, v1_period=period) == 2.0
    assert cgroup_cpu_quota(v2_max=missing, v1_quota=unlimited, v1_period=period) is None
    assert cgroup_cpu_quota(v2_max=missing, v1_quota=missing, v1_period=missing) is None


def test_available_cores_is_the_affinity_capped_by_the_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(resources, "cgroup_cpu_quota", lambda: None)
    assert available_cores() == 4
    monkeypatch.setattr(resources, "cgroup_cpu_quota", lambda: 1.5)
    assert available_cores() == 2
    monkeypatch.setattr(resources, "cgroup_cpu_quota", lambda: 0.2)
    assert available_cores() == 1


def test_compute_threads_default_to_the_available_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tabular_mlops.core.sections.available_cores", lambda: 3)
    assert ComputeConfig().resolved_threads() == 3
    assert ComputeConfig(threads=1).resolved_threads() == 1


@pytest.mark.parametrize(
    ("threads", "trials", "folds", "model_threads", "plan"),
    [
        (2, 1, 5, None, (1, 2, 1)),  # this machine: two folds at a time, one thread each
        (8, 1, 5, None, (1, 5, 1)),  # never more folds at once than there are folds
        (8, 2, 3, None, (2, 3, 1)),
        (2, 4, 5, None, (4, 1, 1)),  # more trials than threads: one fold, one thread each
        (8, 1, 5, 4, (1, 2, 4)),  # model.params.n_jobs=4 leaves room for two folds
        (2, 1, 5, 4, (1, 1, 4)),
    ],
)
def test_tuning_thread_plan(
    threads: int,
    trials: int,
    folds: int,
    model_threads: int | None,
    plan: tuple[int, int, int],
) -> None:
    got = plan_tuning_threads(threads, trials, folds, model_threads)
    assert (got.parallel_trials, got.parallel_folds, got.model_threads) == plan


def test_a_model_of_a_small_table_runs_lightgbm_on_one_thread() -> None:
    small, large = resources.PARALLEL_MODEL_ROWS - 1, resources.PARALLEL_MODEL_ROWS
    assert resources.model_threads(4, small) == 1
    assert resources.model_threads(4, large) == 4
    assert resources.model_threads(1, large) == 1


def test_lightgbm_threads_come_from_the_plan_unless_the_config_sets_them() -> None:
    assert build_classifier(ModelConfig(), seed=0, threads=3).n_jobs == 3
    for name in ("n_jobs", "num_threads", "nthread"):
        model = ModelConfig(params={name: 1})
        assert configured_threads(model) == 1
        classifier = build_classifier(model, seed=0, threads=3)
        assert classifier.get_params().get("n_jobs") != 3
        assert classifier.get_params()[name] == 1
    assert configured_threads(ModelConfig(params={"n_jobs": -1})) is None


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("active", "active")])
def test_openmp_waits_passively_unless_the_environment_says_otherwise(
    preset: str | None, expected: str
) -> None:
    # A fresh interpreter: OpenMP reads the variable when LightGBM loads it, so it must be
    # set by the time anything of the library has imported LightGBM.
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    script = (
        "import os, sys; import tabular_mlops.core.pipeline; "
        "print('lightgbm' in sys.modules, os.environ['OMP_WAIT_POLICY'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["True", expected]
