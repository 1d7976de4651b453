"""The training loop: one compilation, exact data parallelism, divergence, bad input, two processes (resuming is
in test_resume.py).

Runs `launch.py` in subprocesses where a real process boundary matters (exit messages, two processes through
jax.distributed); in-process otherwise. Everything uses configs/stage1.py:tiny.
"""

from __future__ import annotations

import json
import os
import socket
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tqdm import tqdm

from playmate_jax.train import mesh as mesh_lib
from playmate_jax.train.trainer import Trainer
from tests.trainutil import assert_trees_close, final_params, launch, tiny_config


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
  # The logged rate counts until the steps have finished, not until they were dispatched (which returns at once):
  # a "step" whose metrics take a slow program `busy` seconds to compute logs at most 1 / busy steps/s.
  slow = jax.jit(lambda x: {"loss": jax.lax.fori_loop(0, 80, lambda i, y: jnp.tanh(y @ y), x).sum(),
                            "finite": jnp.float32(1)})
  x = jnp.full((512, 512), 0.01)
  jax.block_until_ready(slow(x))  # compiled
  start = time.perf_counter()
  jax.block_until_ready(slow(x))
  busy = time.perf_counter() - start
  rows, since = [], time.perf_counter()
  pending = [slow(x)]
  trainer.writer = types.SimpleNamespace(write=lambda step, row: rows.append(row))
  done = trainer._flush(pending, 99, since, tqdm(disable=True))
  assert done - since >= 0.8 * busy > 0.02, (done - since, busy)
  assert rows[0]["steps_per_s"] == pytest.approx(1 / (done - since))


def test_data_parallel_is_exact(tmp_path):
  """8 devices and 1 device, same global batch and seed: the same parameters after a few steps."""
  results = []
  for n in (1, 8):
    config = tiny_config(**{"train.num_steps": 4, "train.eval_every": 1000})
    trainer = Trainer(config, str(tmp_path / f"d{n}"), mesh=mesh_lib.make_mesh(jax.devices()[:n]))
    results.append(trainer.run()["params"])
  assert_trees_close(results[0], results[1], rtol=2e-4, atol=2e-6)


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


def test_flat_optimizer_is_the_same_arithmetic():
  """optim.flatten runs clipping and Adam on one vector of all gradients: the same updates as per parameter array
  (the global norm summed in another order), with the moments stored as vectors."""
  import optax
  from playmate_jax.train import state as state_lib
  rng = np.random.default_rng(0)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)},
            "b": jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)}
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 3, jnp.float32), params) for _ in range(4)]
  results = {}
  for flat in (False, True):   # gradients large enough that clipping acts
    tx = state_lib.make_optimizer(tiny_config(**{"optim.flatten": flat, "optim.warmup_steps": 1}))
    p, opt = params, tx.init(params)
    for g in grads:
      updates, opt = tx.update(g, opt, p)
      p = optax.apply_updates(p, updates)
    results[flat] = p, opt
  assert_trees_close(results[False][0], results[True][0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(results[True][0]["b"], params["b"])
  flat_leaves = jax.tree.leaves(results[True][1])
  assert max(x.size for x in flat_leaves) == 8 * 5 + 5 + 3 * 4 * 2     # the moments are vectors of every parameter


def test_state_initialized_on_the_host_equals_the_mesh_one():
  """create_train_state(on_host=True), what the benchmarks use: the same values, replicated over the mesh."""
  from playmate_jax.train import state as state_lib
  from playmate_jax.train.trainer import build_components
  mesh = mesh_lib.make_mesh()
  parts = build_components(tiny_config(), mesh, 80)
  a, b = (state_lib.create_train_state(parts.model_fn, parts.tx, jax.random.key(0), mesh, parts.trainable,
                                       on_host=on_host) for on_host in (False, True))
  assert_trees_close(a, b, rtol=0, atol=0)
  assert all(x.sharding.is_equivalent_to(y.sharding, x.ndim) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert len(jax.tree.leaves(b)[0].sharding.device_set) == mesh.size > 1   # the suite's 8 fake devices
