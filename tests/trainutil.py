"""Helpers of the training tests (test_train.py, test_resume.py): the tiny config, launch.py in a subprocess,
a run's final parameters."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import chex
import jax

from playmate_jax import configlib
from playmate_jax import run as run_lib

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
  run = run_lib.restore_run(workdir, ema=False)
  return run.params, run.step


def assert_trees_close(a, b, **tol):
  """Same structure, leaves equal within rtol/atol (chex: the structure is compared too)."""
  chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), **tol)


def wait_for(predicate, proc, timeout=300):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"process ended early: {proc.communicate()[1][-2000:]}")
    if time.time() - start > timeout:
      raise AssertionError("timed out")
    time.sleep(0.2)
