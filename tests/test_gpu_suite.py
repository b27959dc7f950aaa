"""benchmarks/gpu_suite.py --smoke: every measurement of the GPU suite runs and reports figures.

Runs the script as a user would (a subprocess, on this session's ``KERAS_BACKEND``), on the tiny
stack; a CPU is enough (the suite then labels its figures as CPU figures).
"""

import json
import math
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
MEASUREMENTS = ["weight_regularizer", "activity_regularizer", "gradnap", "training_throughput"]


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_the_smoke_run_reports_every_measurement(tmp_path):
    backend = os.environ.get("KERAS_BACKEND", "jax")
    out = tmp_path / "suite.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--backends", backend, "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["measurement"] for r in rows] == MEASUREMENTS, report["notes"]
    for row in rows:
        assert row["backend"] == backend
        assert "skipped" not in row, row["skipped"]
        assert row["device"] and row["device_type"] in ("cpu", "gpu")
        assert row["rounds"] == 2
        sides = ["baseline_ms"] + (["measured_ms"] if "measured_ms" in row else [])
        for side in sides:
            figures = row[side]
            assert all(_positive(figures[key]) for key in
                       ("median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms")), (row, side)
            assert figures["min_ms"] <= figures["median_ms"] <= figures["max_ms"]
    ratios = {r["measurement"]: r for r in rows if r["measurement"] != "training_throughput"}
    for row in ratios.values():
        assert _positive(row["wall_ratio"]) and _positive(row["cpu_ratio"]), row
    throughput = rows[-1]
    assert _positive(throughput["utterances_per_s"])
    assert all(_positive(v) for v in throughput["utterances_per_s_range"])
    # The markdown table has a line per measurement, and the notes say what kind of run it was.
    table = [line for line in done.stdout.splitlines() if line.startswith(f"| {backend} ")]
    assert [line.split(" | ")[2] for line in table] == MEASUREMENTS
    assert "Smoke run" in done.stdout
    if any(r["device_type"] == "cpu" for r in rows):
        assert "No GPU found" in done.stdout and "(CPU figures)" in done.stdout
        assert report["gpu_found"] is False
