"""Wall-clock seconds per named stage of a job, for the reports the pipelines print."""

from __future__ import annotations

import contextlib
import time


class Stopwatch:
  """Seconds per named stage: `with watch("scan"): ...`; a stage entered again adds up. Each stage's first start
  and last end are kept too, in seconds since `t0` (a time.perf_counter() reading; default: the watch's creation),
  so that watches of several threads sharing one t0 show what overlapped."""

  def __init__(self, t0: float | None = None):
    self.t0 = time.perf_counter() if t0 is None else t0
    self.seconds: dict[str, float] = {}
    self.spans: dict[str, tuple[float, float]] = {}

  @contextlib.contextmanager
  def __call__(self, stage: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      end = time.perf_counter()
      self.seconds[stage] = self.seconds.get(stage, 0.0) + end - t
      start = self.spans[stage][0] if stage in self.spans else t - self.t0
      self.spans[stage] = (start, end - self.t0)

  def summary(self) -> str:
    """'a 1.2 s, b 0.3 s' in the order the stages first ran."""
    return ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())

  def timeline(self) -> str:
    """'a 0.0-1.2, b 1.2-1.5': each stage's first start and last end, in seconds since t0."""
    return ", ".join(f"{name} {a:.1f}-{b:.1f}" for name, (a, b) in self.spans.items())
