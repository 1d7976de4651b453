"""Log-mel audio features, one row per 25 fps video frame."""

import ml_collections
import numpy as np

from playmate_jax.audio.io import num_frames
from playmate_jax.errors import UserError

LOG_OFFSET = 1e-5  # features are ln(mel power + 1e-5): digital silence gives ln(1e-5) = -11.51
CHUNK_FRAMES = 1500  # frames analysed at a time (60 s at 25 fps): memory stays flat for any length


def _hz_to_mel(hz):
  """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4)."""
  hz = np.asarray(hz, np.float64)
  log_part = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / (np.log(6.4) / 27.0)
  return np.where(hz >= 1000.0, log_part, hz * 3.0 / 200.0)


def _mel_to_hz(mel):
  mel = np.asarray(mel, np.float64)
  return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
  """[n_mels, n_fft // 2 + 1] float32: triangles between n_mels + 2 edges evenly spaced in Slaney mels, each scaled
  to unit area (2 / its width in Hz), over the rFFT bins. These are librosa.filters.mel's numbers for its defaults
  (htk=False, norm="slaney"; a test compares them); computed here because importing librosa.filters imports
  scipy.signal, which every animation's start-up would pay for."""
  edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
  triangles = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
  return (triangles * (2.0 / (hi - lo))).astype(np.float32)


class LogMelEncoder:
  """Natural log of the mel power spectrogram (periodic Hann window, Slaney mel filters), not normalized.

  Hop = sample_rate / fps samples (640 at 16 kHz, 25 fps); row i is the n_fft-sample window centred on the
  middle of video frame i, i.e. of samples [i * hop, (i + 1) * hop), with zeros outside the waveform.
  The STFT is numpy's FFT over the framed signal: the same numbers as `librosa.stft(center=False)` (a test checks
  it), without the numba compilation librosa's first STFT costs in every process.
  """

  def __init__(self, audio_config: ml_collections.ConfigDict):
    c = audio_config
    self.sample_rate, self.fps = int(c.sample_rate), int(c.fps)
    self.n_fft, self.n_mels = int(c.n_fft), int(c.n_mels)
    if self.sample_rate % self.fps:
      raise UserError(f"config.audio.sample_rate ({self.sample_rate}) must be a multiple of config.audio.fps "
                      f"({self.fps}) so that each video frame spans a whole number of samples.")
    self.hop = self.sample_rate // self.fps
    if self.n_fft < self.hop:
      raise UserError(f"config.audio.n_fft ({self.n_fft}) must be at least sample_rate / fps ({self.hop}) so "
                      "that every sample of every frame is analysed.")
    if not 0 <= c.fmin < c.fmax <= self.sample_rate / 2:
      raise UserError(f"config.audio.fmin ({c.fmin}) and fmax ({c.fmax}) must satisfy 0 <= fmin < fmax <= "
                      f"sample_rate / 2 ({self.sample_rate / 2:g}).")
    self.fmin, self.fmax = float(c.fmin), float(c.fmax)
    self._filters = mel_filters(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax)
    self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n_fft) / self.n_fft)).astype(np.float32)
    self.name = (f"logmel{self.n_mels}-sr{self.sample_rate}-hop{self.hop}-n{self.n_fft}"
                 f"-f{self.fmin:g}-{self.fmax:g}")
    self.feature_dim = self.n_mels

  def row_end(self, row: int) -> int:
    """How many samples a live stream needs before row `row` is final (its window's last sample, plus one)."""
    return row * self.hop - (self.n_fft // 2 - self.hop // 2) + self.n_fft

  def rows(self, waveform: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of `encode(waveform)` (zeros past the waveform's end), computed from their own samples
    only: a live stream adds rows as their audio arrives, and they equal the whole recording's."""
    left = self.n_fft // 2 - self.hop // 2
    a, b = start * self.hop - left, (stop - 1) * self.hop - left + self.n_fft
    wave = np.asarray(waveform, np.float32).reshape(-1)
    piece = np.zeros(b - a, np.float32)
    lo, hi = max(a, 0), min(b, len(wave))
    if hi > lo:
      piece[lo - a:hi - a] = wave[lo:hi]
    windows = np.lib.stride_tricks.sliding_window_view(piece, self.n_fft)[::self.hop]
    spec = np.fft.rfft(windows * self._window, axis=-1)
    return np.log((spec.real ** 2 + spec.imag ** 2) @ self._filters.T + LOG_OFFSET).astype(np.float32)

  def encode(self, waveform: np.ndarray) -> np.ndarray:
    """float32 [num_frames(len(waveform)), n_mels] from a mono float32 waveform at sample_rate."""
    wave = np.asarray(waveform, np.float32).reshape(-1)
    frames = num_frames(len(wave), self.sample_rate, self.fps)
    if frames == 0:
      return np.zeros((0, self.n_mels), np.float32)
    left = self.n_fft // 2 - self.hop // 2  # puts window centres at i * hop + hop / 2
    right = (frames - 1) * self.hop + self.n_fft - left - len(wave)
    wave = np.pad(wave, (left, right))
    out = np.empty((frames, self.n_mels), np.float32)
    for start in range(0, frames, CHUNK_FRAMES):  # each row needs only its own n_fft samples: chunks are exact
      stop = min(start + CHUNK_FRAMES, frames)
      piece = wave[start * self.hop:(stop - 1) * self.hop + self.n_fft]
      windows = np.lib.stride_tricks.sliding_window_view(piece, self.n_fft)[::self.hop]   # [rows, n_fft], views
      spec = np.fft.rfft(windows * self._window, axis=-1)
      out[start:stop] = np.log((spec.real ** 2 + spec.imag ** 2) @ self._filters.T + LOG_OFFSET)
    return out
