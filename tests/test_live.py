"""Live animation (playmate_jax/animate/live.py): chunked speech gives the motion of the whole file, frames come out
as soon as their window's audio (plus the look-ahead) has arrived, bad chunks are one sentence.

A tiny live model (configs/stage1.py:tiny_live, tests/conftest.py) and tiny random renderer weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from playmate_jax import animate as anim
from playmate_jax.animate import live as live_lib
from playmate_jax.errors import UserError
from playmate_jax.renderer.api import Renderer
from tests import videos


@pytest.fixture(scope="module")
def parts(live_run):
  from skimage import data
  model = anim.MotionModel.load(str(live_run))
  renderer = Renderer.from_spec("random:tiny", "float32")
  portrait = anim.load_portrait(renderer, data.astronaut(), None)
  return model, renderer, portrait


def speech(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  wave = videos.tone_bursts(seconds, rate, freq=170)
  return (wave + 0.01 * rng.normal(size=wave.shape)).astype(np.float32)


def test_chunked_speech_gives_the_motion_of_the_whole_file(parts):
  model, renderer, portrait = parts
  wave = speech(2.37)
  whole = model.generate(wave, portrait.motion, seed=3)
  session = live_lib.LiveSession(model, renderer, portrait, seed=3)
  rng = np.random.default_rng(1)
  pcm = (wave * 32767).astype("<i2").tobytes()   # as a client sends it: int16 bytes in uneven chunks
  frames, start = [], 0
  while start < len(pcm):
    size = 2 * int(rng.integers(1, 1500))
    frames += session.push(pcm[start:start + size])
    start += size
  frames += session.finish()
  assert [f.index for f in frames] == list(range(len(whole["exp"])))
  live = session.motion()
  int16 = model.generate((np.frombuffer(pcm, "<i2") / 32768.0).astype(np.float32), portrait.motion, seed=3)
  for k in ("exp", "pitch", "yaw", "roll", "t", "scale"):
    np.testing.assert_allclose(live[k], int16[k], atol=2e-4, err_msg=k)
  assert np.abs(live["exp"] - whole["exp"]).max() < 0.05    # int16 rounding of the input only
  assert frames[0].image.shape == (128, 128, 3) and frames[0].image.dtype == np.uint8
  assert frames[0].jpeg()[:2] == b"\xff\xd8"


def test_a_window_comes_out_once_its_audio_and_lookahead_have_arrived(parts):
  model, renderer, portrait = parts
  session = live_lib.LiveSession(model, renderer, portrait)
  l, a = session.window, session.lookahead
  hop = model.encoder.hop
  wave = speech(2.0)
  out_at = {}
  for n in range(0, len(wave), hop // 4):
    for f in session.push(wave[n:n + hop // 4]):
      out_at[f.index] = session.samples
  for index, samples in out_at.items():
    window_end_row = (index // l + 1) * l + a - 1
    assert samples >= model.encoder.row_end(window_end_row)                   # never before its audio
    assert samples < model.encoder.row_end(window_end_row) + hop // 4 + 1    # and at once after it
    assert out_at[index] >= (index + 1) * hop
  assert len(out_at) == (len(out_at) // l) * l > 0


def test_other_rates_and_float_chunks(parts):
  model, renderer, portrait = parts
  session = live_lib.LiveSession(model, renderer, portrait, input_rate=44100)
  wave = speech(1.5, 44100)
  frames = []
  for start in range(0, len(wave), 4410):
    frames += session.push(wave[start:start + 4410])
  frames += session.finish()
  assert abs(len(frames) - round(1.5 * 25)) <= 1


def test_bad_chunks_and_models_are_one_sentence(parts, stage1_run):
  model, renderer, portrait = parts
  session = live_lib.LiveSession(model, renderer, portrait)
  with pytest.raises(UserError, match="not 16-bit PCM"):
    session.push(b"\x01\x02\x03")
  with pytest.raises(UserError, match="not mono"):
    session.push(np.zeros((10, 2), np.int16))
  with pytest.raises(UserError, match="Sample rate 1000 Hz"):
    live_lib.LiveSession(model, renderer, portrait, input_rate=1000)
  offline = anim.MotionModel.load(str(stage1_run))
  with pytest.raises(UserError, match="offline model"):
    live_lib.LiveSession(offline, renderer, portrait)
  session.finish()
  with pytest.raises(UserError, match="has ended"):
    session.push(b"\x00\x00")
