"""The training loop: one compilation, exact data parallelism, exact resume, signals, divergence, bad input.

Runs `launch.py` in subprocesses where a real process boundary matters (SIGKILL, SIGTERM, exit messages, two
processes through jax.distributed); in-process otherwise. Everything uses configs/stage1.py:tiny.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from playmate_jax import configlib
from playmate_jax.train import checkpoint as ckpt_lib
from playmate_jax.train import mesh as mesh_lib
from playmate_jax.train.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "stage1.py") + ":tiny"


def tiny_config(**overrides):
  return configlib.apply_overrides(configlib.load_config(TINY), {k: str(v) for k, v in overrides.items()})


def launch(workdir, *args, devices=1, wait=True, env=None):
  """Runs launch.py with the tiny config on `devices` fake CPU devices."""
  env = dict(os.environ, **(env or {}))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={TINY}", f"--workdir={workdir}", *args]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def final_params(workdir):
  run = ckpt_lib.restore_run(workdir, ema=False)
  return run.params, run.step


def assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def wait_for(predicate, proc, timeout=300):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"process ended early: {proc.communicate()[1][-2000:]}")
    if time.time() - start > timeout:
      raise AssertionError("timed out")
    time.sleep(0.2)


def test_train_step_compiles_once_and_logs(tmp_path):
  trainer = Trainer(tiny_config(**{"train.num_steps": 12, "train.log_every": 3}), str(tmp_path))
  trainer.run()
  assert trainer.train_step._cache_size() == 1
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [3, 6, 9, 10, 12]  # log_every=3, plus the checkpoint at 10 and the end
  for key in ("loss", "loss_exp", "loss_pose", "grad_norm", "lr", "steps_per_s"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert rows[-1]["lr"] > 0
  evals = [json.loads(l) for l in open(tmp_path / "eval_metrics.jsonl")]
  assert evals[-1]["step"] == 12 and {"mouth_corr", "pose_std", "mouth_corr_no_audio"} <= set(evals[-1])
  assert (tmp_path / "eval" / "step_00000012.png").stat().st_size > 10_000
  assert os.listdir(tmp_path / "tensorboard" / "train")
  assert json.load(open(tmp_path / "config.json"))["model"]["dim"] == 32


def test_data_parallel_is_exact(tmp_path):
  """8 devices and 1 device, same global batch and seed: the same parameters after a few steps."""
  results = []
  for n in (1, 8):
    config = tiny_config(**{"train.num_steps": 4, "train.eval_every": 1000})
    trainer = Trainer(config, str(tmp_path / f"d{n}"), mesh=mesh_lib.make_mesh(jax.devices()[:n]))
    results.append(trainer.run()["params"])
  assert_trees_close(results[0], results[1], rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("first,second", [(8, 1), (1, 8)])
def test_checkpoint_resumes_on_another_device_count(tmp_path, first, second):
  """A run checkpointed on `first` devices and resumed on `second` ends where an uninterrupted run on `second`
  devices does (a checkpoint from N GPUs restores on 1 and the reverse; the loss continues from its step). The
  first segment stops at 6 steps through num_steps: the learning-rate schedule depends on num_steps, and its first
  6 steps (5 of warm-up, then the peak) are the same for 6 and for 12 steps; a stop at 4 would shorten warm-up."""
  def run(workdir, n, steps):
    config = tiny_config(**{"train.num_steps": steps, "train.ckpt_every": 6, "train.eval_every": 1000})
    return Trainer(config, str(workdir), mesh=mesh_lib.make_mesh(jax.devices()[:n])).run()["params"]

  straight = run(tmp_path / "straight", second, 12)
  run(tmp_path / "moved", first, 6)
  moved = run(tmp_path / "moved", second, 12)
  assert_trees_close(straight, moved, rtol=2e-4, atol=2e-6)
  assert final_params(tmp_path / "moved")[1] == 12
  steps_logged = [json.loads(l)["step"] for l in open(tmp_path / "moved" / "metrics.jsonl")]
  assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 12


def test_sigkill_resume_is_exact(tmp_path):
  """Killed with SIGKILL after the step-10 checkpoint, then rerun: the same parameters as one uninterrupted run."""
  steps = ["--config.train.num_steps=30", "--config.train.ckpt_every=10", "--config.train.eval_every=1000"]
  rc, _, err = launch(tmp_path / "straight", *steps)
  assert rc == 0, err[-3000:]
  proc = launch(tmp_path / "killed", *steps, wait=False)
  wait_for(lambda: os.path.isdir(tmp_path / "killed" / "checkpoints" / "10"), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  rc, _, err = launch(tmp_path / "killed", *steps)
  assert rc == 0, err[-3000:]
  (a, sa), (b, sb) = final_params(tmp_path / "straight"), final_params(tmp_path / "killed")
  assert sa == sb == 30
  assert_trees_close(a, b, rtol=0, atol=0)
  steps_logged = [json.loads(l)["step"] for l in open(tmp_path / "killed" / "metrics.jsonl")]
  assert steps_logged == sorted(set(steps_logged)), "a resumed run must not log a step twice"


def test_sigterm_saves_before_exit(tmp_path):
  proc = launch(tmp_path, "--config.train.num_steps=100000", "--config.train.ckpt_every=100000",
                "--config.train.log_every=1", wait=False)
  wait_for(lambda: os.path.exists(tmp_path / "metrics.jsonl") and os.path.getsize(tmp_path / "metrics.jsonl"), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert len(steps) == 1 and 0 < steps[0] < 100000
  assert "SIGTERM" in err


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  common = ["--config.train.ckpt_every=10", "--config.train.eval_every=1000"]
  rc, _, err = launch(tmp_path, "--config.train.num_steps=10", *common)
  assert rc == 0, err[-3000:]
  before = final_params(tmp_path)
  rc, _, err = launch(tmp_path, "--config.train.num_steps=40", "--config.optim.lr=1e30", "--config.optim.clip_norm=1e30",
                      *common)
  assert rc == 2
  assert "non-finite" in err and "Traceback" not in err
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [10]
  after = final_params(tmp_path)
  assert_trees_close(before[0], after[0], rtol=0, atol=0)


def test_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
  config = tiny_config(**{"train.num_steps": 20, "train.eval_every": 1000})
  Trainer(config, str(tmp_path)).run()
  state_dir = tmp_path / "checkpoints" / "20" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  trainer = Trainer(config, str(tmp_path))
  state = trainer.initial_state()
  assert int(state["step"]) == 10
  assert "unreadable" in caplog.text


@pytest.mark.parametrize("args, expected", [
    (["--config.train.bogus=1"], "Unknown config key train.bogus"),
    (["--config.data.batch_size=7"], "batch_size=7"),
    (["--config.model.dtype=float8"], "config.model.dtype"),
    (["--config.data.name=playmate_clips", "--config.data.data_dir=/nonexistent/data"], "/nonexistent/data"),
])
def test_user_errors_are_one_sentence(tmp_path, args, expected):
  rc, _, err = launch(tmp_path, *args, devices=8)
  assert rc == 2
  assert expected in err and "Traceback" not in err
  assert len(err.strip().splitlines()) == 1, err


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(tmp_path):
  """2 processes x 4 CPU devices through jax.distributed on loopback: trains and checkpoints (each its iterator)."""
  address = f"127.0.0.1:{_free_port()}"
  args = ["--config.train.num_steps=6", "--config.train.ckpt_every=3", "--config.train.eval_every=1000",
          f"--coordinator_address={address}", "--num_processes=2"]
  procs = [launch(tmp_path, *args, f"--process_id={i}", devices=4, wait=False) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  data_dir = tmp_path / "checkpoints" / "6" / "data"
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
  params, step = final_params(tmp_path)
  assert step == 6 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
