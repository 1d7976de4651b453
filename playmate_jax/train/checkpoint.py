"""Orbax checkpoints in `workdir/checkpoints`: train state (with EMA), each process's Grain iterator state, config.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it when complete), so a crash or
SIGKILL mid-save leaves the previous checkpoints intact. Restoring tries the newest checkpoint first and falls back
to older ones with a warning when one is unreadable.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, NamedTuple, TypeVar

import jax
import ml_collections
import orbax.checkpoint as ocp

from playmate_jax import configlib
from playmate_jax.errors import UserError
from playmate_jax.train.state import model_params

log = logging.getLogger(__name__)
T = TypeVar("T")
CONFIG_FILE = "metadata"   # the JSON file of a checkpoint's config, in its config/ folder (Orbax's default name)


def _first_readable(candidates: list[str], load: Callable[[str], T]) -> T | None:
  """load(candidate) for the first candidate (newest first) that loads; a damaged one is skipped with a warning."""
  for candidate in candidates:
    try:
      return load(candidate)
    except Exception as e:  # a damaged checkpoint: any error from Orbax, TensorStore or the file system
      first_line = str(e).splitlines()[0][:200] if str(e) else ""
      log.warning("Checkpoint %s is unreadable (%s: %s); trying the previous one.", candidate, type(e).__name__,
                  first_line)
  return None


class Checkpointer:
  """Saves and restores {'state', 'data', 'config'} under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int):
    import grain   # here, not at the top: restore_run (sampling, animation) needs no Grain
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(filename=CONFIG_FILE),
                "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
        item_handlers=handlers)

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict) -> None:
    import grain
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(json.loads(configlib.to_json(config))),
                              data=grain.checkpoint.CheckpointSave(data_iterator))
    self.manager.save(step, args=args, force=True)

  def restore_latest(self, abstract_state, data_iterator) -> tuple[int, Any] | None:
    """(step, state) of the newest readable checkpoint, the iterator restored in place; None if there is none."""
    import grain

    def load(candidate: str):
      step = int(os.path.basename(candidate))
      args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                data=grain.checkpoint.CheckpointRestore(data_iterator))
      return step, self.manager.restore(step, args=args)["state"]

    steps = sorted(self.manager.all_steps(), reverse=True)
    return _first_readable([os.path.join(self.directory, str(s)) for s in steps], load)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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


def restore_run(path: str, *, ema: bool = True, sharding: jax.sharding.Sharding | None = None) -> Run:
  """A trained model from a workdir (its newest readable checkpoint) or from one checkpoints/<step> folder.

  Used by sampling and by stage 2; needs no data iterator, no optimizer and no dataset. The weights are on
  `sharding` (default: this process's first device). The checkpoint's config comes upgraded and validated
  (configlib.from_saved, as a saved run's: no device count); an invalid one stops with one sentence naming its file.
  """
  from playmate_jax.data import read_stats_file

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
  def load(candidate: str) -> tuple[str, Run]:
    saved = ocp.Checkpointer(ocp.JsonCheckpointHandler(filename=CONFIG_FILE)).restore(
        os.path.join(candidate, "config"))
    tree = _restore_state(os.path.join(candidate, "state"), sharding,
                          keys=("step", "ema_params" if ema else "params", "frozen"))
    workdir = os.path.dirname(os.path.dirname(candidate))
    stats = read_stats_file(os.path.join(workdir, STATS_FILE))
    return candidate, Run(model_params(tree, ema), saved, int(tree["step"]), workdir, stats)

  loaded = _first_readable(candidates, load)
  if loaded is None:
    raise UserError(f"No readable checkpoint in {path}; every candidate failed to load (see the warnings above).")
  # Validated once loaded, outside _first_readable: an invalid config is the run's mistake, not a damaged
  # checkpoint to skip.
  candidate, run = loaded
  return run._replace(config=configlib.from_saved(run.config, os.path.join(candidate, "config", CONFIG_FILE)))
