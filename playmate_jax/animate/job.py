"""Animation jobs: a renderer and a motion model loaded once, then many portrait + speech jobs run on them.

What `pipelines/animate.py` runs (one job, or a `--jobs` CSV) and what the service (`playmate_jax/serve`) runs:

    spec = JobSpec(image="me.jpg", audio="speech.wav", out="out.mp4", emotion="happy")
    job = prepare(spec)                                   # reads and checks the inputs: no device work yet
    animator = Animator(Renderer.from_spec("weights/liveportrait"), MotionModel.load("workdirs/stage2"))
    for job, result in animator.run([job, ...]):          # portraits, motion batched, then each video
      ...

A job's inputs are read and checked first (`prepare`): a missing file, a photo with no face, unreadable audio or
an unknown emotion is one sentence before anything heavy runs. `Animator.run` then takes each job's portrait
through F and M, generates the motion of jobs that share their sampling settings in one batched call
(`MotionModel.generate_many`), and renders each video in turn, streaming it (optionally also as a fragmented MP4
that plays while it is written). One failing job does not stop the others.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from playmate_jax import cli
from playmate_jax.animate.live import LiveSession
from playmate_jax.animate import (BATCH_SIZES, FPS, POSE_MODES, MotionModel, Portrait, check_batch_size, compose,
                                  emotion_label, find_portrait, load_portrait, render_batch, render_video, sweep_pose,
                                  video_pose, warm_up_render)
from playmate_jax.audio import load_audio
from playmate_jax.errors import UserError
from playmate_jax.face import finder as face_finder
from playmate_jax.face.types import Face
from playmate_jax.timing import Stopwatch


MAX_STEP_MODELS = 4   # models for other DDIM step counts an Animator keeps (each holds its compiled sampler)


class Cancelled(Exception):
  """A job stopped on request (its `cancelled` callback said so); nothing of it is kept."""


@dataclasses.dataclass
class JobSpec:
  """One animation: the portrait, the speech, the output and the controls (see `pipelines/animate.py`)."""
  image: str
  audio: str
  out: str
  emotion: str | None = None
  pose: str = "generated"            # generated, fixed, sweep or video:FILE
  w_audio: float | None = None
  w_emotion: float | None = None
  ddim_steps: int | None = None
  seed: int = 0
  paste_back: bool = False
  crop: bool = True                  # False: the image already is a face crop
  face: int | None = None            # which face (1 = the largest)
  stream: str | None = None          # also write a fragmented MP4 here while rendering (it plays as it grows)

  @property
  def motion_path(self) -> str:
    """Where the generated motion goes: OUT.motion.npz."""
    return os.path.splitext(self.out)[0] + ".motion.npz"


@dataclasses.dataclass
class Job:
  """A job whose inputs were read and checked: the portrait's pixels and face, the 16 kHz waveform, the emotion's
  label and the pose mode (generated, fixed, sweep or video, with the driving video's path)."""
  spec: JobSpec
  image: np.ndarray
  face: Face | None
  wave: np.ndarray
  label: int | None
  pose: str
  driving: str | None = None

  @property
  def sampling(self) -> tuple:
    """What must be equal for jobs to share one batched motion call."""
    s = self.spec
    return (s.ddim_steps, s.w_audio, s.w_emotion, self.label is None, s.seed)


def check_spec(spec: JobSpec) -> tuple[int | None, str, str | None]:
  """(emotion label, pose mode, driving video) of a spec; UserError for a bad value or output folder. Reads no
  input file, so that a batch of jobs is checked at once."""
  cli.check_output_folder(spec.out)
  label = None if spec.emotion in (None, "") else emotion_label(spec.emotion)
  pose, driving = spec.pose, None
  if pose.startswith("video:"):
    pose, driving = "video", pose[len("video:"):]
    if not os.path.isfile(driving):
      raise UserError(f"Driving video {driving} (from --pose) does not exist; check the path.")
  elif pose not in ("generated", "fixed", "sweep"):
    raise UserError(f"--pose {spec.pose!r} is not a pose mode; use one of: {', '.join(POSE_MODES)}.")
  for name in ("w_audio", "w_emotion"):
    value = getattr(spec, name)
    if value is not None and not np.isfinite(value):
      raise UserError(f"--{name.replace('_', '-')} {value} is not a number; give a guidance weight such as 1.5.")
  if spec.ddim_steps is not None and not 1 <= spec.ddim_steps <= 1000:
    raise UserError(f"--ddim-steps {spec.ddim_steps} is out of range; give 1 to 1000 (25 is the default).")
  return label, pose, driving


def prepare(spec: JobSpec, face_models: str | None = None, report: Callable[[str], None] = print,
            watch: Stopwatch | None = None) -> Job:
  """The job with its inputs read and checked: the portrait's face found (a photo with no human face stops here)
  and the speech decoded, before any model or renderer is loaded."""
  watch = watch or Stopwatch()
  label, pose, driving = check_spec(spec)
  with watch("face"):
    image, face = find_portrait(spec.image, crop=spec.crop, face=spec.face, face_models=face_models, report=report)
  with watch("audio"):
    wave = load_audio(spec.audio)
  return Job(spec=spec, image=image, face=face, wave=wave, label=label, pose=pose, driving=driving)


def batch_shapes(max_batch: int) -> list[int]:
  """The batch sizes `MotionModel.generate_many` runs for up to `max_batch` recordings (1 is unpadded)."""
  if max_batch > max(BATCH_SIZES):
    raise UserError(f"At most {max(BATCH_SIZES)} recordings are batched together; lower --max-batch.")
  return [1] + [b for b in BATCH_SIZES if b < max_batch] + [b for b in BATCH_SIZES if b >= max_batch][:max_batch > 1]


class Animator:
  """A renderer and a motion model held for many jobs.

  `model` may be a Future (the command restores it on a worker thread while the renderer loads); it is waited for
  where the motion is first needed. Models for other DDIM step counts share its weights; the MAX_STEP_MODELS used
  last are kept.
  """

  def __init__(self, renderer, model: MotionModel | Future, *, batch_size: int | None = None, stitching: bool = True,
               face_models: str | None = None):
    """batch_size: frames per renderer call; None chooses it from the device's free memory (render_batch) when
    first needed, and says so on the log."""
    check_batch_size(batch_size)
    self.renderer, self._model = renderer, model
    self._batch_size = batch_size
    self.stitching, self.face_models = bool(stitching), face_models
    self._models: dict[int, MotionModel] = {}

  @functools.cached_property
  def _render_batch(self) -> tuple[int, str]:
    return render_batch(self.renderer, self._batch_size)

  @property
  def batch_size(self) -> int:
    """Frames per renderer call (render_batch: as given, or chosen from the device's free memory when first asked)."""
    return self._render_batch[0]

  @property
  def batch_note(self) -> str:
    """Where batch_size came from, as the commands print it."""
    return self._render_batch[1]

  @property
  def model(self) -> MotionModel:
    if isinstance(self._model, Future):
      self._model = self._model.result()
    return self._model

  def motion_model(self, ddim_steps: int | None) -> MotionModel:
    """The model sampling with `ddim_steps` (None: the config's)."""
    base = self.model
    if ddim_steps is None or ddim_steps == int(base.config.sample.ddim_steps):
      return base
    if ddim_steps not in self._models:
      if len(self._models) >= MAX_STEP_MODELS:   # a service may be asked for any count: keep the recent few
        self._models.pop(next(iter(self._models)))
      self._models[ddim_steps] = base.with_ddim_steps(ddim_steps)
    else:   # most recently used last
      self._models[ddim_steps] = self._models.pop(ddim_steps)
    return self._models[ddim_steps]

  def prepare_job(self, image: str, audio: str, out: str, settings: dict, stream: str | None = None) -> Job:
    """A job (JobSpec fields in `settings`) with its inputs read and checked against this animator's model: what a
    service checks when a job is submitted."""
    job = prepare(JobSpec(image=image, audio=audio, out=out, stream=stream, **settings), self.face_models,
                  report=lambda message: None)
    self.model.check_emotion(job.label)
    return job

  def live_session(self, model: MotionModel, image: str, settings: dict) -> LiveSession:
    """A live session of `model` (a live model) for a portrait file; settings: rate, emotion, w_audio, w_emotion,
    face, seed. UserError for a photo with no face or an unknown emotion."""
    label = None if not settings.get("emotion") else emotion_label(settings["emotion"])
    pixels, face = find_portrait(image, face=settings.get("face"), face_models=self.face_models,
                                 report=lambda message: None)
    portrait = load_portrait(self.renderer, pixels, face)
    return LiveSession(model, self.renderer, portrait, input_rate=int(settings.get("rate") or 16000),
                       seed=int(settings.get("seed") or 0), emotion=label, w_audio=settings.get("w_audio"),
                       w_emotion=settings.get("w_emotion"), stitching=self.stitching)

  def portrait(self, job: Job) -> Portrait:
    """F and M on the job's face crop."""
    return load_portrait(self.renderer, job.image, job.face)

  def warm_up(self, portrait: Portrait) -> None:
    """Loads (or compiles) the render programs for this batch size."""
    warm_up_render(self.renderer, portrait, self.batch_size, self.stitching)

  def compile(self, max_batch: int = 1) -> None:
    """Traces and loads (or compiles) every program a job runs, so that no job waits for a compilation: the face
    finder, the sampler for one recording and for each batch size up to `max_batch` (with and without an emotion
    for a stage-2 model), F and M, and the render batch. Runs on a blank portrait and silence."""
    model = self.model
    blank = np.full((256, 256, 3), 128, np.uint8)
    face_finder.finder(self.face_models).find(blank)
    portrait = load_portrait(self.renderer, blank, None)
    self.warm_up(portrait)
    silence = np.zeros(model.config.data.window * 16000 // FPS, np.float32)
    for emotion in ((None, 0) if model.stage == 2 else (None,)):
      for b in batch_shapes(max_batch):
        model.generate_many([silence] * b, [portrait.motion] * b,
                            emotions=None if emotion is None else [emotion] * b)

  def motion(self, jobs: Sequence[Job], portraits: Sequence[Portrait], progress: bool = False) -> list[dict]:
    """The generated motion of each job; jobs with equal sampling settings go through one batched call."""
    out: list[dict | None] = [None] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
      groups.setdefault(job.sampling, []).append(i)
    for idx in groups.values():
      first = jobs[idx[0]].spec
      model = self.motion_model(first.ddim_steps)
      labels = None if jobs[idx[0]].label is None else [jobs[i].label for i in idx]
      motions = model.generate_many([jobs[i].wave for i in idx], [portraits[i].motion for i in idx],
                                    seed=first.seed, w_audio=first.w_audio, emotions=labels,
                                    w_emotion=first.w_emotion, progress=progress)
      for i, m in zip(idx, motions):
        out[i] = m
    return out

  def frames(self, job: Job, portrait: Portrait, motion: dict) -> dict[str, np.ndarray]:
    """The motion to render: the generated expression with the job's head pose."""
    n = len(motion["exp"])
    if job.pose == "video":
      driving = video_pose(self.renderer, job.driving, n, face_models=self.face_models)
      return compose(portrait.motion, motion, "driven", driving)
    if job.pose == "sweep":
      return compose(portrait.motion, motion, "driven", sweep_pose(n))
    return compose(portrait.motion, motion, job.pose)

  def render(self, job: Job, portrait: Portrait, motion: dict, *, progress: bool = False,
             on_frames: Callable[[int], None] | None = None) -> dict:
    """Writes the job's motion (OUT.motion.npz) and video (OUT); returns dict(out, motion, frames, size, seconds).
    `on_frames(n)` is told of each batch of n frames written, and may raise `Cancelled`."""
    spec = job.spec
    cli.save_npz(spec.motion_path, fps=np.int32(FPS), **motion)
    frames = self.frames(job, portrait, motion)
    result = render_video(self.renderer, portrait, frames, spec.out, audio=job.wave, batch_size=self.batch_size,
                          stitching=self.stitching, paste_back=spec.paste_back, progress=progress,
                          stream=spec.stream, on_frames=on_frames,
                          fragment_frames=int(self.model.config.data.window))
    return dict(result, out=spec.out, motion=spec.motion_path, seconds=len(job.wave) / 16000)

  def run(self, jobs: Sequence[Job], *, progress: bool = False,
          on_frames: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, dict | Exception]]:
    """Runs jobs: every portrait, the motion (batched), then each video; yields (index, result or the error) as
    each job ends, in order. `on_frames(index, n)` hears of every batch of frames rendered; when it returns True
    that job stops (its error is a `Cancelled`). A job's UserError or Cancelled ends only that job; other errors end
    the run."""
    jobs = list(jobs)
    portraits = [self.portrait(job) for job in jobs]
    try:
      motions = self.motion(jobs, portraits, progress=progress)
    except UserError as e:
      if len(jobs) == 1:
        yield 0, e
        return
      motions = [None] * len(jobs)   # one job's setting is wrong: each job alone says which
      for i, job in enumerate(jobs):
        try:
          motions[i] = self.motion([job], [portraits[i]], progress=progress)[0]
        except UserError as err:
          motions[i] = err
    for i, (job, portrait, motion) in enumerate(zip(jobs, portraits, motions)):
      if isinstance(motion, Exception):
        yield i, motion
        continue
      tell = None if on_frames is None else functools.partial(_tell, on_frames, i)
      try:
        yield i, self.render(job, portrait, motion, progress=progress, on_frames=tell)
      except (UserError, Cancelled) as e:
        _remove(job.spec.motion_path)
        yield i, e


def _tell(on_frames: Callable[[int, int], bool | None], index: int, n: int) -> None:
  if on_frames(index, n):
    raise Cancelled()


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def read_jobs(path: str) -> list[JobSpec | UserError]:
  """The jobs of a CSV file (a header row naming columns image, audio, out, and optionally emotion, pose, w_audio,
  w_emotion, ddim_steps, seed, face, paste_back, no_crop); relative paths are taken from the CSV's folder. A row
  that cannot be a job becomes the UserError saying why, so the others still run."""
  import csv
  if not os.path.isfile(path):
    raise UserError(f"Jobs file {path} does not exist; check the path.")
  base = os.path.dirname(os.path.abspath(path))
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise UserError(f"Jobs file {path} is not a readable CSV ({e}); save it as UTF-8 CSV with a header row.")
  if not rows:
    raise UserError(f"Jobs file {path} has no jobs; give a header row (image,audio,out,...) and one row per job.")
  missing = [c for c in ("image", "audio", "out") if c not in rows[0]]
  if missing:
    raise UserError(f"Jobs file {path} has no column {', '.join(missing)}; its header must name image, audio and "
                    "out (and optionally emotion, pose, w_audio, w_emotion, ddim_steps, seed, face, paste_back).")
  return [_spec_of_row(row, n, path, base) for n, row in enumerate(rows, start=2)]


_NUMBERS = {"w_audio": float, "w_emotion": float, "ddim_steps": int, "seed": int, "face": int}
_FLAGS = ("paste_back", "no_crop")


def _spec_of_row(row: dict, line: int, path: str, base: str) -> JobSpec | UserError:
  where = lambda p: p if os.path.isabs(p) else os.path.join(base, p)
  row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
  if not all(row.get(c) for c in ("image", "audio", "out")):
    return UserError(f"{path} line {line} lacks an image, audio or out; fill in all three.")
  kw: dict[str, Any] = {}
  for name, kind in _NUMBERS.items():
    if row.get(name):
      try:
        kw[name] = kind(row[name])
      except ValueError:
        return UserError(f"{path} line {line}: {name} {row[name]!r} is not a number; fix that cell.")
  flags = {}
  for name in _FLAGS:
    value = row.get(name, "").lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
      return UserError(f"{path} line {line}: {name} {row[name]!r} is not yes or no; fix that cell.")
    flags[name] = value in ("1", "true", "yes")
  pose = row.get("pose") or "generated"
  if pose.startswith("video:"):
    pose = "video:" + where(pose[len("video:"):])
  return JobSpec(image=where(row["image"]), audio=where(row["audio"]), out=where(row["out"]),
                 emotion=row.get("emotion") or None, pose=pose, paste_back=flags["paste_back"],
                 crop=not flags["no_crop"], **kw)
