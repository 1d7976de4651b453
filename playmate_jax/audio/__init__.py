"""Audio: loading speech files and turning them into one feature row per video frame.

Every encoder follows `AudioEncoder`; `get_encoder(config.audio)` is the only way the rest of the project
makes one, so new encoders plug in here: "mel" (log-mel, the default) and "wav2vec2" (a converted wav2vec2 or
HuBERT checkpoint in config.audio.weights; the checkpoint's config says which of the two it is).
"""

from typing import Protocol

import ml_collections
import numpy as np

from playmate_jax.audio.io import load_audio, num_frames
from playmate_jax.audio.mel import LogMelEncoder
from playmate_jax.audio.wav2vec2_features import Wav2Vec2Encoder
from playmate_jax.errors import UserError


class AudioEncoder(Protocol):
  """Features per video frame: encode(16 kHz mono float32) -> float32 [num_frames(len(wave)), feature_dim]."""
  name: str  # everything that changes the features; recorded in the dataset metadata
  feature_dim: int

  def encode(self, waveform: np.ndarray) -> np.ndarray:
    ...


ENCODERS = {"mel": LogMelEncoder, "wav2vec2": Wav2Vec2Encoder}


def get_encoder(audio_config: ml_collections.ConfigDict) -> AudioEncoder:
  """The encoder named by audio_config.encoder."""
  if audio_config.encoder not in ENCODERS:
    raise UserError(f"config.audio.encoder = {audio_config.encoder!r} is not a known audio encoder; "
                    f"use one of: {', '.join(sorted(ENCODERS))}.")
  return ENCODERS[audio_config.encoder](audio_config)


__all__ = ["AudioEncoder", "LogMelEncoder", "Wav2Vec2Encoder", "get_encoder", "load_audio", "num_frames"]
