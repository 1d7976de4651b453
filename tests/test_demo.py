"""The README's demo command trains a model that measurably learns the audio-to-mouth rule of the demo data.

This is the slowest test (a few minutes on 2 CPU cores): it runs exactly what a new user runs.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_learns_mouth_from_audio(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "launch.py", "--config=configs/stage1.py:demo", f"--workdir={tmp_path}"]
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / "eval_metrics.jsonl")]
  final = rows[-1]
  assert final["step"] == 2000
  assert final["mouth_corr"] >= 0.8, rows                 # sampled mouth follows the held-out audio
  assert abs(final["mouth_corr_no_audio"]) < 0.2, rows    # and only because of the audio
  assert 0.3 < final["pose_std"] / final["pose_std_true"] < 3.0, rows  # head moves about as much as in the data
  assert rows[0]["mouth_corr"] < final["mouth_corr"]       # it improved with training
  assert (tmp_path / "eval" / "step_00002000.png").exists()
