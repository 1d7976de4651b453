"""`benchmark.py memory`: animate.py and reenact.py as they run on GPUs with less memory than this one.

For each limit L (--memory-gb, default 16,24,40), each command runs in a process of its own whose JAX allocator gets
what it would get on an L GB card by default: 75% of L (JAX's share, XLA_PYTHON_CLIENT_MEM_FRACTION = 0.75 L / this
device's memory). Inputs are generated: --seconds of speech (tests.videos.speech) and skimage's astronaut for
animate.py; a talking-face video of the same length (tests.videos.talking_face) driving the astronaut for
reenact.py. Both use their automatic render batch (--batch-size left out) and the compilation cache of this process's
environment, so that the figures are the rendering's, not the compiler's, after the first limit.

Figures per command and limit: its exit status, the whole command's seconds, the render batch it chose and why,
the peak device memory it reported, for animate.py its render stage's seconds and frames per second, and the
error line of a command that failed. This process never touches the device itself (JAX would take its memory).
A device that does not report its memory (a CPU) cannot be limited: each command then runs once, as it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_SHARE = 0.75   # of a card's memory, what JAX's allocator takes by default
_PROBE = ("import jax; s = jax.local_devices()[0].memory_stats() or {}; "
          "print(s.get('bytes_limit', 0), jax.devices()[0].device_kind)")


def device_memory() -> tuple[int, str]:
  """(bytes the first device has for JAX with nothing else on it, 0 where it does not say; its name), from a child
  process, so that this one never initializes the device."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="1.0")
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                       check=True).stdout.split(maxsplit=1)
  return int(out[0]), out[1].strip()


def _inputs(folder: str, seconds: float) -> dict:
  import soundfile as sf

  sys.path.insert(0, ROOT)
  from tests import videos
  videos.write_photos(folder)
  portrait = os.path.join(folder, "portrait.png")
  speech = os.path.join(folder, "speech.wav")
  sf.write(speech, videos.speech(seconds, 16000), 16000)
  driving = os.path.join(folder, "driving.mp4")
  videos.talking_face(driving, seconds, size=(512, 512))
  return dict(portrait=portrait, speech=speech, driving=driving)


def _figures(proc: subprocess.CompletedProcess, wall: float) -> dict:
  out = proc.stdout + proc.stderr
  batch = re.search(r"render batch: (\d+) frames per call \(([^)]*)\)(?:, peak device memory ([\d.]+) GiB)?", out)
  render = re.search(r"[:,] render ([\d.]+) s", out)
  frames = re.search(r"(\d+) frames", proc.stdout)
  figures = {"status": proc.returncode, "wall_s": wall,
             "render_batch": int(batch.group(1)) if batch else None, "batch_why": batch.group(2) if batch else None,
             "peak_memory_gib": float(batch.group(3)) if batch and batch.group(3) else None,
             "frames": int(frames.group(1)) if frames else None,
             "render_s": float(render.group(1)) if render else None}
  if figures["render_s"] and figures["frames"]:
    figures["render_frames_per_s"] = figures["frames"] / figures["render_s"]
  if proc.returncode != 0:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    figures["error"] = errors[-1] if errors else proc.stderr.strip().splitlines()[-1][:300]
  return figures


def bench_memory(checkpoint: str, renderer: str, limits_gb: list[float], seconds: float) -> dict:
  total, device = device_memory()
  commands = {
      "animate": lambda i, out: [os.path.join(ROOT, "pipelines", "animate.py"), "--checkpoint", checkpoint,
                                 "--renderer", renderer, "--image", i["portrait"], "--audio", i["speech"],
                                 "--out", out, "--no-progress"],
      "reenact": lambda i, out: [os.path.join(ROOT, "pipelines", "reenact.py"), "--renderer", renderer,
                                 "--source", i["portrait"], "--driving", i["driving"], "--out", out,
                                 "--dtype", "bfloat16"],
  }
  result = {"device": device, "device_memory_gib": total / 2**30 if total else None, "seconds": seconds}
  limits = limits_gb if total else [None]
  with tempfile.TemporaryDirectory() as folder:
    inputs = _inputs(folder, seconds)
    for limit in limits:
      env = dict(os.environ)
      if limit is not None:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(1.0, JAX_SHARE * limit * 2**30 / total):.4f}"
      tag = "unlimited" if limit is None else f"{limit:g}gb"
      for name, command in commands.items():
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, *command(inputs, os.path.join(folder, f"{name}_{tag}.mp4"))],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        figures = _figures(proc, time.perf_counter() - t)
        print(f"[memory] {name} {tag}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), file=sys.stderr,
              flush=True)
        result.update({f"{name}_{tag}_{k}": v for k, v in figures.items()})
  return result
