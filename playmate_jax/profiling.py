"""jax.profiler traces and what takes the time in them, without TensorBoard.

    with profiling.trace("/tmp/prof"):
      for _ in range(5):
        step(...)
    for row in profiling.top_ops("/tmp/prof"):
      print(row)

`trace` writes the profiler's files (open them in Perfetto or XProf for the timeline). `top_ops` reads the Chrome
trace-event file of the newest trace and sums the duration of every device operation by name: on a GPU the "XLA
Ops" line the profiler derives from the kernels (one event per HLO operation), else the kernels on the device's
streams; on a CPU, which has no device lines, the host's events less the Python tracer's frames. `kernel_classes`
sums the GPU kernels by what they do (matmul, attention, reduction, transpose, elementwise, copy): how much of a
step is bandwidth-bound work.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import gzip
import json
import os
import re
from typing import Callable


@contextlib.contextmanager
def trace(folder: str):
  """A jax.profiler trace of the block, written under `folder`."""
  import jax
  jax.profiler.start_trace(folder, create_perfetto_trace=True)
  try:
    yield
  finally:
    jax.profiler.stop_trace()


@dataclasses.dataclass(frozen=True)
class OpTime:
  name: str
  total_ms: float
  count: int
  share: float          # of the summed time of the events counted

  def __str__(self) -> str:
    return f"{self.share:6.1%} {self.total_ms:10.3f} ms {self.count:6d}x  {self.name}"


def _newest_trace(folder: str) -> str:
  files = glob.glob(os.path.join(folder, "plugins", "profile", "*", "*.trace.json.gz"))
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {folder}/plugins/profile; was a trace written there?")
  return max(files, key=os.path.getmtime)


def _device_events(folder: str, line: str = "ops") -> list[dict]:
  """The duration events top_ops sums (see there) of the newest trace under `folder`."""
  with gzip.open(_newest_trace(folder)) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  meta = lambda kind: {(e["pid"], e.get("tid")) if kind == "thread_name" else e["pid"]: e["args"]["name"]
                       for e in events if e.get("ph") == "M" and e.get("name") == kind}
  processes, threads = meta("process_name"), meta("thread_name")
  spans = [e for e in events if e.get("ph") == "X" and e.get("dur") is not None]
  on_device = [e for e in spans if processes.get(e["pid"], "").startswith("/device:")]
  xla_ops = [e for e in on_device if threads.get((e["pid"], e.get("tid")), "") == "XLA Ops"]
  streams = [e for e in on_device if threads.get((e["pid"], e.get("tid")), "").startswith("Stream")]
  # The host's fallback leaves out the Python tracer's frames ("$file.py:line function"): they time the calling code
  # (the trace's own start and stop among them), not the program, and on a loaded machine they can fill the top rows.
  host = [e for e in spans if not e["name"].startswith("$")]
  return (streams if line == "kernels" else xla_ops or streams) or on_device or host


def _summed(events: list[dict], key: Callable[[str], str]) -> tuple[collections.Counter, collections.Counter]:
  totals, counts = collections.Counter(), collections.Counter()
  for e in events:
    totals[key(e["name"])] += float(e["dur"])
    counts[key(e["name"])] += 1
  return totals, counts


def top_ops(folder: str, n: int = 20, line: str = "ops") -> list[OpTime]:
  """The n operations of the newest trace under `folder` with the most summed time (see the module docstring);
  line="kernels" sums the GPU kernels on the device's streams by kernel name instead of the XLA ops."""
  totals, counts = _summed(_device_events(folder, line), lambda name: name)
  whole = sum(totals.values()) or 1.0
  return [OpTime(name, us / 1e3, counts[name], us / whole) for name, us in totals.most_common(n)]


KERNEL_CLASSES = ("matmul", "attention", "reduction", "transpose", "elementwise", "copy", "other")


def kernel_class(name: str) -> str:
  """What a GPU kernel of an XLA program does, from its name: "matmul" (cuBLAS nvjet/xmma/gemm kernels and XLA's
  Triton gemm fusions), "attention" (cuDNN's fused attention), "reduction" / "transpose" / "elementwise" (XLA's
  fusions by their kind: input_*reduce*, *transpose*, the other loop_/input_/fusion kernels), "copy" (memcpy and
  memset), else "other"."""
  lower = name.lower()
  if "sdpa" in lower or "fmha" in lower or "flash" in lower:
    return "attention"
  if re.search(r"nvjet|xmma|gemm|cublas|cutlass", lower):
    return "matmul"
  if lower.startswith(("memcpy", "memset")):
    return "copy"
  if "reduce" in lower:
    return "reduction"
  if "transpose" in lower:
    return "transpose"
  if re.match(r"(loop_|input_|wrapped_|fusion|triton_)", lower):
    return "elementwise"
  return "other"


def kernel_classes(folder: str) -> list[OpTime]:
  """The GPU kernels of the newest trace under `folder` summed by kernel_class, largest first (on a CPU, which
  has no device lines, the host's events, mostly "other")."""
  totals, counts = _summed(_device_events(folder, "kernels"), kernel_class)
  whole = sum(totals.values()) or 1.0
  return [OpTime(name, us / 1e3, counts[name], us / whole) for name, us in totals.most_common()]
