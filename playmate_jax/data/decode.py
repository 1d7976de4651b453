"""Preprocessing's decode workers: per video, in a spawned process, probe -> reject what is not a usable video ->
scan at 25 fps on shrunk frames (shot cuts, faces: `tracking.scan`) -> clips of one steady face
(`tracking.find_clips`) -> decode again at full size and crop each clip's frames -> the crops and the 16 kHz mono
audio go to temporary .npy files for the main process (`data.preprocess`). A bad video never raises: it comes
back as a `Prepared` with its rejection."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import traceback
from collections.abc import Iterator

import numpy as np

from playmate_jax import video as video_lib
from playmate_jax.data import tracking
from playmate_jax.errors import UserError
from playmate_jax.face import crop as crop_lib
from playmate_jax.timing import Stopwatch

FPS, SAMPLE_RATE = 25, 16000
HOP = SAMPLE_RATE // FPS
SILENCE_RMS = 1e-4          # an audio track quieter than this (full scale 1) is silent
TRUNCATED_FRACTION = 0.9    # fewer decoded frames than this fraction of the container's duration: truncated
DECODE_THREADS = 2          # ffmpeg threads per decoding worker (the workers already decode side by side)


@dataclasses.dataclass(frozen=True)
class Job:
  """One video for a decode worker."""
  root: str
  relpath: str
  tmp_dir: str
  crop_size: int
  track: tracking.TrackSettings


@dataclasses.dataclass
class Prepared:
  """A decode worker's answer: the clips (crops and audio in temporary .npy files) or why there are none."""
  relpath: str
  clips: list[tracking.Clip] = dataclasses.field(default_factory=list)
  crops: list[str] = dataclasses.field(default_factory=list)  # one .npy [n, S, S, 3] uint8 per clip
  audio: str = ""                                               # .npy float32 [samples], the whole soundtrack
  frames: int = 0                                               # 25 fps frames of the video
  rejection: tracking.Rejection | None = None
  error: str = ""                                               # a bug's traceback (the run goes on)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # time per stage, for the report


def _reject(job: Job, kind: str, reason: str) -> Prepared:
  return Prepared(job.relpath, rejection=tracking.Rejection(kind, reason))


def prepare_video(job: Job) -> Prepared:
  """Decode, track and crop one video (runs in a worker process); never raises for a bad video."""
  watch = Stopwatch()
  try:
    p = _prepare(job, watch)
  except Exception:  # a bug, not a bad video: recorded, and the run goes on
    p = Prepared(job.relpath, rejection=tracking.Rejection("error", "internal error (see .preprocess/errors.log)"),
                 error=traceback.format_exc())
  p.seconds = watch.seconds
  return p


def _prepare(job: Job, watch: Stopwatch) -> Prepared:
  path = os.path.join(job.root, job.relpath)
  s = job.track
  if os.path.getsize(path) == 0:
    return _reject(job, "empty", "the file is empty (0 bytes)")
  try:
    with watch("open"):
      info, frames = video_lib.stream(path, FPS, max_side=s.scan_max_side, threads=DECODE_THREADS)
  except video_lib.TruncatedVideo:
    return _reject(job, "truncated", "incomplete: its index (the mp4 'moov' atom) is missing, the copy was cut off")
  except UserError:
    return _reject(job, "not_video", "not a video ffmpeg can read (another kind of file, or damaged beyond repair)")
  with contextlib.closing(frames):
    if info.is_still_image:
      return _reject(job, "still_image", f"a still image ({info.codec.rstrip(',')}), not a video")
    if not info.has_audio:
      return _reject(job, "no_audio", "no audio track")
    if 0 < info.duration < s.min_seconds:
      return _reject(job, "too_short", f"shorter than {s.min_seconds:g} s ({info.duration:.1f} s)")
    try:
      with watch("scan"):
        sc = tracking.scan(frames, min(1.0, s.scan_max_side / max(info.width, info.height)), s)
    except UserError:
      return _reject(job, "truncated", "damaged or truncated: decoding stopped part-way")
  audio, bad_audio = None, False
  try:
    with watch("audio"):
      audio = video_lib.extract_audio(path, info=info)
  except UserError:
    bad_audio = True
  # Truncated: neither picture nor sound lasts as long as the container says (sound that simply outlasts the
  # picture, or the other way round, is a whole file: its clips end where the shorter stream does).
  expected = round(info.duration * FPS)
  covered = max(sc.num_frames, 0 if audio is None else len(audio) // HOP)
  if expected and covered < TRUNCATED_FRACTION * expected - 2:
    return _reject(job, "truncated", f"damaged or truncated: only {covered / FPS:.1f} s of "
                                     f"{info.duration:.1f} s could be decoded")
  if bad_audio:
    return _reject(job, "bad_audio", "the audio track could not be decoded")
  if sc.num_frames < round(s.min_seconds * FPS):
    return _reject(job, "too_short", f"shorter than {s.min_seconds:g} s ({sc.num_frames / FPS:.1f} s)")
  if audio is None or not len(audio) or float(np.sqrt(np.mean(np.square(audio)))) < SILENCE_RMS:
    return _reject(job, "silent", "the audio track is silent")

  clips, rejection = tracking.find_clips(sc, s)
  if rejection is not None:
    return Prepared(job.relpath, frames=sc.num_frames, rejection=rejection)
  audio_frames = len(audio) // HOP  # clips end where the audio does
  clips = [dataclasses.replace(c, stop=min(c.stop, audio_frames)) for c in clips]
  clips = [c for c in clips if c.num_frames >= round(s.min_seconds * FPS)]
  if not clips:
    return _reject(job, "too_short", f"the audio track covers only {len(audio) / SAMPLE_RATE:.1f} s")

  os.makedirs(job.tmp_dir, exist_ok=True)
  stem = os.path.join(job.tmp_dir, hashlib.sha1(job.relpath.encode()).hexdigest()[:16])
  with watch("crop"):
    crops = _crop_clips(path, clips, job.crop_size, stem, (info.width, info.height))
  if crops is None:
    return _reject(job, "truncated", "damaged or truncated: decoding stopped part-way")
  np.save(stem + "-audio.npy", audio)
  return Prepared(job.relpath, clips=clips, crops=crops, audio=stem + "-audio.npy", frames=sc.num_frames)


def _region(clips: list[tracking.Clip], size: tuple[int, int]) -> tuple[int, int, int, int]:
  """The part of the frame (x, y, w, h; even, inside the frame) that holds every clip's crop square."""
  width, height = size
  x0 = min(c.square[0] - c.square[2] / 2 for c in clips)
  y0 = min(c.square[1] - c.square[2] / 2 for c in clips)
  x1 = max(c.square[0] + c.square[2] / 2 for c in clips)
  y1 = max(c.square[1] + c.square[2] / 2 for c in clips)
  x0, y0 = max(0, int(np.floor(x0)) - 2) // 2 * 2, max(0, int(np.floor(y0)) - 2) // 2 * 2
  x1, y1 = min(width, int(np.ceil(x1)) + 2), min(height, int(np.ceil(y1)) + 2)
  w, h = max(2, (x1 - x0) // 2 * 2), max(2, (y1 - y0) // 2 * 2)
  return x0, y0, w, h


def _crop_clips(path: str, clips: list[tracking.Clip], size: int, stem: str,
                frame_size: tuple[int, int]) -> list[str] | None:
  """Decodes the part of the video that the clips' squares cover, at full resolution, once, and saves each
  clip's crops as `stem-k.npy`; None if decoding fails."""
  x, y, _, _ = region = _region(clips, frame_size)
  out, k, buf = [], 0, []
  try:
    _, frames = video_lib.stream(path, FPS, region=region, threads=DECODE_THREADS)
    for i, frame in enumerate(frames):
      if k == len(clips):
        frames.close()
        break
      clip = clips[k]
      if clip.start <= i < clip.stop:
        shifted = clip.matrix.copy()
        shifted[:2, 2] -= (x, y)  # the matrix in the decoded region's pixels
        buf.append(crop_lib.crop256(frame, shifted, crop_lib.SOURCE.dsize, size))
      if i == clip.stop - 1:
        out.append(f"{stem}-{k}.npy")
        np.save(out[-1], np.stack(buf))
        k, buf = k + 1, []
  except UserError:
    return None
  return out if k == len(clips) else None


def _worker_setup() -> None:
  """A decode worker runs the face models on its own CPU core: never on the accelerator (the main process holds
  it), and single-threaded (the workers already fill the cores)."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  import jax
  jax.config.update("jax_platforms", "cpu")


@contextlib.contextmanager
def workers(n: int):
  """A pool of n spawned decode processes (spawn: the main process runs JAX, which must not be forked), or
  None for decoding in the main process."""
  if n <= 0:
    yield None
    return
  pool = cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup)
  try:
    yield pool
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def prepared(pool, jobs: list[Job], in_flight: int) -> Iterator[Prepared]:
  """prepare_video over the jobs, at most `in_flight` at a time, in completion order."""
  if pool is None:
    yield from map(prepare_video, jobs)
    return
  pending, queue = set(), iter(jobs)
  for job in queue:
    pending.add(pool.submit(prepare_video, job))
    if len(pending) >= in_flight:
      break
  while pending:
    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
    for future in done:
      yield future.result()
      nxt = next(queue, None)
      if nxt is not None:
        pending.add(pool.submit(prepare_video, nxt))
