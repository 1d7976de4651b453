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


def run_benchmark(tmp_path, *args):
  out = tmp_path / "figures.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "pipelines/benchmark.py", *args, f"--json={out}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.load(open(out)), result.stdout


def test_render_benchmark_reports_figures(tmp_path):
  figures, stdout = run_benchmark(tmp_path, "render", "--renderer=random:tiny", "--batch-sizes=2", "--steps=2",
                                  "--parts")
  assert figures["image_size"] == 128  # tiny sizes on 64x64 crops: G doubles the 4x-down-sampled crop twice
  for name in ("fp32", "bf16"):
    assert figures[f"{name}_b2_wg_ms_per_frame"] > 0 and figures[f"{name}_b2_g_ms_per_frame"] > 0
  assert 20 < figures["b2_bf16_psnr_db"] < 200 and figures["b2_fp32_image_std"] > 0
  assert "bf16_b2_wg_ms_per_frame" in stdout
  assert figures["b2_wg_gflop_per_frame"] > 0 and figures["bf16_b2_W.mask_conv_ms_per_frame"] > 0


def test_audio_benchmark_reports_figures(tmp_path):
  figures, _ = run_benchmark(tmp_path, "audio", "--seconds=3", "--dtype=float32")
  assert figures["rows"] == 75 and figures["feature_dim"] == 768 and figures["finite"]
  assert abs(figures["realtime_factor"] - 3 / figures["wall_s"]) < 1e-6 * figures["realtime_factor"]
