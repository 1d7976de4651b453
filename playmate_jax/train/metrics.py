"""Metrics to a JSONL file and TensorBoard event files (`tensorboard --logdir WORKDIR/tensorboard`), process 0 only."""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """`write(step, {name: float})` appends one JSON object to `path` and one scalar per name to TensorBoard."""

  def __init__(self, workdir: str, filename: str, tensorboard_dir: str | None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, filename)
    self._tb = None
    if self.active and tensorboard_dir:
      from tensorboardX import SummaryWriter  # writes event files without TensorFlow
      self._tb = SummaryWriter(os.path.join(workdir, tensorboard_dir))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
