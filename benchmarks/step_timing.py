"""Shared pieces of the training-step benchmarks: one subprocess per backend, interleaved steps.

Not a benchmark itself. Scripts next to it import it by name (``from step_timing import ...``):
``python benchmarks/<script>.py`` puts this folder first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")


def _json_rows(stdout):
    """The JSON objects of a child's stdout, one a line (other lines, and a line cut short by a
    killed child, are skipped)."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    rows = []
    for line in (stdout or "").splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def run_per_backend(script, backends, argv, deadline=None):
    """Run ``script`` once per backend, each in a fresh process with ``KERAS_BACKEND`` set.

    The child gets ``argv`` plus ``--child`` and must print one JSON object a line for its
    results (other output is ignored). Returns the parsed rows of all backends, in order.

    ``deadline`` (a ``time.time()`` value, optional): a child still running then is killed;
    the rows it printed before are kept, followed by ``{"backend": ..., "killed": reason}``,
    and backends not started by then get that row alone.

    Raises:
        RuntimeError: a child failed; names the backend and shows the end of its stderr.
    """
    rows = []
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        timeout = None if deadline is None else deadline - time.time()
        if timeout is not None and timeout <= 0:
            rows.append({"backend": backend, "killed": "not started: past the time limit"})
            continue
        try:
            out = subprocess.run(
                [sys.executable, script, *argv, "--child"], env=env, capture_output=True,
                text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as stopped:
            rows += _json_rows(stopped.stdout)
            rows.append({"backend": backend, "killed": f"stopped after {timeout:.0f} s: "
                                                       "the time limit"})
            continue
        if out.returncode != 0:
            raise RuntimeError(
                f"{os.path.basename(script)}: the {backend} run failed "
                f"(exit status {out.returncode}):\n{out.stderr[-3000:]}"
            )
        rows += _json_rows(out.stdout)
    return rows


def interleaved_steps(models, batches, steps, warmup, deadline=None):
    """Time ``train_on_batch`` of several models, their steps interleaved in this process.

    Args:
        models: dict name -> compiled model.
        batches: list of ``(x, y)``; step ``i`` of every model uses ``batches[i % len]``.
        steps: timed steps per model.
        warmup: untimed steps per model first (tracing, compilation, allocator warm-up).
        deadline: optional ``time.time()`` value: no new round of steps starts after it, so
            fewer than ``steps`` (possibly none) are returned.

    Step ``i`` runs the models in turn (A B C, then B C A, ...), so that load from other jobs
    on the machine and any position effect fall on all of them alike.

    Returns:
        dict name -> list of ``steps`` wall-clock seconds, and ``"<name>_cpu"`` -> the process
        CPU seconds of the same steps.
    """
    names = list(models)
    for i in range(warmup):
        for name in names:
            models[name].train_on_batch(*batches[i % len(batches)])
    times = {name: [] for name in names}
    times.update({f"{name}_cpu": [] for name in names})
    for i in range(steps):
        if deadline is not None and time.time() > deadline:
            break
        shift = i % len(names)
        x, y = batches[i % len(batches)]
        for name in names[shift:] + names[:shift]:
            start, cpu_start = time.perf_counter(), time.process_time()
            models[name].train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
            times[f"{name}_cpu"].append(time.process_time() - cpu_start)
    return times


def spread(seconds):
    """Median, min, max and quartiles of a list of durations, in ms (1 decimal)."""
    import numpy as np

    values = 1000 * np.asarray(seconds, dtype=float)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {name: round(float(v), 1) for name, v in
            [("median_ms", median), ("min_ms", values.min()), ("max_ms", values.max()),
             ("q1_ms", q1), ("q3_ms", q3)]}
