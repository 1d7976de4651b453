"""Orbax checkpoints in `workdir/checkpoints` for training: train state (with EMA), each process's Grain iterator
state, config. Inference reads them through `playmate_jax.run`, without this module.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it when complete), so a crash or
SIGKILL mid-save leaves the previous checkpoints intact. Restoring tries the newest checkpoint first and falls back
to older ones with a warning when one is unreadable.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp

from playmate_jax import configlib
from playmate_jax.run import CONFIG_FILE, first_readable


class Checkpointer:
  """Saves and restores {'state', 'data', 'config'} under `workdir/checkpoints/<step>`."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler(filename=CONFIG_FILE),
                "data": grain.checkpoint.CheckpointHandler()}
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
        item_handlers=handlers)

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(json.loads(configlib.to_json(config))),
                              data=grain.checkpoint.CheckpointSave(data_iterator))
    self.manager.save(step, args=args, force=True)

  def restore_latest(self, abstract_state, data_iterator) -> tuple[int, Any] | None:
    """(step, state) of the newest readable checkpoint, the iterator restored in place; None if there is none."""

    def load(candidate: str):
      step = int(os.path.basename(candidate))
      args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                data=grain.checkpoint.CheckpointRestore(data_iterator))
      return step, self.manager.restore(step, args=args)["state"]

    steps = sorted(self.manager.all_steps(), reverse=True)
    return first_readable([os.path.join(self.directory, str(s)) for s in steps], load)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
