"""CPU threads: how many this process may use, and OpenMP settings that share cores.

LightGBM runs on OpenMP. By default it takes every core, and its threads spin a while at
every barrier before they sleep. On a machine shared with another busy job, a spinning
thread burns the time slice that the thread it waits for needs. On 2 cores beside
another OpenMP job, five 4,500-row fits on 2 threads took 3.9x to 12.5x their idle time
with OpenMP's defaults, and 1.5x to 2.1x with threads that sleep at once
(`python -m bench.lifecycle --sections openmp`). So:

- OpenMP threads sleep while they wait (`OMP_WAIT_POLICY=PASSIVE`) unless the environment
  says otherwise. It costs small multi-threaded fits on an idle machine (1.6x on those
  fits), which tuning avoids by fitting on one thread per fold. OpenMP reads the setting
  once, when it loads, so `tabular_mlops/__init__.py` sets it before anything loads
  LightGBM.
- The thread count comes from the cores this process may actually run on: its CPU
  affinity, capped by a cgroup CPU quota (a container's `--cpus`). It does not come from
  the machine's core count. `compute.threads` in the config overrides it.
- A model trained on a small table runs LightGBM on one thread (`model_threads`): with
  threads that sleep while they wait, a second thread waits more than it works there.
  The shipped pipeline fit the shipped table's 5,634 training rows 6x faster on one
  thread than on two; from about 150,000 rows on, more threads finish sooner
  (`python -m bench.threads`).
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

# Environment defaults for OpenMP; a value already set in the environment wins.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}

_CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def share_cores_politely() -> None:
    """Make OpenMP threads sleep rather than spin while they wait. This only takes effect
    when it runs before an OpenMP library (LightGBM, scikit-learn's) is loaded."""
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by its cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))  # as joblib counts a fractional quota
    return max(1, cores)


def cgroup_cpu_quota(
    v2_max: Path = _CGROUP_V2_MAX,
    v1_quota: Path = _CGROUP_V1_QUOTA,
    v1_period: Path = _CGROUP_V1_PERIOD,
) -> float | None:
    """The CPU quota of this process's cgroup in cores (1.5: one and a half), or None when
    there is none (no limit, not Linux, or unreadable)."""
    try:
        if v2_max.is_file():
            quota, _, period = v2_max.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100_000)
        if v1_quota.is_file() and v1_period.is_file():
            quota_us = int(v1_quota.read_text())
            return None if quota_us <= 0 else quota_us / int(v1_period.read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


# Training rows from which a model's LightGBM uses every thread it is given.
PARALLEL_MODEL_ROWS = 150_000


def model_threads(threads: int, training_rows: int) -> int:
    """LightGBM threads of a model trained on `training_rows` rows (to fit, and to
    predict once logged), of the `threads` the step may use."""
    return threads if training_rows >= PARALLEL_MODEL_ROWS else 1


@dataclass(frozen=True)
class TuningThreads:
    """How a tuning run spreads its threads over trials run at once, folds run at once
    within a trial, and LightGBM threads per model."""

    parallel_trials: int
    parallel_folds: int
    model_threads: int


def plan_tuning_threads(
    threads: int, parallel_trials: int, folds: int, model_threads: int | None = None
) -> TuningThreads:
    """Split `threads` among the trials running at once, then among folds.

    Small models fit faster on one thread each, several at a time, than on several
    threads one at a time. Independent fits never wait for each other, and a model on
    one thread gives the same result on any machine. So folds run in parallel, one
    thread each. `model_threads` (the config's `model.params.n_jobs`) overrides it.
    """
    per_trial = max(1, threads // parallel_trials)
    if model_threads is None:
        parallel_folds = min(folds, per_trial)
        model_threads = max(1, per_trial // parallel_folds)
    else:
        parallel_folds = max(1, min(folds, per_trial // model_threads))
    return TuningThreads(parallel_trials, parallel_folds, model_threads)
