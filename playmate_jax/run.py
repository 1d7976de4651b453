"""A trained run at rest: what inference restores from a training workdir, without the training code.

`restore_run(path)` gives the newest readable checkpoint's weights (EMA by default; stage 2 with the frozen stage-1
part), its config (upgraded and validated by configlib) and the training data's normalization statistics. It needs
no data iterator, no optimizer state and no dataset: sampling, animation, evaluation and stage 2's start read it.
Checkpoints are Orbax folders `workdir/checkpoints/<step>` (`train.checkpoint.Checkpointer` writes them); a damaged
one is skipped for the previous one with a warning.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, NamedTuple, TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from playmate_jax import audio, configlib
from playmate_jax.data.stats import DatasetStats, read_stats
from playmate_jax.generator.factory import init_params, model_factory
from playmate_jax.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")
CONFIG_FILE = "metadata"   # the JSON file of a checkpoint's config, in its config/ folder (Orbax's default name)


def model_params(state: dict, ema: bool = True) -> dict:
  """All of the model's parameters: the (EMA) trained groups together with the frozen ones, if any."""
  return {**state.get("frozen", {}), **state["ema_params" if ema else "params"]}


def first_readable(candidates: list[str], load: Callable[[str], T]) -> T | None:
  """load(candidate) for the first candidate (newest first) that loads; a damaged one is skipped with a warning."""
  for candidate in candidates:
    try:
      return load(candidate)
    except Exception as e:  # a damaged checkpoint: any error from Orbax, TensorStore or the file system
      first_line = str(e).splitlines()[0][:200] if str(e) else ""
      log.warning("Checkpoint %s is unreadable (%s: %s); trying the previous one.", candidate, type(e).__name__,
                  first_line)
  return None


def _restore_state(state_dir: str, sharding: jax.sharding.Sharding | None = None,
                   keys: tuple[str, ...] | None = None):
  """The saved train state with every array on `sharding` (default: this process's first device), whatever mesh
  and process count wrote it; with `keys`, only those top-level entries (e.g. no optimizer state: a stage-1
  checkpoint holds four copies of the weights, and sampling needs one)."""
  metadata = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if keys is not None:
    metadata = {k: v for k, v in metadata.items() if k in keys}
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
  return ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=keys is not None))


STATS_FILE = "dataset_stats.json"  # the training data's normalization statistics, copied into the workdir


class Run(NamedTuple):
  params: Any                         # all of the model's weights, EMA unless asked otherwise (stage 2: with frozen)
  config: ml_collections.ConfigDict
  step: int
  workdir: str
  stats: Any                          # playmate_jax.data.DatasetStats of the training data


def random_run(config_path: str) -> Run:
  """A run of a config's model with random weights and neutral statistics (zero means, unit audio spread): its motion
  is meaningless, as `--renderer random`'s pictures are; for trying a pipeline and measuring its speed without a
  trained model (`--checkpoint random:configs/stage1.py[:variant]`)."""
  try:
    config = configlib.load_config(config_path)
  except (OSError, ValueError, AttributeError, UserError) as e:
    raise UserError(f"Config {config_path} (from --checkpoint random:CONFIG) could not be loaded ({str(e).rstrip('.')});"
                    " give e.g. random:configs/stage1.py:live.") from None
  configlib.validate(config)
  dim = audio.get_encoder(config.audio).feature_dim
  model_fn = model_factory(config, dim)
  params = jax.jit(init_params, static_argnums=0)(model_fn, jax.random.key(0))
  f = lambda n, v=0.0: np.full(n, v, np.float32)
  stats = DatasetStats(exp_mean=f(63), exp_std=f(63, 0.02), pose_mean={}, pose_std={}, default_pose_mean=f(6),
                       default_pose_std=np.array([5, 8, 3, .02, .02, .05], np.float32), audio_mean=f(dim),
                       audio_std=f(dim, 1.0), kp_mean=f(63), num_frames=0)
  log.warning("The motion model has RANDOM weights (%s); its motion is meaningless.", config_path)
  return Run(params=params, config=config, step=0, workdir=f"random:{config_path}", stats=stats)


def restore_run(path: str, *, ema: bool = True, sharding: jax.sharding.Sharding | None = None) -> Run:
  """A trained model from a workdir (its newest readable checkpoint) or from one checkpoints/<step> folder.

  Used by sampling and by stage 2; needs no data iterator, no optimizer and no dataset. The weights are on
  `sharding` (default: this process's first device). The checkpoint's config comes upgraded and validated
  (configlib.from_saved, as a saved run's: no device count); an invalid one stops with one sentence naming its file.
  """
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  if os.path.isdir(os.path.join(path, "state")):
    candidates = [path]
  elif os.path.isdir(path):
    steps = sorted((int(n) for n in os.listdir(path) if n.isdigit()), reverse=True)
    candidates = [os.path.join(path, str(s)) for s in steps]
  else:
    raise UserError(f"Checkpoint {path} does not exist; pass a training workdir or one of its checkpoints/<step> folders.")
  if not candidates:
    raise UserError(f"No checkpoint found in {path}; train first with launch.py or pass another workdir.")
  workdir = os.path.dirname(os.path.dirname(candidates[0]))   # WORKDIR/checkpoints/<step>
  stats = read_stats(os.path.join(workdir, STATS_FILE))   # the workdir's, not a checkpoint's: its error is not skipped

  def load(candidate: str) -> tuple[str, Run]:
    saved = ocp.Checkpointer(ocp.JsonCheckpointHandler(filename=CONFIG_FILE)).restore(
        os.path.join(candidate, "config"))
    tree = _restore_state(os.path.join(candidate, "state"), sharding,
                          keys=("step", "ema_params" if ema else "params", "frozen"))
    return candidate, Run(model_params(tree, ema), saved, int(tree["step"]), workdir, stats)

  loaded = first_readable(candidates, load)
  if loaded is None:
    raise UserError(f"No readable checkpoint in {path}; every candidate failed to load (the warnings above say why): "
                    "pass a training workdir whose checkpoints/<step> folders hold state/ and config/ (launch.py "
                    "writes them), or an earlier step's folder.")
  # Validated once loaded, outside _first_readable: an invalid config is the run's mistake, not a damaged
  # checkpoint to skip.
  candidate, run = loaded
  return run._replace(config=configlib.from_saved(run.config, os.path.join(candidate, "config", CONFIG_FILE)))
