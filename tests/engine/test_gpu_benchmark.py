"""benchmarks/gpu.py runs here too, at small sizes on the CPU: the GPU measurements' code stays working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_on_a_cpu_at_small_sizes():
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--batch", "2"],
                         capture_output=True, text=True, timeout=600, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows[0] == {"device": "cpu", "torch": rows[0]["torch"], "small": True, "renderer": "tiles",
                       "cudnn_benchmark": False, "autocast": "off", "prepare_threads": rows[0]["prepare_threads"],
                       "shrink_share": 0.5, "switch_interval": 0.005}
    single = [r for r in rows if r.get("bench") == "single"]
    assert [r["encoder"] for r in single] == ["lite0", "tiny CLIP ResNet (random weights)"]
    assert all(r["iterations"] == 2 and r["seconds"] > 0 for r in single)
    [seeds] = [r for r in rows if r.get("bench") == "seeds"]
    # On a CPU the seeds run together give what they give one after another.
    assert seeds["iterations"] == 4 and seeds["best_seed"] == seeds["one_after_another_best_seed"]
    assert seeds["loss"] == pytest.approx(seeds["one_after_another_loss"], rel=1e-3)
    service = [r for r in rows if r.get("bench") == "service"]
    # On a CPU the service prepares each batch when it takes it (see the worker's prefetch).
    assert [(r["batch"], r["succeeded"], r["prefetch"]) for r in service] == [(2, 2, False), (1, 2, False)]
    # They ran the tiny CLIP, and say so (they said clip:RN101).
    assert seeds["encoder"] == "tiny CLIP ResNet (random weights)" and {r["encoder"] for r in service} == {seeds["encoder"]}


def test_precision_compares_the_lower_dtype_in_float32():
    """--autocast bf16 measures what the lower dtype does to the sketches, by their loss in float32."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--autocast", "bf16",
                          "--only", "precision"], capture_output=True, text=True, timeout=600, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["autocast"] == "torch.bfloat16"
    [precision] = rows[1:]
    assert precision["sketches"] == 2 and set(precision["seconds"]) == {"float32", "torch.bfloat16"}
    means = precision["float32_loss_mean"]
    # The same photos and seeds, 2 iterations: the dtypes' sketches barely differ, and their paired
    # difference is the difference of the means.
    assert precision["paired_difference"] == pytest.approx(means["torch.bfloat16"] - means["float32"], abs=2e-4)
    assert abs(precision["paired_difference"]) < 0.05 * means["float32"]
