"""Portrait + speech -> talking video: what `pipelines/animate.py` (and `reenact.py`, `sample.py`) run.

    renderer = Renderer.from_spec("weights/liveportrait")
    portrait = load_portrait(renderer, *find_portrait("me.jpg"))        # crop, appearance, source motion
    model = MotionModel.load("workdirs/stage2")                        # a trained stage-1 or stage-2 model
    motion = model.generate(load_audio("speech.wav"), portrait.motion, emotion=EMOTIONS.index("happy"))
    frames = compose(portrait.motion, motion, pose="generated")        # or fixed, sweep, a driving video's pose
    render_video(renderer, portrait, frames, "out.mp4", audio="speech.wav")

Motion is applied relative to the portrait, as LivePortrait applies a driving video, with the portrait itself as
the reference frame: the model generates this identity's expression and a pose normalized around the
portrait's own pose, so exp_s + (exp_gen - exp_s) = exp_gen and likewise for the pose. A driving video's pose
(or the preset sweep) is composed relative to its own first frame: R = R_d R_d0^T R_s, t = t_s + (t_d - t_d0),
s = s_s * s_d / s_d0. Keypoints x = s (kp_s R + exp) + t are stitched and rendered in batches that stream into
an H.264 mp4 with the speech muxed in, so memory stays flat for any length.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from playmate_jax import audio, configlib, generator
from playmate_jax import motion as motion_lib
from playmate_jax import run as run_lib
from playmate_jax import video
from playmate_jax.data import stats as stats_lib
from playmate_jax.errors import UserError
from playmate_jax.face import crop as crop_lib
from playmate_jax.face import finder as face_finder
from playmate_jax.face.types import Face
from playmate_jax.generator.factory import window_sampler

log = logging.getLogger(__name__)
from playmate_jax.motion import EMOTIONS, MOTION_KEYS

FPS = 25
POSE_MODES = ("generated", "fixed", "sweep", "video:FILE")
BATCH_SIZES = (2, 4, 8)   # recordings per batched motion call (`MotionModel.generate_many`): the compiled shapes
SWEEP = dict(yaw=(20.0, 4.0), pitch=(6.0, 6.0), roll=(3.0, 9.0))  # preset sweep: (amplitude deg, period s)


def one_frame(motion: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The first frame of a motion dict (MOTION_KEYS; any leading frame axes): exp, kp [21, 3], t [3], the rest
  scalars."""
  per_frame = {"exp": (21, 3), "kp": (21, 3), "t": (3,)}
  return {k: np.asarray(motion[k], np.float32).reshape((-1,) + per_frame.get(k, ()))[0] for k in MOTION_KEYS}


def emotion_label(name: str) -> int:
  """The label of an emotion name (MEAD's order); UserError listing the names for an unknown one."""
  if name.lower() not in EMOTIONS:
    raise UserError(f"Emotion {name!r} is not one this project knows; use one of: {', '.join(EMOTIONS)}.")
  return EMOTIONS.index(name.lower())


# --- the motion model ---------------------------------------------------------------------------------------------

class MotionModel:
  """A trained model (EMA weights) restored once: audio -> motion for a source identity, any length."""

  def __init__(self, run, ddim_steps: int | None = None):
    self.run = run
    self.params, self.config, self.stats = run.params, run.config, run.stats
    self.workdir = run.workdir
    if ddim_steps is not None:
      self.config = self.config.copy_and_resolve_references()
      with self.config.unlocked():
        self.config.sample.ddim_steps = int(ddim_steps)
      configlib.validate(self.config)   # a restored run's config: no device count
    self.encoder = audio.get_encoder(self.config.audio)
    self.sampler = window_sampler(self.config, self.encoder.feature_dim)

  def with_ddim_steps(self, ddim_steps: int) -> "MotionModel":
    """The same weights sampling with another number of DDIM steps (a sampler, and programs, of its own)."""
    return MotionModel(self.run, ddim_steps)

  @classmethod
  def load(cls, checkpoint: str, ddim_steps: int | None = None) -> "MotionModel":
    """From a training workdir (its newest checkpoint) or one checkpoint folder; `random:CONFIG` (e.g.
    random:configs/stage1.py:live) is that config's model with random weights, for trying a pipeline."""
    if checkpoint.startswith("random:"):
      return cls(run_lib.random_run(checkpoint[len("random:"):]), ddim_steps)
    return cls(run_lib.restore_run(checkpoint), ddim_steps)

  @property
  def stage(self) -> int:
    return int(self.config.stage)

  def check_emotion(self, emotion: int | None) -> None:
    """UserError unless this model takes `emotion`: None always, a label only a stage-2 model."""
    if emotion is not None and self.stage != 2:
      raise UserError(f"Checkpoint {self.workdir} is a stage-{self.stage} model, which has no emotion control; "
                      "drop the emotion (--emotion) or pass a stage-2 checkpoint (trained with configs/stage2.py).")

  def warm_up(self, emotion: bool = False) -> None:
    """Traces the sampler and loads (or compiles) its programs by generating one window of silence for the
    training data's average identity, so that `generate` then runs at once; `emotion` says whether the real call
    will pass one (another program). `pipelines/animate.py` runs it on a worker thread while the portrait is
    being prepared."""
    samples = self.config.data.window * self.config.audio.sample_rate // self.config.audio.fps
    self.generate(np.zeros(samples, np.float32), self.default_source(), emotion=0 if emotion else None)

  def default_source(self) -> dict[str, np.ndarray]:
    """The training data's average identity (one frame of motion), for sampling without a portrait."""
    s = self.stats
    pose = s.default_pose_mean
    return {"exp": s.exp_mean.reshape(21, 3), "pitch": pose[0], "yaw": pose[1], "roll": pose[2],
            "t": np.array([pose[3], pose[4], 0.0], np.float32), "scale": pose[5], "kp": s.kp_mean.reshape(21, 3)}

  def generate(self, waveform: np.ndarray, source: Mapping[str, Any], *, seed: int = 0,
               w_audio: float | None = None, emotion: int | None = None, w_emotion: float | None = None,
               progress: bool = False) -> dict[str, np.ndarray]:
    """Motion fields [T, ...] (T = 25 fps frames of the 16 kHz waveform) for one source frame of motion (keys
    MOTION_KEYS, one frame). `emotion` (a label) needs a stage-2 model and guides by three-way CFG."""
    return self.generate_many([waveform], [source], seed=seed, w_audio=w_audio,
                              emotions=None if emotion is None else [emotion], w_emotion=w_emotion,
                              progress=progress)[0]

  def generate_many(self, waveforms: Sequence[np.ndarray], sources: Sequence[Mapping[str, Any]], *, seed: int = 0,
                    w_audio: float | None = None, emotions: Sequence[int] | None = None,
                    w_emotion: float | None = None, progress: bool = False) -> list[dict[str, np.ndarray]]:
    """`generate` for several recordings at once, sampled as one batch on the device (the DiT's small matmuls
    then do several recordings' work for about the price of one). Shorter recordings are padded with silence
    past their end, which their own frames never see (windows only look back); the batch is padded to a size in
    BATCH_SIZES with copies of the first row, so a few compiled shapes serve any number of jobs. One key for the
    batch: a recording's noise depends on its row, so the same seed alone and in a batch gives different motion."""
    if emotions is not None:
      for label in emotions:
        self.check_emotion(label)
    elif w_emotion is not None:
      raise UserError("An emotion guidance weight has no effect without an emotion; name one or drop the weight.")
    n = len(waveforms)
    feats = [self.stats.normalize_audio(self.encoder.encode(np.asarray(w, np.float32))) for w in waveforms]
    srcs = [one_frame(s) for s in sources]
    mstats, idents = [], []
    for src in srcs:
      vec = stats_lib.motion_vector({k: v[None] for k, v in src.items()})[0]
      mstats.append(self.stats.source_motion_stats(vec[motion_lib.EXP_DIM:]))
      idents.append(stats_lib.identity_vector(np.asarray(_normalized(vec, mstats[-1])), src["kp"]))
    lengths = [len(f) for f in feats]
    if n == 1:
      audio, ident, labels = feats[0], idents[0], None if emotions is None else int(emotions[0])
    else:
      b = next((size for size in BATCH_SIZES if size >= n), n)
      audio = np.zeros((b, max(lengths), feats[0].shape[-1]), np.float32)
      for i, f in enumerate(feats):
        audio[i, :len(f)] = f
      audio[n:] = audio[0]
      ident = np.stack(idents + [idents[0]] * (b - n))
      labels = None if emotions is None else np.array(list(emotions) + [emotions[0]] * (b - n), np.int32)
    out = generator.sample_sequence(self.sampler, self.params, audio, ident, jax.random.key(seed), self.config,
                                    w_audio=w_audio, emotion=labels, w_emotion=w_emotion, progress=progress)
    out = out[None] if n == 1 else out
    results = []
    for i in range(n):
      fields = _per_frame(lambda v, st=mstats[i]: _fields(v, st), out[i, :lengths[i]])
      fields["kp"] = np.broadcast_to(srcs[i]["kp"], (lengths[i], 21, 3)).astype(np.float32)
      results.append(fields)
    return results


# --- the portrait ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Portrait:
  """A portrait ready to animate: the original image, its face crop, appearance feature volume, its motion
  (one frame, numpy: pitch, yaw, roll, scale [1], exp and kp [1, 21, 3], t [1, 3]) and keypoints [1, 21, 3]."""
  image: np.ndarray
  crop: crop_lib.Crop
  feature: Any
  motion: dict[str, np.ndarray]
  keypoints: Any


def find_portrait(path: str, crop: bool = True, face: int | None = None, face_models: str | None = None,
                  report=print) -> tuple[np.ndarray, Face | None]:
  """The portrait's pixels and the face to animate (None with crop=False). Runs before anything heavy: a missing
  file, an unreadable image or a photo with no human face stops here with one sentence naming the file."""
  image = crop_lib.load_image(path)
  if not crop:
    return image, None
  return image, face_finder.portrait_face(image, path, face, face_models, report)


def center_crop(image: np.ndarray, size: int) -> crop_lib.Crop:
  """The image's largest centred square as a size x size Crop (for an image that already is a face crop)."""
  h, w = image.shape[:2]
  side = min(h, w)
  y0, x0 = (h - side) // 2, (w - side) // 2
  square = image[y0:y0 + side, x0:x0 + side]
  interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
  pixels = cv2.resize(square, (size, size), interpolation=interp)
  return crop_lib.Crop(image=pixels.astype(np.float32) / 255.0, matrix=crop_lib.center_crop_matrix(h, w, size))


def load_portrait(renderer, image: np.ndarray, face: Face | None) -> Portrait:
  """Crops the portrait around `face` (LivePortrait's source crop; None: the centred square, no detection) and
  runs F and M on the crop once."""
  if face is None:
    crop = center_crop(image, renderer.crop_size)
  else:
    crop = crop_lib.crop_face(image, face.crop_landmarks, crop_lib.SOURCE, renderer.crop_size)
  batch = crop.image[None]
  src = {k: np.asarray(v, np.float32) for k, v in renderer.extract_motion(batch).items()}
  return Portrait(image=image, crop=crop, feature=renderer.extract_appearance(batch), motion=src,
                  keypoints=renderer.keypoints(src))


# --- head pose -------------------------------------------------------------------------------------------------------

def sweep_pose(num_frames: int) -> dict[str, np.ndarray]:
  """The preset sweep: slow sinusoids in yaw, pitch and roll around a still head (driving-pose dict [T])."""
  t = np.arange(num_frames, dtype=np.float32) / FPS
  out = {k: (a * np.sin(2 * np.pi * t / period)).astype(np.float32) for k, (a, period) in SWEEP.items()}
  return dict(out, t=np.zeros((num_frames, 3), np.float32), scale=np.ones(num_frames, np.float32))


def video_pose(renderer, path: str, num_frames: int, batch_size: int = 64,
               face_models: str | None = None) -> dict[str, np.ndarray]:
  """The head pose of a driving video's first `num_frames` frames at 25 fps (pitch, yaw, roll, t, scale [T]),
  from the motion extractor on one fixed face crop (`face.finder.video_crop_matrix`); a shorter video holds its
  last pose."""
  matrix = face_finder.video_crop_matrix(path, face_models)
  poses = []
  frames = itertools.islice(video.read_frames(path, FPS), num_frames)
  for batch in chunks(frames, batch_size):
    crops = np.stack([face_finder.crop_frame(f, matrix, renderer.crop_size) for f in batch])
    n = len(crops)
    m = jax.device_get(renderer.extract_motion(pad_rows(crops, batch_size)))
    poses.append({k: np.asarray(m[k][:n], np.float32) for k in ("pitch", "yaw", "roll", "t", "scale")})
  if not poses:
    raise UserError(f"Driving video {path} has no frames; give a video with at least one frame.")
  return {k: pad_rows(np.concatenate([p[k] for p in poses]), num_frames) for k in poses[0]}


def compose(source: Mapping[str, np.ndarray], generated: Mapping[str, np.ndarray], pose: str = "generated",
            driving: Mapping[str, np.ndarray] | None = None, chunk: int | None = None) -> dict[str, np.ndarray]:
  """Per-frame motion to render (exp, rotation [T, 3, 3], t, scale, with pitch/yaw/roll): the generated
  expression with the head pose of `pose` — 'generated', 'fixed' (the portrait's own), or 'driven' by
  `driving` (a driving-pose dict [T], e.g. `video_pose` or `sweep_pose`, composed relative to its first frame)."""
  n = len(generated["exp"])
  src = {k: np.asarray(v, np.float32).reshape((1,) + np.shape(v)[1:]) for k, v in source.items()}
  if pose == "generated":
    fields = {k: generated[k] for k in ("pitch", "yaw", "roll", "t", "scale")}
  elif pose == "fixed":
    fields = {k: np.repeat(src[k], n, axis=0) for k in ("pitch", "yaw", "roll", "t", "scale")}
  elif pose == "driven":
    drv = dict(driving, exp=np.zeros((n, 21, 3), np.float32))
    first = {k: v[:1] for k, v in drv.items()}
    rel = _per_frame(lambda d: _relative_motion(src, d, first), drv, chunk=chunk)
    fields = {k: rel[k] for k in ("pitch", "yaw", "roll", "t", "scale", "rotation")}
  else:
    raise ValueError(f"pose {pose!r}: use generated, fixed or driven")
  out = dict(fields, exp=np.asarray(generated["exp"], np.float32))
  if "rotation" not in out:
    out["rotation"] = _per_frame(_rotation_matrix, out["pitch"], out["yaw"], out["roll"], chunk=chunk)
  out["t"] = np.asarray(out["t"], np.float32).copy()
  out["t"][..., 2] = 0.0  # LivePortrait drops tz
  return out


# --- rendering -------------------------------------------------------------------------------------------------------

def chunks(items: Iterable, size: int) -> Iterator[list]:
  """Lists of `size` consecutive items (the last one shorter)."""
  it = iter(items)
  while batch := list(itertools.islice(it, size)):
    yield batch


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
  """a [n, ...] with copies of its last row appended up to [size, ...] (unchanged if n >= size): a short last batch
  takes the shape the full ones compiled for."""
  a = np.asarray(a)
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]) if len(a) < size else a


def render_stream(renderer, feature, x_s, keypoint_batches: Iterable[tuple[Any, int]], write, *,
                  stitching: bool = True) -> None:
  """Renders batches of driving keypoints (x_d [B, 21, 3], number of real frames n <= B) and hands each batch's
  first n frames (RGB uint8 [n, R, R, 3]) to `write`; each batch renders on the device while the previous one is
  written (asynchronous dispatch)."""
  pending = None
  for x_d, n in keypoint_batches:
    if stitching:
      x_d = renderer.stitch(x_s, x_d)
    images = _to_uint8(renderer.warp_decode(feature, x_s, x_d))   # 4x less to copy than float32
    if pending is not None:
      write(np.asarray(pending[0])[:pending[1]])   # cut on the host: a device slice per n is a program each
    pending = (images, n)
  if pending is not None:
    write(np.asarray(pending[0])[:pending[1]])


RENDER_BATCH = 16               # frames per renderer call where the device's free memory is not known (a CPU)
RESERVE_BYTES = 3 * 2**30       # free device memory left to the rest of a job (motion sampling, F and M, buffers)


def device_free_bytes() -> int | None:
  """Bytes the first device's allocator can still hand out (its limit less what is in use); None where the backend
  does not say (the CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return None
  return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def auto_render_batch(renderer, largest: int = RENDER_BATCH, free_bytes: int | None = None) -> tuple[int, str]:
  """(frames per renderer call, why): the largest of largest, largest/2, ..., 1 whose W+G program
  (`Renderer.warp_decode_bytes`) fits the device's free memory less RESERVE_BYTES; `largest` where the free memory is
  not known; 1 where nothing fits (a render that then runs out of memory stops with one sentence, cli.run)."""
  free = device_free_bytes() if free_bytes is None else free_bytes
  if free is None:
    return largest, "the device does not report its memory"
  budget = free - RESERVE_BYTES
  batch = largest
  while batch > 1:
    need = renderer.warp_decode_bytes(batch)
    if need <= budget:
      return batch, f"{need / 2**30:.1f} GiB of {free / 2**30:.1f} GiB free"
    batch //= 2
  return 1, f"{renderer.warp_decode_bytes(1) / 2**30:.1f} GiB at batch 1, {free / 2**30:.1f} GiB free"


def check_batch_size(batch_size: int | None) -> None:
  """--batch-size as the commands take it: None (chosen by render_batch) or at least 1; one sentence otherwise."""
  if batch_size is not None and batch_size < 1:
    raise UserError(f"--batch-size {batch_size} must be at least 1.")


def render_batch(renderer, batch_size: int | None) -> tuple[int, str]:
  """(frames per renderer call, a note saying where it came from): `batch_size` as given, or for None the choice of
  auto_render_batch, also logged."""
  check_batch_size(batch_size)
  if batch_size is not None:
    return int(batch_size), f"{batch_size} frames per call (--batch-size)"
  batch, why = auto_render_batch(renderer)
  note = f"{batch} frames per call (auto: {why})"
  log.info("Rendering %s.", note)
  return batch, note


def warm_up_render(renderer, portrait: Portrait, batch_size: int = 16, stitching: bool = True) -> None:
  """Traces and loads (or compiles) what `render_video` runs, for its batch size, by rendering one batch of the
  portrait's own keypoints; `pipelines/animate.py` runs it while the motion model is still loading."""
  eye = np.broadcast_to(np.eye(3, dtype=np.float32), (batch_size, 3, 3))
  zeros = np.zeros((batch_size, 21, 3), np.float32)
  x_d = renderer.keypoints(dict(kp=portrait.motion["kp"], rotation=eye, exp=zeros, t=zeros[:, 0],
                                scale=np.ones(batch_size, np.float32)))
  render_stream(renderer, portrait.feature, portrait.keypoints, [(x_d, 1)], lambda images: None,
                stitching=stitching)


# The motion arithmetic runs as jitted programs: run eagerly, every jnp operation is a program of its own, which a
# fresh process compiles (or loads from the compilation cache) one by one before the first frame.
PER_FRAME_CHUNK = 1500  # frames per call of the per-frame programs (60 s at 25 fps)


def _per_frame(fn: Callable, *frames: Any, chunk: int | None = None) -> Any:
  """fn(*frames) for arrays (or dicts of arrays) of frames [T, ...], `chunk` frames per call (PER_FRAME_CHUNK by
  default; a live session's window), the last chunk padded with copies of its final frame: one compiled shape for
  audio of any length. Returns float32 numpy."""
  chunk = chunk or PER_FRAME_CHUNK
  n = len(jax.tree.leaves(frames)[0])
  parts = []
  for start in range(0, n, chunk):
    m = min(chunk, n - start)
    out = fn(*jax.tree.map(lambda a: pad_rows(np.asarray(a)[start:start + m], chunk), frames))
    parts.append(jax.tree.map(lambda a: np.asarray(a, np.float32)[:m], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


_normalized = jax.jit(motion_lib.normalize_motion)
_relative_motion = jax.jit(motion_lib.relative_motion)
_rotation_matrix = jax.jit(motion_lib.rotation_matrix)


@jax.jit
def _fields(v, stats):
  """The motion fields (exp, pitch, yaw, roll, t, scale) of normalized motion vectors."""
  return motion_lib.unpack_motion(motion_lib.denormalize_motion(v, stats))


@jax.jit
def _to_uint8(images):
  return (jnp.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(jnp.uint8)


def render_video(renderer, portrait: Portrait, frames: Mapping[str, np.ndarray], out: str, *,
                 audio: str | np.ndarray | None, batch_size: int = 16, stitching: bool = True,
                 paste_back: bool = False, progress: bool = True, stream: str | None = None,
                 on_frames: Callable[[int], None] | None = None, fragment_frames: int = 80) -> dict:
  """Renders composed motion (`compose`) of the portrait into an H.264 mp4 at 25 fps with the audio muxed in
  (a file or a 16 kHz waveform) as the frames are encoded; returns dict(frames, size (h, w)). `stream`: also a
  fragmented MP4 there, a fragment every `fragment_frames` (the model's window), playable while it grows
  (`video.VideoWriter`).
  `on_frames(n)` hears of each batch of n frames written; an exception it raises stops the video, unwritten."""
  n = len(frames["exp"])

  def batches():
    for start in range(0, n, batch_size):
      part = {k: pad_rows(np.asarray(frames[k][start:start + batch_size], np.float32), batch_size)
              for k in ("rotation", "exp", "t", "scale")}
      yield renderer.keypoints(dict(part, kp=portrait.motion["kp"])), min(batch_size, n - start)

  paster = crop_lib.PasteBack(portrait.image, portrait.crop, renderer.render_size) if paste_back else None
  with video.VideoWriter(out, fps=FPS, audio=audio, num_frames=n, stream=stream,
                         fragment_frames=fragment_frames) as writer, \
       tqdm(total=n, unit="frame", desc="render", disable=not progress) as bar:

    def write(images):
      for image in images:
        writer.write(paster(image) if paster is not None else image)
      bar.update(len(images))
      if on_frames is not None:
        on_frames(len(images))

    render_stream(renderer, portrait.feature, portrait.keypoints, batches(), write, stitching=stitching)
  return {"frames": writer.num_frames, "size": writer.size}
