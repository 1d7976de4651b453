"""Audio loading and the log-mel front end: frame count, alignment, formats and user errors."""

import numpy as np
import pytest
import soundfile

from configs.stage1 import get_config
from playmate_jax.audio import get_encoder, load_audio, num_frames
from playmate_jax.errors import UserError

SR, HOP = 16000, 640


@pytest.fixture(scope="module")
def encoder():
  return get_encoder(get_config().audio)


@pytest.mark.parametrize("n, frames", [(0, 0), (1, 1), (639, 1), (640, 1), (641, 2), (16000, 25), (16001, 26),
                                       (48000, 75)])
def test_num_frames(n, frames):
  assert num_frames(n) == frames


def test_num_frames_other_rates():
  assert num_frames(44100, sample_rate=44100, fps=30) == 30
  assert num_frames(44101, sample_rate=44100, fps=30) == 31


@pytest.mark.parametrize("n", [0, 1, 639, 640, 641, 16000, 16001, 40000])
def test_encoder_frame_count_and_dtype(encoder, n):
  feats = encoder.encode(np.zeros(n, np.float32))
  assert feats.shape == (num_frames(n), encoder.feature_dim)
  assert feats.dtype == np.float32


def test_encoder_name_and_settings(encoder):
  assert encoder.name == "logmel80-sr16000-hop640-n1024-f55-7600"
  assert encoder.feature_dim == 80
  c = get_config().audio
  c.unlock()
  c.n_mels, c.fmax = 64, 8000.0
  other = get_encoder(c)
  assert other.name == "logmel64-sr16000-hop640-n1024-f55-8000" and other.feature_dim == 64


def test_unknown_encoder_is_a_user_error():
  c = get_config().audio
  c.unlock()
  c.encoder = "wavlm"
  with pytest.raises(UserError, match="config.audio.encoder"):
    get_encoder(c)


def test_bad_mel_settings_are_user_errors():
  c = get_config().audio
  c.unlock()
  c.fmax = 9000.0
  with pytest.raises(UserError, match="fmax"):
    get_encoder(c)


@pytest.mark.parametrize("frame", [0, 1, 7, 24])
def test_click_lights_up_its_frame(encoder, frame):
  wave = np.zeros(25 * HOP, np.float32)
  wave[frame * HOP + HOP // 2] = 1.0  # a click in the middle of video frame `frame`
  energy = encoder.encode(wave).mean(axis=1)
  assert np.argmax(energy) == frame
  silent = np.delete(energy, frame)
  assert np.all(silent < energy[frame] - 5.0)  # neighbours stay (close to) silent in log power


def test_click_inside_frame_maps_to_that_frame(encoder):
  # Clicks anywhere inside video frame i (not only its middle) peak at row i.
  for offset in (HOP // 4, HOP // 2, 3 * HOP // 4):
    wave = np.zeros(10 * HOP, np.float32)
    wave[4 * HOP + offset] = 1.0
    assert np.argmax(encoder.encode(wave).mean(axis=1)) == 4


def test_tone_burst_alignment(encoder):
  t = np.arange(20 * HOP) / SR
  wave = np.zeros_like(t, dtype=np.float32)
  burst = slice(8 * HOP, 12 * HOP)  # video frames 8..11
  wave[burst] = 0.5 * np.sin(2 * np.pi * 440.0 * t[burst])
  power = np.exp(encoder.encode(wave)).sum(axis=1)  # linear mel power per frame
  loud = np.flatnonzero(power > 0.5 * power.max())
  np.testing.assert_array_equal(loud, [8, 9, 10, 11])


def test_tone_pitch_maps_to_mel_band(encoder):
  t = np.arange(SR) / SR
  low, high = (encoder.encode((0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)) for f in (200.0, 3000.0))
  assert np.argmax(low[12]) < np.argmax(high[12])


def test_stereo_44k_loads_as_16k_mono(tmp_path):
  sr, seconds = 44100, 1.5
  t = np.arange(int(sr * seconds)) / sr
  left = 0.5 * np.sin(2 * np.pi * 300.0 * t)
  stereo = np.stack([left, 0.25 * np.ones_like(left)], axis=1)
  path = tmp_path / "speech.wav"
  soundfile.write(path, stereo, sr, subtype="PCM_16")
  wave = load_audio(path)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert len(wave) == int(round(seconds * SR))
  assert np.abs(wave).max() <= 1.0
  # Channels are averaged: the mean is half the constant right channel, the tone amplitude halves.
  np.testing.assert_allclose(wave.mean(), 0.125, atol=2e-3)
  np.testing.assert_allclose(np.abs(wave[1000:-1000] - 0.125).max(), 0.25, atol=5e-3)


@pytest.mark.parametrize("sr, subtype, ext", [(16000, "PCM_16", "wav"), (22050, "FLOAT", "wav"),
                                              (48000, "PCM_24", "flac")])
def test_rates_and_formats(tmp_path, sr, subtype, ext):
  n = int(sr * 0.8)
  path = tmp_path / f"a.{ext}"
  soundfile.write(path, 0.1 * np.sin(np.arange(n) * 0.05), sr, subtype=subtype)
  wave = load_audio(path)
  assert len(wave) == int(round(0.8 * SR)) and wave.dtype == np.float32


def test_silent_file(tmp_path, encoder):
  path = tmp_path / "silence.wav"
  soundfile.write(path, np.zeros(8000, np.int16), SR)
  wave = load_audio(path)
  np.testing.assert_array_equal(wave, 0.0)
  feats = encoder.encode(wave)
  assert feats.shape == (13, 80) and np.all(np.isfinite(feats))
  np.testing.assert_allclose(feats, np.log(1e-5), rtol=1e-6)


def test_missing_file(tmp_path):
  path = tmp_path / "nope.wav"
  with pytest.raises(UserError, match="nope.wav") as e:
    load_audio(path)
  assert "does not exist" in str(e.value)


def test_empty_file(tmp_path):
  path = tmp_path / "empty.wav"
  path.write_bytes(b"")
  with pytest.raises(UserError, match="empty.wav") as e:
    load_audio(path)
  assert "empty" in str(e.value)


def test_zero_sample_file(tmp_path):
  path = tmp_path / "nothing.wav"
  soundfile.write(path, np.zeros((0, 1), np.float32), SR)
  assert path.stat().st_size > 0
  with pytest.raises(UserError, match="nothing.wav") as e:
    load_audio(path)
  assert "no audio samples" in str(e.value)


def test_corrupt_file(tmp_path):
  path = tmp_path / "corrupt.wav"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(UserError, match="corrupt.wav") as e:
    load_audio(path)
  assert "could not be decoded" in str(e.value)
  assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("variant", ["tiny", ""])
def test_mel_matches_librosa_stft_and_chunking_is_exact(variant):
  """Our numpy STFT, analysed in chunks, gives the rows of librosa's STFT of the whole signal."""
  import librosa
  from playmate_jax.audio import mel as mel_lib
  cfg = get_config(variant).audio
  enc = mel_lib.LogMelEncoder(cfg)
  wave = np.random.default_rng(0).standard_normal(640 * (2 * mel_lib.CHUNK_FRAMES + 37) - 100).astype(np.float32)
  chunked = enc.encode(wave)
  left = enc.n_fft // 2 - enc.hop // 2
  frames = len(chunked)
  padded = np.pad(wave, (left, (frames - 1) * enc.hop + enc.n_fft - left - len(wave)))
  whole = np.log(enc._filters @ np.abs(librosa.stft(padded, n_fft=enc.n_fft, hop_length=enc.hop, center=False)) ** 2
                 + mel_lib.LOG_OFFSET).T
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax", [
    (16000, 1024, 80, 0.0, 8000.0), (16000, 640, 40, 55.0, 7600.0), (22050, 2048, 128, 0.0, 11025.0),
    (16000, 1024, 8, 300.0, 900.0)])
def test_mel_filters_are_librosas(sr, n_fft, n_mels, fmin, fmax):
  import librosa
  from playmate_jax.audio.mel import mel_filters
  ours = mel_filters(sr, n_fft, n_mels, fmin, fmax)
  theirs = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
  assert ours.dtype == np.float32 and ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)
