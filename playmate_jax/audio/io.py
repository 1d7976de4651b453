"""Reading speech audio: any file soundfile (or librosa's audioread fallback) can decode, as 16 kHz mono."""

import os
import warnings

import librosa
import numpy as np
import soundfile

from playmate_jax.errors import UserError


def num_frames(num_samples: int, sample_rate: int = 16000, fps: int = 25) -> int:
  """Video frames covering num_samples audio samples: ceil(num_samples * fps / sample_rate)."""
  return -(-int(num_samples) * int(fps) // int(sample_rate))


def _decode(path: str) -> tuple[np.ndarray, int]:
  """(samples [channels, n] float32, sample rate) of the file, or UserError if no decoder can read it."""
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return data.T, rate
  except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
    pass
  try:  # containers libsndfile does not know (e.g. m4a), through audioread
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # librosa warns that it is falling back to audioread
      data, rate = librosa.load(path, sr=None, mono=False)
    return np.atleast_2d(data).astype(np.float32), int(rate)
  except Exception as e:  # audioread and its backends raise many unrelated types
    raise UserError(f"Audio file {path} could not be decoded ({type(e).__name__}); "
                    "convert it to WAV or FLAC (e.g. with ffmpeg) and try again.") from None


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
  """Mono float32 waveform in [-1, 1] at sample_rate: channels averaged, resampled with soxr (high quality)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"Audio file {path} does not exist; check the path.")
  if os.path.getsize(path) == 0:
    raise UserError(f"Audio file {path} is empty (0 bytes); give a file that contains speech.")
  data, rate = _decode(path)
  if data.size == 0:
    raise UserError(f"Audio file {path} contains no audio samples; give a file that contains speech.")
  wave = data[0] if len(data) == 1 else data.mean(axis=0, dtype=np.float32)  # no copy for mono
  del data
  if rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq").astype(np.float32)
  return np.clip(wave, -1.0, 1.0, out=wave)
