"""`benchmark.py serve`: the service's latency and batching, on a motion model of the config's size with random
weights (no trained checkpoint needed) and the renderer given (random: LivePortrait's sizes).

- start-up: `Animator.compile` for --max-batch (every program a job runs);
- one job of --seconds of speech: time from submission to the stream's first fragment (when a player can start)
  and to the finished mp4;
- --jobs jobs of --seconds each, submitted together (their motion in one batched call) and one after another;
- `MotionModel.generate_many` alone for each compiled batch size up to --max-batch: seconds per recording.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from pipelines.bench_common import timed
from tests import videos


def say(message: str) -> None:
  print(f"[serve] {message}", flush=True)


def bench_serve(config_path: str, renderer: str, seconds: float, jobs: int, max_batch: int, batch_size: int = 16) -> dict:
  import jax
  import soundfile as sf

  from playmate_jax import animate as anim
  from playmate_jax.animate.job import Animator, batch_shapes
  from playmate_jax.renderer.api import Renderer
  from playmate_jax.serve import jobs as jobs_lib

  out: dict = {"device": jax.devices()[0].device_kind, "audio_seconds": seconds, "max_batch": max_batch}
  folder = tempfile.mkdtemp(prefix="bench-serve-")
  portrait, speech = os.path.join(folder, "portrait.png"), os.path.join(folder, "speech.wav")
  videos.write_photos(folder)
  sf.write(speech, videos.speech(seconds, 16000), 16000)
  model = anim.MotionModel.load(f"random:{config_path}")
  say("model ready; compiling")
  animator = Animator(Renderer.from_spec(renderer), model, batch_size=batch_size)
  service = jobs_lib.Service(animator, jobs_lib.Store(os.path.join(folder, "results"), 1 << 40),
                             max_batch=max_batch, log=lambda m: None)
  t = time.perf_counter()
  service.start(warm_up=lambda: animator.compile(max_batch))
  service.ready.wait()
  if service.failure:
    raise RuntimeError(service.failure)
  out["compile_s"] = time.perf_counter() - t
  say(f"compiled in {out['compile_s']:.1f} s")
  settings = dict(emotion="happy" if model.stage == 2 else None)

  def submit():
    return service.submit(service.new_folder(), portrait, speech, settings).id

  firsts, totals = [], []
  for _ in range(3):
    t = time.time()
    job_id = submit()
    record = service.wait(job_id)
    assert record.state == "done", record.error
    firsts.append(record.first_fragment - t)
    totals.append(record.finished - t)
    say(f"one job: first fragment {firsts[-1]:.2f} s, done {totals[-1]:.2f} s")
  out.update(first_fragment_s=statistics.median(firsts), first_fragment_s_max=max(firsts),
             job_s=statistics.median(totals), frames=record.frames)

  t = time.time()
  with service.paused():   # the jobs wait together, as requests arriving at once do
    ids = [submit() for _ in range(jobs)]
  for job_id in ids:
    service.wait(job_id)
  together = time.time() - t
  say(f"{jobs} jobs together: {together:.2f} s")
  batches = [service.get(i).batch for i in ids]
  t = time.time()
  for _ in range(jobs):
    service.wait(submit())
  out.update(jobs=jobs, together_s=together, together_batches=max(batches), one_after_another_s=time.time() - t)
  service.stop()

  wave = np.zeros(int(seconds * 16000), np.float32)
  wave[::400] = 0.1
  source = model.default_source()
  for b in batch_shapes(max_batch):   # compiled at start-up
    run = lambda: model.generate_many([wave] * b, [source] * b, emotions=[0] * b if model.stage == 2 else None)
    _, times, _ = timed(run, (), repeats=3, warmup=0)
    out[f"motion_per_recording_batch{b}_s"] = statistics.median(times) / b
    say(f"motion, batch {b}: {statistics.median(times) / b:.3f} s per recording")
  return out
