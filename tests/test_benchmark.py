"""pipelines/benchmark.py: the train-step benchmark runs on the CPU and reports real figures."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_benchmark_reports_figures(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  out = tmp_path / "train.json"
  cmd = [sys.executable, "pipelines/benchmark.py", "train", "--config=configs/stage1.py:tiny", "--steps=3",
         f"--json={out}"]
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.load(open(out))
  assert figures["num_devices"] == 2 and figures["params"] == 89381 and figures["loss_finite"]
  assert 0 < figures["step_ms_min"] <= figures["step_ms_median"] <= figures["step_ms_max"]
  assert abs(figures["samples_per_s"] - 8 / (figures["step_ms_median"] / 1e3)) < 1e-6 * figures["samples_per_s"]
  assert "step_ms_median" in result.stdout
