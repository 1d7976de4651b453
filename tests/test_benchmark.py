"""pipelines/benchmark.py: every part runs on the CPU and reports real, mutually consistent figures."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def run_benchmark(tmp_path, *args, env=None, check=True):
  out = tmp_path / "figures.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  result = subprocess.run([sys.executable, "pipelines/benchmark.py", *args, f"--json={out}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  if not check:
    return result
  assert result.returncode == 0, result.stderr[-3000:]
  return json.load(open(out)), result.stdout


def dit_forward_flops(config, audio_dim: int) -> float:
  """2 x the multiply-adds of one MotionDiT forward on one sample, from its layer sizes (generator/dit.py)."""
  m, d = config.model, config.model.dim
  l, k, c = config.data.window, config.data.prev_frames, config.data.audio_context
  n, hidden = k + l, int(d * m.mlp_ratio)
  # Per Conformer block: qkv, out, pw_in, pw_out, feed-forward and depthwise conv per token, attention, adaLN.
  block = n * (7 * d * d + 2 * d * hidden + d * m.conv_kernel) + 2 * n * n * d + 9 * d * d
  # Token embeddings (motion, previous motion, audio conv + projection), conditioning, final adaLN.
  embed = n * 69 * d + l * (2 * c + 1) * audio_dim * d + l * d * d + (256 + d + 132) * d + 2 * d * d
  heads = l * (2 * d * m.head_hidden + m.head_hidden * 69)
  return 2.0 * (m.depth * block + embed + heads)


def close(a, b, rel=1e-6):
  return abs(a - b) <= rel * abs(b)


def test_all_benchmark_tiny(tmp_path):
  from playmate_jax import configlib
  config = configlib.load_config(os.path.join(ROOT, "configs/stage1.py:tiny"))
  figures, stdout = run_benchmark(tmp_path, "all", "--config=configs/stage1.py:tiny", "--parts", env=TWO_DEVICES)
  assert set(figures) == {"train", "sample", "render", "audio", "data"}
  for line in ("train.mfu", "train.step_ms_median", "samples/s", "sample.realtime_factor", "data.batches_per_s"):
    assert line in stdout

  t, b = figures["train"], config.data.batch_size
  assert t["num_devices"] == 2 and t["batch_size"] == b and t["params"] == 89381 and t["loss_finite"]
  assert 0 < t["step_ms_min"] <= t["step_ms_median"] <= t["step_ms_max"] and t["step_ms_iqr"] >= 0
  step_s = t["step_ms_median"] / 1e3
  assert close(t["samples_per_s"], b / step_s) and close(t["steps_per_s"], 1 / step_s)
  assert close(t["samples_per_s_per_device"], t["samples_per_s"] / 2)
  assert t["compile_s"] > 0 and t["peak_memory_gib"] is None  # the CPU reports no memory statistics
  # Forward + backward on the jaxpr: the backward pass costs twice the forward, less the input gradients of the
  # layers that read the data; the optimizer does no matmuls.
  forward = b * dit_forward_flops(config, config.audio.n_mels)
  assert 2.5 * forward < t["flops_per_step"] <= 3.0 * forward
  assert 0.3 < t["flops_per_step"] / (2 * t["xla_flops_per_step_per_device"]) < 1.5  # XLA adds elementwise work
  assert close(t["tflops_per_s"], t["flops_per_step"] / step_s / 1e12)
  assert t["peak_matmul_size"] == 1024 and t["peak_tflops_measured"] > 0
  assert 0 < t["mfu"] < 1 and close(t["mfu"], t["tflops_per_s"] / (2 * t["peak_tflops_measured"]))

  d = figures["data"]
  assert d["dataset"] == "demo" and d["batches"] == 50 and d["batches_per_s"] > 0
  assert 0 < d["batch_ms_min"] <= d["batch_ms_median"] <= d["batch_ms_max"]
  assert close(d["samples_per_s"], b * d["batches_per_s"])
  assert t["loader_samples_per_s"] == d["samples_per_s"] and "loader_skipped" not in t
  assert close(t["loader_headroom"], d["samples_per_s"] / t["samples_per_s"])

  s = figures["sample"]
  assert s["audio_seconds"] == 4 and s["frames"] == 100 and s["windows"] == math.ceil(100 / config.data.window)
  assert s["ddim_steps"] == config.sample.ddim_steps and s["guidance"] == "audio" and s["finite"]
  assert 0 < s["wall_s_min"] <= s["wall_s"] <= s["wall_s_max"] and s["compile_s"] > 0
  assert close(s["realtime_factor"], 4 / s["wall_s"]) and close(s["frames_per_s"], 100 / s["wall_s"])
  # Each DDIM step evaluates the model once on the doubled (audio CFG) batch.
  expected = config.sample.ddim_steps * 2 * dit_forward_flops(config, config.audio.n_mels)
  assert close(s["flops_per_window"], expected, rel=0.05)

  r = figures["render"]  # tiny sizes on 64x64 crops: G doubles the 4x-down-sampled crop twice
  assert r["renderer"] == "random:tiny" and r["image_size"] == 128 and r["b2_wg_gflop_per_frame"] > 0
  assert 0 < r["bf16_b2_wg_memory_gib"] < r["fp32_b2_wg_memory_gib"]   # XLA's buffers for the program, bf16 smaller
  for name in ("fp32", "bf16"):
    assert r[f"{name}_b2_wg_ms_per_frame"] > 0 and r[f"{name}_b2_g_ms_per_frame"] > 0
  assert 20 < r["b2_bf16_psnr_db"] < 200 and r["b2_fp32_image_std"] > 0
  assert "render.bf16_b2_wg_ms_per_frame" in stdout and r["bf16_b2_W.mask_conv_ms_per_frame"] > 0  # --parts

  a = figures["audio"]
  assert a["audio_seconds"] == 2 and a["rows"] == 50 and a["feature_dim"] == 768 and a["finite"]
  assert a["dtype"] == "float32"
  assert close(a["realtime_factor"], 2 / a["wall_s"]) and a["wall_s_min"] <= a["wall_s"] <= a["wall_s_max"]


def test_stage2_train_benchmark_without_dataset(tmp_path):
  """Stage 2 times the controller's training beside the frozen part; with no dataset the loader is skipped."""
  figures, stdout = run_benchmark(tmp_path, "train", "--config=configs/stage2.py:tiny",
                                  "--config.data.name=playmate_clips", "--steps=3", env=TWO_DEVICES)
  assert figures["stage"] == 2 and figures["num_devices"] == 2 and figures["loss_finite"]
  assert 0 < figures["params"] < 89381  # the emotion controller alone
  assert 0 < figures["step_ms_min"] <= figures["step_ms_median"] <= figures["step_ms_max"]
  assert close(figures["samples_per_s"], 8 / (figures["step_ms_median"] / 1e3))
  assert figures["flops_per_step"] > 0 and 0 < figures["mfu"] < 1
  assert figures["loader_samples_per_s"] is None and figures["loader_headroom"] is None
  assert "data_dir" in figures["loader_skipped"] and "loader_skipped" in stdout


def test_train_variants_timed_in_one_process(tmp_path):
  """--variant: the base and each variant are built, compiled and timed in turns in one process; each has its own
  figures (the one that trains 512 windows a step has twice the FLOPs), and a table compares them."""
  figures, stdout = run_benchmark(tmp_path, "train", "--config=configs/stage1.py:tiny", "--steps=5",
                                  "--variant", "rb:model.residual_dtype=bfloat16,model.dropout_bits=8",
                                  "--variant", "b16:data.batch_size=16,optim.flatten=true",
                                  "--variant", "remat:model.remat=true")
  assert list(figures) == ["base", "rb", "b16", "remat"]
  assert figures["rb"]["residual_dtype"] == "bfloat16" and figures["rb"]["dropout_bits"] == 8
  assert all(f["loss_finite"] and f["step_ms_median"] > 0 for f in figures.values())
  assert figures["b16"]["batch_size"] == 2 * figures["base"]["batch_size"]
  assert close(figures["b16"]["flops_per_step"], 2 * figures["base"]["flops_per_step"], 1e-3)
  assert figures["remat"]["flops_per_step"] == figures["base"]["flops_per_step"]   # recomputation is not counted
  table = stdout[stdout.index("variant "):].splitlines()
  assert [row.split()[0] for row in table[1:5]] == ["base", "rb", "b16", "remat"]
  assert table[1].split()[3] == "1.000"                                             # base against itself
  bad = run_benchmark(tmp_path, "train", "--config=configs/stage1.py:tiny", "--variant", "nocolon", check=False)
  assert bad.returncode == 2 and "NAME:KEY=VALUE" in bad.stderr and bad.stderr.count("\n") == 1


def test_memory_benchmark_runs_both_commands(tmp_path):
  """`memory`: animate.py and reenact.py on generated inputs, each in its own process; a CPU reports no memory, so
  each runs once, unlimited, with the render batch for an unknown memory (16) and its frames and times."""
  figures, stdout = run_benchmark(tmp_path, "memory", "--checkpoint", "random:configs/stage2.py:tiny",
                                  "--renderer", "random:tiny", "--seconds", "2")
  assert figures["device_memory_gib"] is None
  for name in ("animate", "reenact"):
    assert figures[f"{name}_unlimited_status"] == 0, figures
    assert figures[f"{name}_unlimited_frames"] == 50 and figures[f"{name}_unlimited_render_batch"] == 16
    assert figures[f"{name}_unlimited_wall_s"] > 0
  assert figures["animate_unlimited_render_frames_per_s"] > 0
  assert "animate_unlimited_render_batch" in stdout


def test_data_benchmark_without_dataset_fails_clearly(tmp_path):
  result = run_benchmark(tmp_path, "data", "--config=configs/stage1.py", check=False)
  assert result.returncode == 2
  assert result.stderr.startswith("error: config.data.data_dir is empty") and result.stderr.count("\n") == 1


def load_benchmark():
  spec = importlib.util.spec_from_file_location("_benchmark", os.path.join(ROOT, "pipelines", "benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name, unit", [("train.step_ms_median", "ms"), ("samples_per_s", "samples/s"),
                                        ("train.mfu", "of peak"), ("b2_wg_gflop_per_frame", "GFLOP/frame"),
                                        ("fp32_b2_wg_ms_per_frame_iqr", "ms/frame"), ("compile_s", "s")])
def test_units(name, unit):
  assert load_benchmark().unit(name) == unit


def test_matmul_flops_counts_inside_sub_jaxprs():
  import jax
  import jax.numpy as jnp
  one = 2 * 8 ** 3  # one 8x8 @ 8x8 product
  square = jax.custom_vjp(lambda a: a @ a)
  square.defvjp(lambda a: (a @ a, a), lambda a, g: (g @ a.T + a.T @ g,))

  def f(x):
    x = jax.jit(jax.checkpoint(lambda a: a @ a))(x)                         # jit, remat: once
    x = jax.lax.fori_loop(0, 3, lambda i, a: a @ a, x)                      # scan: 3 times
    x = jax.lax.cond(x.sum() > 0, lambda a: a @ a @ a, lambda a: a, x)      # cond: the costlier branch
    return square(x)                                                        # custom_vjp: once

  flops = load_benchmark().matmul_flops
  x = jnp.ones((8, 8))
  assert flops(f, x) == 7 * one
  assert flops(jax.grad(lambda a: f(a).sum()), x) > 14 * one  # forward plus backward


def test_serve_benchmark_on_tiny_models(tmp_path):
  """`serve`: the service's start-up, one job's first fragment and finished video, jobs batched together, and the
  motion per recording at each batch size, with random tiny models."""
  figures, _ = run_benchmark(tmp_path, "serve", "--config=configs/stage2.py:tiny", "--renderer", "random:tiny",
                             "--seconds", "2", "--jobs", "2", "--max-batch", "2")
  assert figures["frames"] == 50 and figures["jobs"] == 2 and figures["together_batches"] == 2
  assert 0 < figures["first_fragment_s"] <= figures["job_s"]
  assert figures["motion_per_recording_batch1_s"] > 0 and figures["motion_per_recording_batch2_s"] > 0
