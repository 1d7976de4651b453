"""The one training loop every config reuses.

Trainer(config, workdir).run() trains on a mesh over every device of every process, resumes from the newest
readable checkpoint in `workdir/checkpoints`, logs to `metrics.jsonl` and TensorBoard, evaluates on the held-out
split (`eval_metrics.jsonl`, `eval/step_N.png`), saves a checkpoint every `train.ckpt_every` steps, at the end,
and on SIGTERM / Ctrl-C, and stops with a clear message on a non-finite loss without saving the bad state.

Stage 1 (config.stage = 1) trains the whole motion DiT. Stage 2 trains only the emotion controller: a fresh run
restores the stage-1 EMA weights from config.init_from into the state's 'frozen' part, where they stay bit for bit
(no gradient, optimizer state or EMA exists for them), and every stage-2 checkpoint carries them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from playmate_jax import configlib, generator
from playmate_jax import run as run_lib
from playmate_jax.data import loader
from playmate_jax.data import stats as stats_lib
from playmate_jax.errors import UserError
from playmate_jax.generator.factory import model_factory, model_graphdef
from playmate_jax.train import checkpoint as ckpt_lib
from playmate_jax.train import evaluate as eval_lib
from playmate_jax.train import mesh as mesh_lib
from playmate_jax.train import metrics as metrics_lib
from playmate_jax.train import state as state_lib
from playmate_jax.train import step as step_lib

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
  """The loss or the gradient became non-finite."""


# Settings that stage 2 must share with the stage-1 run it starts from.
STAGE1_SETTINGS = ("model.dim", "model.depth", "model.num_heads", "model.mlp_ratio", "model.conv_kernel",
                   "model.head_hidden", "data.prev_frames", "data.audio_context", "audio.encoder",
                   "diffusion.num_timesteps", "diffusion.schedule", "diffusion.beta_start", "diffusion.beta_end")


def trainable_params(config: ml_collections.ConfigDict) -> tuple[str, ...] | None:
  """The top-level parameter groups the config trains: all (None) in stage 1, the emotion controller in stage 2."""
  return (generator.EMOTION_PARAMS,) if config.stage == 2 else None


class Components(NamedTuple):
  """What a training step needs, built from the config alone (no dataset): shared by the trainer and benchmarks."""
  model_fn: Callable
  graphdef: Any
  diffusion: Any
  tx: Any
  lr_schedule: Any
  train_step: Callable        # jitted (state, batch, key) -> (state, metrics)
  trainable: tuple[str, ...] | None   # state_lib.create_train_state's `trainable`


def build_components(config: ml_collections.ConfigDict, mesh, audio_dim: int) -> Components:
  """The step's parts for a config that configlib.validate passed."""
  model_fn = model_factory(config, audio_dim)
  diffusion = generator.Diffusion.from_config(config.diffusion)
  tx = state_lib.make_optimizer(config)
  lr_schedule = state_lib.learning_rate_schedule(config.optim, config.train.num_steps)
  graphdef = model_graphdef(model_fn)
  emotion_drop_prob = config.emotion.drop_prob if config.stage == 2 else 0.0

  def loss_fn(model, batch, key):
    return generator.training_loss(model, batch, key, diffusion, config.model, emotion_drop_prob)

  train_step = step_lib.make_train_step(graphdef, loss_fn, tx, config, mesh, lr_schedule)
  return Components(model_fn, graphdef, diffusion, tx, lr_schedule, train_step, trainable_params(config))


def _setting(config: ml_collections.ConfigDict, key: str):
  """config.a.b for key "a.b"."""
  for part in key.split("."):
    config = config[part]
  return config


def _at(tree: dict, path) -> Any:
  """The leaf of a nested dict at a key path, the keys compared as strings."""
  for entry in path:
    tree = {str(k): v for k, v in tree.items()}[str(entry.key)]
  return tree


def _previous_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config of the run the workdir already holds (its config.json, upgraded and validated), or None.

  This run's config is compared with it here (as with stage 2's stage-1 run in Trainer.stage1_params), not in
  configlib.validate: each config is valid on its own, only the pair conflicts."""
  path = os.path.join(workdir, "config.json")
  return configlib.load_saved(path) if os.path.isfile(path) else None


def _check_workdir_stage(workdir: str, previous: ml_collections.ConfigDict | None, stage: int) -> None:
  """Refuses a workdir that holds a run of the other stage (its checkpoints would be mixed, then deleted)."""
  if previous is not None and previous.stage != stage:
    raise UserError(f"Workdir {workdir} holds a stage-{previous.stage} run; give this stage-{stage} run its own "
                    "--workdir (stage 2 reads stage 1 through --config.init_from).")


# Settings a resumed run must keep: Grain's saved iterator state only restores under the same worker count (another
# count fails inside Grain), the windows per clip decide what its indices mean, and optim.flatten decides the
# layout of the optimizer's saved moments.
RESUME_SETTINGS = ("data.worker_count", "data.windows_per_clip", "optim.flatten")


def _check_resume_settings(workdir: str, previous: ml_collections.ConfigDict | None,
                           config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a run whose checkpoints were written under other RESUME_SETTINGS, naming the fix."""
  checkpoints = os.path.join(workdir, "checkpoints")
  if previous is None or not (os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))):
    return
  for key in RESUME_SETTINGS:
    was, now = _setting(previous, key), _setting(config, key)
    if was != now:
      what = "the optimizer's saved state" if key.startswith("optim.") else "the data iterator's saved state"
      raise UserError(f"Workdir {workdir} holds checkpoints written with config.{key}={was}, and {what} depends "
                      f"on it; resume with --config.{key}={was} (or start a new --workdir).")


def _check_init_from(workdir: str, config: ml_collections.ConfigDict) -> None:
  """A stage-2 run starts from a stage-1 run: refuses a missing config.init_from before anything is written
  (unless the workdir already holds stage-2 checkpoints to resume)."""
  if config.stage != 2:
    return
  checkpoints = os.path.join(workdir, "checkpoints")
  if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)):
    return
  if not config.init_from:
    raise UserError("config.init_from is empty; stage 2 starts from a stage-1 run: pass "
                    "--config.init_from=STAGE1_WORKDIR (or one of its checkpoints/<step> folders).")
  if not os.path.exists(config.init_from):
    raise UserError(f"config.init_from={config.init_from} does not exist; pass a stage-1 training workdir (or one "
                    "of its checkpoints/<step> folders).")


def _lock_workdir(workdir: str):
  """An exclusive lock on the workdir for this process's lifetime: a second training process on the same workdir
  would interleave checkpoints and logs, so it is refused with one sentence."""
  path = os.path.join(workdir, f".lock-{jax.process_index()}")
  handle = open(path, "a+")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    handle.close()
    raise UserError(f"Workdir {workdir} is in use by another training process ({holder}); wait for it to finish, "
                    "stop it, or give this run another --workdir.") from None
  handle.seek(0)
  handle.truncate()
  handle.write(f"pid {os.getpid()}")
  handle.flush()
  return handle


def to_host(tree):
  """A replicated global pytree -> numpy on this host (evaluation runs per process, on local devices)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _keep_rows_up_to(path: str, step: int) -> None:
  """After a resume, drops logged rows of steps that the restored state has not yet taken (they will be redone)."""
  rows = metrics_lib.read_jsonl(path)
  if any(r["step"] > step for r in rows):
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= step)


class Trainer:
  """Builds everything a run needs; `run()` trains until `config.train.num_steps`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, mesh=None):
    config = configlib.upgrade(config)   # a no-op on a config from configs/*.py
    self.config, self.workdir = config, os.path.abspath(workdir)
    self.mesh = mesh if mesh is not None else mesh_lib.make_mesh()
    configlib.validate(config, num_devices=self.mesh.size, process_count=jax.process_count())
    self.is_main = jax.process_index() == 0
    previous = _previous_config(self.workdir)
    _check_workdir_stage(self.workdir, previous, config.stage)
    _check_resume_settings(self.workdir, previous, config)
    _check_init_from(self.workdir, config)
    info = loader.load_dataset_info(config)  # a missing dataset stops here, before the workdir is made
    os.makedirs(self.workdir, exist_ok=True)
    self._lock = _lock_workdir(self.workdir)

    parts = build_components(config, self.mesh, info["feature_dim"])
    self.model_fn, self.graphdef, self.diffusion, self.tx, self.lr_schedule, self.train_step, self.trainable = parts

    root = jax.random.key(config.seed)   # its stream eval_lib.EVAL_STREAM is evaluation's (eval_lib.evaluation_key)
    self.init_key, self.step_key = (jax.random.fold_in(root, i) for i in range(2))
    self.sampler = generator.WindowSampler(self.graphdef, self.diffusion, config)
    self.data_iter = loader.make_train_iterator(config, jax.process_index(), jax.process_count())
    self.checkpointer = ckpt_lib.Checkpointer(self.workdir, config.train.keep_checkpoints)
    self.writer = metrics_lib.MetricWriter(self.workdir, "metrics.jsonl", "tensorboard/train")
    self.eval_writer = metrics_lib.MetricWriter(self.workdir, "eval_metrics.jsonl", "tensorboard/eval")
    self._eval_clips = None
    self._stop_signal = None

  # -- state ---------------------------------------------------------------------------------------------------

  def initial_state(self):
    """The newest readable checkpoint's state (iterator restored too), else a fresh initialization (in stage 2,
    with the stage-1 weights of config.init_from)."""
    abstract = state_lib.abstract_state(self.model_fn, self.tx, self.init_key, self.mesh, self.trainable)
    restored = self.checkpointer.restore_latest(abstract, self.data_iter)
    if restored is not None:
      step, state = restored
      log.info("Resuming from %s/%d.", self.checkpointer.directory, step)
      if self.is_main:
        _keep_rows_up_to(self.writer.path, step)
        _keep_rows_up_to(self.eval_writer.path, step)
      return state
    frozen = None if self.trainable is None else self.stage1_params(abstract["frozen"])
    return state_lib.create_train_state(self.model_fn, self.tx, self.init_key, self.mesh, self.trainable, frozen)

  def stage1_params(self, expected) -> dict:
    """The EMA weights of the stage-1 run config.init_from, replicated over the mesh; `expected`: their shapes."""
    c = self.config
    if not c.init_from:
      raise UserError("config.init_from is empty; stage 2 starts from a stage-1 run: pass "
                      "--config.init_from=STAGE1_WORKDIR (or one of its checkpoints/<step> folders).")
    run = run_lib.restore_run(c.init_from, sharding=mesh_lib.replicated(self.mesh))
    if run.config.stage != 1:
      raise UserError(f"config.init_from={c.init_from} holds a stage-{run.config.stage} checkpoint; pass the "
                      "workdir of a configs/stage1.py run.")
    differ = [f"{k}={_setting(run.config, k)!r}" for k in STAGE1_SETTINGS if _setting(run.config, k) != _setting(c, k)]
    if differ:
      raise UserError(f"The stage-1 run {run.workdir} was trained with {', '.join(differ)}, which this config sets "
                      f"otherwise; stage 2 keeps the stage-1 model: pass those values as --config.KEY=VALUE.")
    try:  # Orbax restores the integer keys of nnx.List (the blocks) as strings: arrange the weights as `expected`
      params = jax.tree_util.tree_map_with_path(lambda path, _: _at(run.params, path), expected)
    except KeyError:
      params = None
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
    if params is None or shapes(params) != shapes(expected):
      raise UserError(f"The stage-1 weights in {run.workdir} do not fit this config's model (other audio features "
                      "or another version of the model); retrain stage 1 with this code and dataset.")
    stats = loader.dataset_stats(c)
    if not all(np.allclose(getattr(run.stats, k), getattr(stats, k))
               for k in ("exp_mean", "exp_std", "audio_mean", "audio_std")):
      log.warning("The stage-2 dataset's expression or audio statistics differ from those stage 1 (%s) was trained "
                  "with; the frozen model sees differently normalized inputs.", run.workdir)
    log.info("Stage 2 starts from the stage-1 EMA weights of %s (step %d); they stay frozen.", run.workdir, run.step)
    return params

  def save(self, state) -> None:
    step = int(state["step"])
    if step not in self.checkpointer.manager.all_steps():
      self.checkpointer.save(step, state, self.data_iter, self.config)

  # -- evaluation ----------------------------------------------------------------------------------------------

  def evaluate(self, state) -> dict[str, float]:
    """Held-out metrics of the state's EMA weights, logged (and plotted): eval_lib.evaluate_model, the path of
    pipelines/evaluate.py, on config.eval's clips, so evaluate.py gives the same numbers for this step's checkpoint."""
    if self._eval_clips is None:
      e = self.config.eval
      self._eval_clips = loader.load_eval_clips(self.config, self.config.data.eval_split, e.num_clips, e.max_frames)
    step = int(state["step"])
    metrics, curves = eval_lib.evaluate_model(self.sampler, to_host(run_lib.model_params(state)), self.config,
                                              self._eval_clips)
    if self.is_main:
      self.eval_writer.write(step, metrics)
      if self.config.eval.plot:
        eval_lib.plot(curves, os.path.join(self.workdir, "eval", f"step_{step:08d}.png"), step)
    return metrics

  # -- loop ----------------------------------------------------------------------------------------------------

  def _on_signal(self, signum, frame):
    self._stop_signal = signal.Signals(signum).name

  def _flush(self, pending: list[dict], step: int, since: float, bar) -> float:
    """Averages the metrics of the steps since the last flush (one host sync), checks they were finite, and logs
    them with the steps' rate since `since` (a perf_counter time), taken once they have finished: dispatch runs
    ahead of the device. Returns the time it took the rate up to."""
    rows = jax.device_get(pending)
    now = time.perf_counter()
    pending.clear()
    if any(r["finite"] < 1.0 for r in rows):
      last = self.checkpointer.manager.latest_step()
      where = f"{self.checkpointer.directory}/{last}" if last is not None else "none was saved yet"
      raise TrainingDiverged(
          f"Training stopped near step {step}: the loss or gradient became non-finite; the last good checkpoint "
          f"({where}) is intact, lower config.optim.lr or raise config.optim.warmup_steps and rerun to resume.")
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "finite"}
    means["steps_per_s"] = len(rows) / max(now - since, 1e-9)
    self.writer.write(step, means)
    bar.set_postfix(loss=f"{means['loss']:.4f}", refresh=False)
    return now

  def run(self):
    """Trains to config.train.num_steps; returns the final state."""
    t = self.config.train
    state = self.initial_state()
    step = int(state["step"])
    if self.is_main:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(configlib.to_json(self.config))
      stats_lib.save_stats(loader.dataset_stats(self.config), os.path.join(self.workdir, run_lib.STATS_FILE))
      log.info("Model: %s parameters, %s of them trained; %d devices over %d processes.",
               f"{generator.count_params(run_lib.model_params(state)):,}",
               f"{generator.count_params(state['params']):,}", jax.device_count(), jax.process_count())
    previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    bar = tqdm(total=t.num_steps, initial=step, desc="stage %d" % self.config.stage, dynamic_ncols=True,
               disable=not (self.is_main and t.progress_bar))
    pending, t_last = [], time.perf_counter()
    try:
      while step < t.num_steps:
        batch = mesh_lib.global_batch(next(self.data_iter), self.mesh)
        state, metrics = self.train_step(state, batch, self.step_key)
        pending.append(metrics)
        step += 1
        bar.update(1)
        stop = self._stop_signal is not None
        save = stop or step % t.ckpt_every == 0 or step == t.num_steps
        if save or step % t.log_every == 0:  # a save always flushes first: only finite states are saved
          t_last = self._flush(pending, step, t_last, bar)
        if save:
          self.save(state)
        if stop:
          log.warning("Received %s: saved a checkpoint at step %d and stopped; rerun the same command to resume.",
                      self._stop_signal, step)
          break
        if step % t.eval_every == 0 or step == t.num_steps:
          self.evaluate(state)
          t_last = time.perf_counter()
    finally:
      bar.close()
      if hasattr(self.data_iter, "close"):
        self.data_iter.close()
      for s, handler in previous.items():
        signal.signal(s, handler)
      self.checkpointer.close()
      self.writer.close()
      self.eval_writer.close()
      self._lock.close()  # the workdir is free for the next run (a resume in this process too)
    return state
