"""wav2vec2 / HuBERT features at one row per 25 fps video frame: the `AudioEncoder` over a converted model.

Frames and video rows. The conv stack has total stride S (320 samples, 20 ms at 16 kHz) and receptive field R
(400 samples). The waveform is padded with P = (R - S) // 2 zeros on the left (40 samples), so 50 Hz frame j
sees samples [S j - P, S j - P + R) = [320 j - 40, 320 j + 360) and is centred on the middle of the 20 ms slot
[S j, S (j + 1)); it is padded with zeros on the right to S (k T - 1) + R samples in all, where
T = num_frames(len(wave)) and k = (sample_rate / fps) / S frames make one video frame (2 at 25 fps), so the
model gives exactly k T frames. Row i is the mean of frames k i .. k i + k - 1: it covers exactly video frame
i's span [i hop, (i + 1) hop) (hop = 640 samples), sees samples [640 i - 40, 640 i + 680) through the conv stack,
is centred on the frame, and there are exactly T rows, like the log-mel encoder's. Feature layer N (or -1) means
`last_hidden_state`. Checkpoints whose preprocessor_config.json sets do_normalize get HF's input normalization
(zero mean, unit variance over the file).

Long audio. Frames are computed in windows of `chunk + 2 * overlap` rows (one compiled shape, several windows
per call), each keeping its central `chunk` rows; the first and last windows are shifted inwards so that every
window is full of audio, and audio shorter than one window is padded and masked (exactly equal to running the
whole clip at once). Interior rows see `overlap` rows of context on each side; self-attention is global, so
a window sees less context than the whole file would give, which is the only difference from unchunked
features. GroupNorm statistics (and the input normalization of `do_normalize` checkpoints) are computed over
the whole file in a cheap first pass, so they do not depend on the chunking. Memory stays flat: nothing of
the size of the audio is allocated besides the input waveform and the output rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from playmate_jax.audio.io import num_frames
from playmate_jax.audio.wav2vec2 import (SAMPLE_RATE, Wav2Vec2Config, Wav2Vec2Model, base_config, load_model,
                                         random_model, read_manifest)
from playmate_jax.errors import UserError

INPUT_NORM_EPS = 1e-7             # HF Wav2Vec2FeatureExtractor: (x - mean) / sqrt(var + 1e-7)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
  """What, besides the weights, decides the features (all of it goes into the encoder's name)."""
  layers: tuple[int, ...] = (-1,)
  layer_reduce: str = "single"      # "single" (one hidden state) or "mean" (plain average of several)
  chunk_rows: int = 500             # rows kept per window (20 s at 25 fps)
  overlap_rows: int = 50            # context rows on each side of a window (2 s)
  chunk_batch: int = 8              # windows per compiled call (audio of fewer windows runs them one by one)
  dtype: str = "float32"
  sample_rate: int = SAMPLE_RATE
  fps: int = 25

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "FeatureSettings":
    """From config.audio (keys it lacks take the defaults above)."""
    d = cls()
    fps = int(c.get("fps", d.fps))
    layers = str(c.get("layers", "-1")).replace(" ", "")
    if not re.fullmatch(r"-?\d+(,-?\d+)*", layers):
      raise UserError(f"config.audio.layers = {layers!r} is not a comma-separated list of hidden-state indices; "
                      "use e.g. '-1' (the last) or '6,7,8'.")
    return cls(layers=tuple(int(v) for v in layers.split(",")), layer_reduce=str(c.get("layer_reduce", "single")),
               chunk_rows=int(round(float(c.get("chunk_seconds", d.chunk_rows / fps)) * fps)),
               overlap_rows=int(round(float(c.get("overlap_seconds", d.overlap_rows / fps)) * fps)),
               chunk_batch=int(c.get("chunk_batch", d.chunk_batch)), dtype=str(c.get("dtype", d.dtype)),
               sample_rate=int(c.get("sample_rate", d.sample_rate)), fps=fps)

  def check(self, cfg: Wav2Vec2Config) -> tuple[int, ...]:
    """Validated settings for this model: the layer indices, made non-negative."""
    n = cfg.num_hidden_layers + 1
    bad = [i for i in self.layers if not -n <= i < n]
    if bad:
      raise UserError(f"config.audio.layers has index {bad[0]} but this model has hidden states 0..{n - 1} "
                      f"(or -{n}..-1); pick indices in that range.")
    if self.layer_reduce not in ("single", "mean"):
      raise UserError(f"config.audio.layer_reduce = {self.layer_reduce!r}; use 'single' or 'mean'.")
    if self.layer_reduce == "single" and len(self.layers) != 1:
      raise UserError(f"config.audio.layers names {len(self.layers)} hidden states but layer_reduce is 'single'; "
                      "give one index or set config.audio.layer_reduce=mean.")
    if self.dtype not in _DTYPES:
      raise UserError(f"config.audio.dtype = {self.dtype!r}; use one of {', '.join(_DTYPES)}.")
    if self.sample_rate != SAMPLE_RATE:
      raise UserError(f"config.audio.sample_rate = {self.sample_rate} but wav2vec2/HuBERT take {SAMPLE_RATE} Hz "
                      f"audio; set config.audio.sample_rate={SAMPLE_RATE} (files are resampled on loading).")
    hop = self.sample_rate / self.fps
    if hop % cfg.total_stride:
      raise UserError(f"config.audio.fps = {self.fps} gives {hop:g} samples per video frame, not a multiple of "
                      f"the encoder's {cfg.total_stride}-sample frame step; use fps 25 (or 50).")
    if self.chunk_rows < 1 or self.overlap_rows < 0 or self.chunk_batch < 1:
      raise UserError(f"config.audio.chunk_seconds must cover at least one video frame (1/{self.fps} s), "
                      "overlap_seconds must not be negative and chunk_batch must be at least 1.")
    return tuple(sorted({i % n for i in self.layers}))


@functools.lru_cache(maxsize=16)
def _jitted(graphdef, layers: tuple[int, ...], k: int, rows: int, dtype: str):
  """(chunk, moments, trace counts), shared by every encoder of the same model structure and settings.

  chunk(state, windows [B, window_samples], frame_len [B], stats) -> [B, rows, D] features of whole windows;
  moments(state, pieces [B, window_samples], valid [B]) -> per-piece mean and M2 of the first conv's channels.
  """
  counts = {"chunk": 0, "moments": 0}
  frames = rows * k

  def chunk(state, windows, frame_len, stats):
    counts["chunk"] += 1
    model = nnx.merge(graphdef, state)
    mask = jnp.arange(frames)[None, :] < frame_len[:, None]
    hidden, last = model(windows, mask, stats)
    hidden = hidden[:-1] + [last]
    x = sum(hidden[i] for i in layers) / len(layers)
    return x.reshape(windows.shape[0], rows, k, -1).mean(2)

  def moments(state, pieces, valid):
    counts["moments"] += 1
    conv = nnx.merge(graphdef, state).feature_extractor.conv_layers[0].conv
    y = conv(pieces.astype(_DTYPES[dtype])[..., None]).astype(jnp.float32)
    m = (jnp.arange(y.shape[1])[None, :] < valid[:, None])[..., None]
    n = jnp.maximum(valid, 1).astype(jnp.float32)[:, None]
    mean = jnp.where(m, y, 0.0).sum(1) / n
    return mean, jnp.where(m, jnp.square(y - mean[:, None]), 0.0).sum(1)

  return jax.jit(chunk), jax.jit(moments), counts


def _mean_var(wave: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
  """Mean and (biased) variance of a waveform in float64, one block at a time (no copy of the whole signal)."""
  n = len(wave)
  mean = sum(float(wave[i:i + block].sum(dtype=np.float64)) for i in range(0, n, block)) / n
  sq = sum(float(np.square(wave[i:i + block].astype(np.float64) - mean).sum()) for i in range(0, n, block))
  return mean, sq / n


class Wav2Vec2Encoder:
  """`AudioEncoder` over a converted wav2vec2/HuBERT folder: float32 [num_frames(len(wave)), hidden_size].

  Built from `config.audio` (encoder "wav2vec2", weights = the converted folder, layers, layer_reduce,
  chunk_seconds, overlap_seconds, chunk_batch, dtype). Only the manifest is read until the first `encode`, so
  `name` and `feature_dim` are cheap.
  """

  def __init__(self, audio_config: ml_collections.ConfigDict):
    weights = os.path.expanduser(str(audio_config.weights or ""))
    if not weights:
      raise UserError("config.audio.encoder is 'wav2vec2' but config.audio.weights is empty; convert a HF model "
                      "folder with `python pipelines/convert.py wav2vec2 --src HF_DIR --dst DIR` and pass "
                      "--config.audio.weights=DIR.")
    cfg, record = read_manifest(weights)
    settings = FeatureSettings.from_config(audio_config)
    self._setup(cfg, settings, weights_id=f"{os.path.basename(os.path.normpath(weights))}.{record['digest'][:8]}",
                do_normalize=bool(record.get("do_normalize", False)),
                loader=lambda dtype: load_model(weights, dtype)[1])

  @classmethod
  def from_model(cls, model: Wav2Vec2Model | None, cfg: Wav2Vec2Config,
                 settings: FeatureSettings = FeatureSettings(), *, weights_id: str = "random",
                 do_normalize: bool = False) -> "Wav2Vec2Encoder":
    """An encoder over an in-memory model (built with dtype settings.dtype)."""
    return cls.from_loader(lambda dtype: model, cfg, settings, weights_id=weights_id, do_normalize=do_normalize)

  @classmethod
  def from_loader(cls, loader, cfg: Wav2Vec2Config, settings: FeatureSettings, *, weights_id: str,
                  do_normalize: bool = False) -> "Wav2Vec2Encoder":
    """An encoder whose model is loader(compute dtype), called on the first encode."""
    self = cls.__new__(cls)
    self._setup(cfg, settings, weights_id=weights_id, do_normalize=do_normalize, loader=loader)
    return self

  def _setup(self, cfg, settings, *, weights_id, do_normalize, loader):
    self.cfg, self.settings = cfg, settings
    self.layers = settings.check(cfg)
    self.do_normalize = do_normalize
    self._loader = loader
    self._fns = None
    self.trace_counts = {"chunk": 0, "moments": 0}   # traces of its jitted functions (shared, see _jitted)
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "-", weights_id)
    s = settings
    self.name = (f"{cfg.model_type}-{safe_id}-{'norm' if do_normalize else 'raw'}"
                 f"-layers{'+'.join(str(i) for i in self.layers)}-{s.layer_reduce}"
                 f"-chunk{s.chunk_rows}ctx{s.overlap_rows}-{s.fps}fps-{s.dtype}")
    self.feature_dim = cfg.hidden_size
    self.rows_per_window = s.chunk_rows + 2 * s.overlap_rows
    self.frames_per_row = s.sample_rate // s.fps // cfg.total_stride
    self.left_pad = (cfg.receptive_field - cfg.total_stride) // 2
    frames = self.rows_per_window * self.frames_per_row
    self.window_samples = cfg.total_stride * (frames - 1) + cfg.receptive_field

  # -- compiled pieces --

  def _compiled(self):
    if self._fns is None:
      graphdef, state = nnx.split(self._loader(_DTYPES[self.settings.dtype]))
      chunk, moments, self.trace_counts = _jitted(graphdef, self.layers, self.frames_per_row,
                                                  self.rows_per_window, self.settings.dtype)
      self._fns = state, chunk, moments
    return self._fns

  # -- host side --

  def _window(self, wave: np.ndarray, start: int, norm: tuple[float, float]) -> np.ndarray:
    """window_samples samples of the normalized waveform from `start` (original coordinates), zeros outside."""
    out = np.zeros(self.window_samples, np.float32)
    lo, hi = max(start, 0), min(start + self.window_samples, len(wave))
    if hi > lo:
      out[lo - start:hi - start] = (wave[lo:hi] - norm[0]) * norm[1]
    return out

  def _batches(self, items: list) -> Iterator[list]:
    """Items in calls of chunk_batch (the last one padded with None) or, for fewer items, one at a time."""
    size = self.settings.chunk_batch if len(items) >= self.settings.chunk_batch else 1
    for i in range(0, len(items), size):
      group = items[i:i + size]
      yield group + [None] * (size - len(group))

  def _norm_stats(self, wave: np.ndarray, frames: int, norm) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every first-conv channel over the whole padded waveform (Chan's parallel merge)."""
    state, _, moments = self._compiled()
    k0, s0 = self.cfg.conv_kernel[0], self.cfg.conv_stride[0]
    padded = self.cfg.total_stride * (frames - 1) + self.cfg.receptive_field
    total = (padded - k0) // s0 + 1
    per_piece = (self.window_samples - k0) // s0 + 1
    pieces = [(p * per_piece, min(per_piece, total - p * per_piece)) for p in range(-(-total // per_piece))]
    count, mean, m2 = 0, 0.0, 0.0
    for group in self._batches(pieces):
      windows = np.stack([self._window(wave, s0 * g[0] - self.left_pad, norm) if g else
                          np.zeros(self.window_samples, np.float32) for g in group])
      valid = np.array([g[1] if g else 0 for g in group], np.int32)
      means, m2s = jax.device_get(moments(state, windows, valid))
      for n, mu, q in zip(valid.tolist(), means.astype(np.float64), m2s.astype(np.float64)):
        if n:
          new = count + n
          delta = mu - mean
          mean = mean + delta * (n / new)
          m2 = m2 + q + delta * delta * (count * n / new)
          count = new
    return np.asarray(mean, np.float32), np.asarray(m2 / count, np.float32)

  def _plan(self, rows: int) -> list[tuple[int, int, int, int]]:
    """(window's first row, first kept row, end of kept rows, valid rows in the window) for each window."""
    chunk, wr = self.settings.chunk_rows, self.rows_per_window
    if rows <= wr:
      return [(0, 0, rows, rows)]
    return [(min(max(s - self.settings.overlap_rows, 0), rows - wr), s, min(s + chunk, rows), wr)
            for s in range(0, rows, chunk)]

  def iter_rows(self, waveform: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) pieces of the features in order; one call is in flight while the last one is copied."""
    wave = np.asarray(waveform, np.float32).reshape(-1)
    rows = num_frames(len(wave), self.settings.sample_rate, self.settings.fps)
    if rows == 0:
      return
    norm = (np.float32(0.0), np.float32(1.0))
    if self.do_normalize:  # HF's processor: zero mean, unit variance over the whole utterance
      mean, var = _mean_var(wave)
      norm = (np.float32(mean), np.float32(1.0 / math.sqrt(var + INPUT_NORM_EPS)))
    k, step = self.frames_per_row, self.cfg.total_stride
    state, chunk, _ = self._compiled()
    stats = None
    if self.cfg.feat_extract_norm == "group":
      stats = self._norm_stats(wave, rows * k, norm)
    pending = None
    for group in self._batches(self._plan(rows)):
      windows = np.stack([self._window(wave, step * k * g[0] - self.left_pad, norm) if g else
                          np.zeros(self.window_samples, np.float32) for g in group])
      frame_len = np.array([g[3] * k if g else self.rows_per_window * k for g in group], np.int32)
      batch_stats = None if stats is None else tuple(np.broadcast_to(s, (len(group), len(s))) for s in stats)
      out = chunk(state, windows, frame_len, batch_stats)
      if pending is not None:
        yield from self._emit(*pending)
      pending = out, group
    yield from self._emit(*pending)

  @staticmethod
  def _emit(out, group):
    """The kept rows of each real window of a finished call."""
    host = np.asarray(jax.device_get(out))
    for j, g in enumerate(group):
      if g is not None:
        first, keep_from, keep_to, _ = g
        yield keep_from, host[j, keep_from - first:keep_to - first]

  def encode(self, waveform: np.ndarray) -> np.ndarray:
    """float32 [num_frames(len(waveform)), hidden_size] from a mono float32 waveform at 16 kHz."""
    wave = np.asarray(waveform, np.float32).reshape(-1)
    out = np.empty((num_frames(len(wave), self.settings.sample_rate, self.settings.fps), self.feature_dim),
                   np.float32)
    for start, rows in self.iter_rows(wave):
      out[start:start + len(rows)] = rows
    return out


def random_encoder(cfg: Wav2Vec2Config | None = None, *, seed: int = 0, dtype: str = "bfloat16",
                   **settings) -> Wav2Vec2Encoder:
  """An encoder over random weights (wav2vec2-base sizes unless `cfg` is given), for tests and benchmarks."""
  cfg = cfg or base_config()
  return Wav2Vec2Encoder.from_loader(lambda dt: random_model(cfg, seed=seed, dtype=dt), cfg,
                                     FeatureSettings(dtype=dtype, **settings), weights_id=f"random{seed}")
