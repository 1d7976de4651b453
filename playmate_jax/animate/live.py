"""Live animation: speech in as it is spoken, frames out as soon as their window of motion can be sampled.

    session = LiveSession(model, renderer, portrait, input_rate=48000)    # a live model: audio_lookahead >= 0
    for chunk in microphone():                                            # int16 or float PCM, any length
      for frame in session.push(chunk):
        show(frame.index, frame.image)
    for frame in session.finish():                                        # the rest, at the end of the speech
      show(frame.index, frame.image)

A live model (configs/stage1.py:live; `config.model.audio_lookahead` = A) generates window i (frames iL .. iL+L-1)
from audio up to frame iL + L - 1 + A, so the session samples each window as soon as that audio has arrived,
renders its L frames and hands them back. The first frame of a window thus waits for L + A frames of audio, the
last for A, plus the compute. Every window is sampled exactly as `MotionModel.generate` samples it from the whole
recording (same key per window, same previous motion, log-mel rows computed from their own samples), so the motion
does not depend on how the speech was cut into chunks. The session keeps the motion context, the portrait's
features and the compiled programs; each chunk costs only its own work.
"""

from __future__ import annotations

import dataclasses
import time

import cv2
import jax
import numpy as np

from playmate_jax import motion as motion_lib
from playmate_jax.animate import (MotionModel, Portrait, _fields, _normalized, _per_frame, _to_uint8, compose,
                                  one_frame, pad_rows)
from playmate_jax.audio import num_frames
from playmate_jax.data import stats as stats_lib
from playmate_jax.errors import UserError

RATE = 16000


@dataclasses.dataclass
class Frame:
  """One rendered frame: its index (25 fps from the speech's start), RGB uint8 pixels, and when the last sample of
  its own audio arrived (time.perf_counter() seconds): now minus that is the frame's latency."""
  index: int
  image: np.ndarray
  audio_arrived: float

  def jpeg(self, quality: int = 85) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes()


def check_live(model: MotionModel) -> None:
  """UserError unless the model has a bounded audio look-ahead and the log-mel front end."""
  if int(model.config.model.audio_lookahead) < 0:
    raise UserError(f"Checkpoint {model.workdir} is an offline model (it reads a window's whole audio); live "
                    "animation needs one trained with configs/stage1.py:live (or :demo_live), which sees a bounded "
                    "look-ahead.")
  if not hasattr(model.encoder, "rows"):
    raise UserError(f"Checkpoint {model.workdir} uses the {model.config.audio.encoder} audio encoder, which reads "
                    "whole chunks of a recording; live animation needs the mel front end.")


class LiveSession:
  """One live stream: a portrait, a live motion model and a renderer; audio pushed in, frames out."""

  def __init__(self, model: MotionModel, renderer, portrait: Portrait, *, input_rate: int = RATE, seed: int = 0,
               emotion: int | None = None, w_audio: float | None = None, w_emotion: float | None = None,
               stitching: bool = True):
    check_live(model)
    model.check_emotion(emotion)
    if not 8000 <= int(input_rate) <= 192000:
      raise UserError(f"Sample rate {input_rate} Hz is not one this service takes; send 8000 to 192000 Hz PCM.")
    cfg = model.config
    self.model, self.renderer, self.portrait = model, renderer, portrait
    self.window, self.context = int(cfg.data.window), int(cfg.data.audio_context)
    self.lookahead = int(cfg.model.audio_lookahead)
    self.stitching = stitching
    self.w_audio = float(cfg.sample.w_audio if w_audio is None else w_audio)
    self.emotion = None if emotion is None else np.array([emotion], np.int32)
    self.w_emotion = 0.0 if emotion is None else float(cfg.sample.w_emotion if w_emotion is None else w_emotion)
    self.key = jax.random.key(seed)
    self.input_rate = int(input_rate)
    self._resampler = None
    if self.input_rate != RATE:
      import soxr   # librosa's resampler: a stream keeps its state between chunks
      self._resampler = soxr.ResampleStream(self.input_rate, RATE, 1, dtype="float32", quality="HQ")
    source = one_frame(portrait.motion)
    vec = stats_lib.motion_vector({k: v[None] for k, v in source.items()})[0]
    self.mstats = model.stats.source_motion_stats(vec[motion_lib.EXP_DIM:])
    ident = stats_lib.identity_vector(np.asarray(_normalized(vec, self.mstats)), source["kp"])
    self.identity = ident[None].astype(np.float32)
    self.prev = np.repeat(self.identity[:, None, :motion_lib.MOTION_DIM], int(cfg.data.prev_frames), axis=1)
    self._wave = np.zeros(RATE * 60, np.float32)       # grows by doubling
    self.samples = 0                                   # 16 kHz samples received
    self._arrivals: list[tuple[int, float]] = []       # (samples received, when) per push
    self._features = np.zeros((0, model.encoder.feature_dim), np.float32)
    self.next_window = 0
    self.frames_out = 0
    self._motion: list[dict] = []                     # the generated motion fields, window by window
    self.finished = False

  # --- audio in -------------------------------------------------------------------------------------------------

  def push(self, pcm: np.ndarray | bytes) -> list[Frame]:
    """Adds audio (int16 little-endian bytes, or an int16 / float array in [-1, 1] at the input rate); returns the
    frames whose windows it completed."""
    if self.finished:
      raise UserError("This live session has ended; start a new one to send more speech.")
    wave = _as_float(pcm)
    if self._resampler is not None:
      wave = self._resampler.resample_chunk(wave)
    self._append(wave)
    return self._ready_windows(final=False)

  def finish(self) -> list[Frame]:
    """The end of the speech: the remaining frames (the look-ahead past the end is silence, as for a file)."""
    if self.finished:
      return []
    if self._resampler is not None:
      self._append(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    self.finished = True
    return self._ready_windows(final=True)

  def _append(self, wave: np.ndarray) -> None:
    need = self.samples + len(wave)
    if need > len(self._wave):
      grown = np.zeros(max(need, 2 * len(self._wave)), np.float32)
      grown[:self.samples] = self._wave[:self.samples]
      self._wave = grown
    self._wave[self.samples:need] = wave
    self.samples = need
    self._arrivals.append((need, time.perf_counter()))

  @property
  def total_frames(self) -> int | None:
    """Frames of the whole speech, once it has ended."""
    return num_frames(self.samples) if self.finished else None

  def motion(self) -> dict[str, np.ndarray]:
    """The motion generated so far (the dataset's fields, [frames, ...]), as `MotionModel.generate` returns it."""
    if not self._motion:
      return {}
    out = {k: np.concatenate([m[k] for m in self._motion]) for k in self._motion[0]}
    out["kp"] = np.broadcast_to(one_frame(self.portrait.motion)["kp"], (len(out["exp"]), 21, 3)).astype(np.float32)
    return out

  # --- windows ----------------------------------------------------------------------------------------------------

  def _final_rows(self) -> int:
    """Feature rows whose samples have all arrived (all of them once the speech has ended)."""
    if self.finished:
      return self.total_frames
    enc = self.model.encoder   # row r is final once row_end(r) samples have arrived
    return max(0, (self.samples + enc.n_fft // 2 - enc.hop // 2 - enc.n_fft) // enc.hop + 1)

  def _ready_windows(self, final: bool) -> list[Frame]:
    rows = self._final_rows()
    if rows > len(self._features):
      new = self.model.encoder.rows(self._wave[:self.samples], len(self._features), rows)
      self._features = np.concatenate([self._features, self.model.stats.normalize_audio(new)])
    out = []
    l, a = self.window, self.lookahead
    while True:
      i = self.next_window
      end = self.total_frames if final else None
      if final and i * l >= end:
        break
      if not final and (i + 1) * l + a > rows:     # the window's audio (to its last frame + A) has not all arrived
        break
      out += self._run_window(i, end)
      self.next_window += 1
    return out

  def _run_window(self, i: int, end: int | None) -> list[Frame]:
    l, c = self.window, self.context
    sampler = self.model.sampler
    audio = np.zeros((1, sampler.max_windows * l + 2 * c, self._features.shape[1]), np.float32)
    lo, hi = i * l - c, min(i * l + l + c, len(self._features))
    audio[0, max(lo, 0) - lo:hi - lo] = self._features[max(lo, 0):hi]
    x0, self.prev = sampler.windows(self.model.params, audio, self.prev, self.identity, self.key, i, 1, self.w_audio,
                                    self.emotion, self.w_emotion)
    count = l if end is None else min(l, end - i * l)
    vec = np.asarray(x0)[0, :count]
    # A window's rows, not PER_FRAME_CHUNK's 1500: the per-frame programs run once per window here.
    fields = _per_frame(lambda v: _fields(v, self.mstats), vec, chunk=self.window)
    self._motion.append(fields)
    frames = compose(self.portrait.motion, fields, "generated", chunk=self.window)
    images = self._render(frames, count)
    first = self.frames_out
    self.frames_out += count
    out = [Frame(first + j, images[j], self._arrival(first + j)) for j in range(count)]
    keep = (first + count) * self.model.encoder.hop
    self._arrivals = [(n, t) for n, t in self._arrivals if n >= keep] or self._arrivals[-1:]
    return out

  def _arrival(self, frame: int) -> float:
    """When the last sample of frame `frame`'s own audio arrived (perf_counter seconds)."""
    end = min((frame + 1) * self.model.encoder.hop, self.samples)
    return next((t for n, t in self._arrivals if n >= end), self._arrivals[-1][1])

  def _render(self, frames: dict, count: int) -> np.ndarray:
    r, p = self.renderer, self.portrait
    part = {k: pad_rows(np.asarray(frames[k], np.float32), self.window) for k in ("rotation", "exp", "t", "scale")}
    x_d = r.keypoints(dict(part, kp=p.motion["kp"]))
    if self.stitching:
      x_d = r.stitch(p.keypoints, x_d)
    return np.asarray(_to_uint8(r.warp_decode(p.feature, p.keypoints, x_d)))[:count]


def _as_float(pcm: np.ndarray | bytes) -> np.ndarray:
  """Mono float32 in [-1, 1] from int16 bytes or an int16 / float array; UserError for anything else."""
  if isinstance(pcm, (bytes, bytearray, memoryview)):
    if len(pcm) % 2:
      raise UserError(f"An audio chunk of {len(pcm)} bytes is not 16-bit PCM (an even number of bytes); send mono "
                      "int16 little-endian samples.")
    pcm = np.frombuffer(pcm, "<i2")
  pcm = np.asarray(pcm)
  if pcm.ndim != 1:
    raise UserError(f"An audio chunk of shape {pcm.shape} is not mono; send one channel.")
  if pcm.dtype == np.int16:
    return pcm.astype(np.float32) / 32768.0
  if pcm.dtype.kind == "f":
    return np.clip(pcm.astype(np.float32), -1.0, 1.0)
  raise UserError(f"Audio samples of type {pcm.dtype} are not PCM this session takes; send int16 or float32.")


def warm_up(model: MotionModel, renderer, portrait: Portrait) -> None:
  """Traces and loads (or compiles) a live session's programs: one window sampled and rendered."""
  session = LiveSession(model, renderer, portrait)
  session.push(np.zeros(RATE, np.float32))
  session.finish()

