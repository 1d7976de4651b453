"""Reading speech audio as 16 kHz mono: WAV, FLAC and OGG through soundfile; anything else ffmpeg reads (mp3, m4a,
opus, a video's sound track) through the project's bundled ffmpeg."""

import os

import librosa
import numpy as np
import soundfile

from playmate_jax import video
from playmate_jax.errors import UserError


def num_frames(num_samples: int, sample_rate: int = 16000, fps: int = 25) -> int:
  """Video frames covering num_samples audio samples: ceil(num_samples * fps / sample_rate)."""
  return -(-int(num_samples) * int(fps) // int(sample_rate))


def _decode(path: str, sample_rate: int) -> tuple[np.ndarray, int]:
  """(samples [channels, n] float32, sample rate) of the file, or UserError if it has no decodable audio."""
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return data.T, rate
  except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
    pass
  # Containers libsndfile does not know (mp3 on older libsndfile, m4a, opus in webm, a video's sound track): the
  # bundled ffmpeg decodes them, downmixed and resampled to sample_rate.
  return video.read_audio(path, sample_rate)[None], sample_rate


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
  """Mono float32 waveform in [-1, 1] at sample_rate: channels averaged, resampled with soxr (high quality)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"Audio file {path} does not exist; check the path.")
  if os.path.getsize(path) == 0:
    raise UserError(f"Audio file {path} is empty (0 bytes); give a file that contains speech.")
  data, rate = _decode(path, sample_rate)
  if data.size == 0:
    raise UserError(f"Audio file {path} contains no audio samples; give a file that contains speech.")
  wave = data[0] if len(data) == 1 else data.mean(axis=0, dtype=np.float32)  # no copy for mono
  del data
  if rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq").astype(np.float32)
  return np.clip(wave, -1.0, 1.0, out=wave)
