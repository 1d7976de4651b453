"""Wall-clock seconds per named stage of a job, for the reports the pipelines print."""

from __future__ import annotations

import contextlib
import time


class Stopwatch:
  """Seconds per named stage: `with watch("scan"): ...`; a stage entered again adds up."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, stage: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t

  def summary(self) -> str:
    """'a 1.2 s, b 0.3 s' in the order the stages first ran."""
    return ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
