"""The built-in demo dataset: synthetic speech and motion whose mouth follows the audio by a known rule.

Per speaker: a voice (sawtooth glottal source at its own pitch, through two formant resonators), canonical
keypoints kp, an expression bias and a pose style. Per clip (4-12 s): phrases of syllables separated by
pauses; each syllable is a sin^2 amplitude bump; fricative noise bursts lead some syllables; a faint noise
floor throughout. The rule: mouth_opening(exp) at frame i = MOUTH_GAIN * (mean syllable envelope over the
samples of frame i), exactly, with no lag; the other expression coordinates are speaker bias + emotion
offset + slow noise; head pose is a smooth per-speaker random walk. Every speaker has every emotion equally
often (clip i of speaker s: emotion (i + s) mod 8), and the emotion offsets are centred on neutral's (zero),
so a speaker's average expression is its neutral one, as the statistics' reference expression assumes.
Deterministic from the seed; no downloads; built in a temporary folder and renamed into place, so concurrent
callers are safe.
"""

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import shutil
import tempfile

import cv2
import ml_collections
import numpy as np

from playmate_jax.audio import get_encoder
from playmate_jax.data import builder
from playmate_jax.data import stats as stats_lib
from playmate_jax.motion import EXP_DIM, NUM_KP, mouth_opening

log = logging.getLogger(__name__)

SAMPLE_RATE, FPS = 16000, 25
HOP = SAMPLE_RATE // FPS
MOUTH_GAIN = 0.08           # mouth opening (keypoint units) of a syllable at full amplitude
VOICE_LEVEL = 0.25          # waveform amplitude of the voiced carrier at envelope 1
NOISE_LEVEL = 0.002         # noise floor
EMOTIONS = 8
# Expression spread (keypoint units, per coordinate): between speakers, and between emotions. Speakers differ more
# than emotions, so that in normalized units an emotion's offset is small enough that the noisiest diffusion steps
# cannot read it from the noisy motion: there the label has to set it.
SPEAKER_EXP_STD = 0.03
EMOTION_EXP_STD = 0.01


@dataclasses.dataclass(frozen=True)
class DemoSpec:
  """Size and seed of the demo dataset."""
  seed: int = 0
  num_speakers: int = 8
  train_clips_per_speaker: int = 48     # a multiple of the 8 emotions: each speaker has each equally often
  test_clips_per_speaker: int = 3
  min_seconds: float = 4.0
  max_seconds: float = 12.0
  unknown_emotion_prob: float = 0.2


def _ou(rng: np.random.Generator, n: int, dims: int, rho: float) -> np.ndarray:
  """Stationary AR(1) noise [n, dims] with unit variance and correlation rho between frames."""
  x = np.empty((n, dims))
  x[0] = rng.standard_normal(dims)
  eps = rng.standard_normal((n, dims)) * np.sqrt(1.0 - rho ** 2)
  for i in range(1, n):
    x[i] = rho * x[i - 1] + eps[i]
  return x


def _speakers(spec: DemoSpec) -> list[dict]:
  """Per-speaker constants: voice pitch and formants, kp, expression bias, pose style."""
  out = []
  for s in range(spec.num_speakers):
    rng = np.random.default_rng([spec.seed, 1, s])
    out.append(dict(
        id=f"spk{s:02d}", f0=rng.uniform(95.0, 230.0), formants=rng.uniform([550, 1100], [850, 1900]),
        kp=rng.normal(0.0, 0.15, (NUM_KP, 3)), exp_bias=rng.normal(0.0, SPEAKER_EXP_STD, EXP_DIM),
        pose_mean=np.concatenate([rng.normal(0, [3.0, 5.0, 2.0]), rng.normal(0, 0.02, 2), [rng.uniform(1.3, 1.7)]]),
        pose_std=np.array([3.0, 4.0, 2.0, 0.01, 0.01, 0.01]) * rng.uniform(0.5, 1.5),
        color=rng.integers(40, 220, 3), skin=rng.integers(120, 230, 3)))
  return out


def emotion_offsets(seed: int) -> np.ndarray:
  """Expression offset [8, 63] per emotion (MEAD order); neutral (5) is zero, and the mean of all eight."""
  off = np.random.default_rng([seed, 2]).normal(0.0, EMOTION_EXP_STD, (EMOTIONS, EXP_DIM))
  others = np.arange(EMOTIONS) != 5
  off[others] -= off[others].mean(axis=0)
  off[5] = 0.0
  return off


def _envelope(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(syllable envelope [n] in [0, 1], fricative burst signal [n]) of phrases separated by pauses."""
  env, fric = np.zeros(n), np.zeros(n)
  pos = int(rng.uniform(0.0, 0.3) * SAMPLE_RATE)
  while pos < n:
    end = min(n, pos + int(rng.uniform(0.8, 2.5) * SAMPLE_RATE))
    while pos < end:
      size = int(rng.uniform(0.12, 0.28) * SAMPLE_RATE)
      size = min(size, n - pos)
      env[pos:pos + size] += rng.uniform(0.4, 1.0) * np.sin(np.linspace(0.0, np.pi, size)) ** 2
      if rng.random() < 0.3:  # a fricative leading the syllable, while the mouth is still nearly closed
        m = min(int(rng.uniform(0.04, 0.08) * SAMPLE_RATE), n - pos)
        noise = np.diff(rng.standard_normal(m + 1))
        fric[pos:pos + m] += rng.uniform(0.02, 0.05) * noise * np.hanning(m)
      pos += size + int(rng.uniform(0.0, 0.04) * SAMPLE_RATE)
    pos = end + int(rng.uniform(0.15, 0.6) * SAMPLE_RATE)
  return np.clip(env, 0.0, 1.0), fric


def _voice(rng: np.random.Generator, spk: dict, frames: int) -> np.ndarray:
  """Unit-RMS voiced carrier [frames * HOP]: sawtooth at a wandering pitch through two formants."""
  wander = np.repeat(0.08 * _ou(rng, frames, 1, 0.95)[:, 0], HOP)
  f0 = spk["f0"] * np.exp(wander)
  saw = 2.0 * (np.cumsum(f0 / SAMPLE_RATE) % 1.0) - 1.0
  from scipy import signal  # here, not at the top: only writing the dataset needs it, and its import is slow
  out = 0.15 * saw
  for gain, freq in zip((1.0, 0.5), spk["formants"]):
    b, a = signal.iirpeak(freq, 4.0, fs=SAMPLE_RATE)
    out = out + gain * signal.lfilter(b, a, saw)
  return out / np.sqrt(np.mean(out ** 2))


def _reference_frame(spk: dict, opening: float) -> bytes:
  """A 64x64 JPEG: the speaker's background, face, eyes and the mouth at the given opening."""
  img = np.empty((64, 64, 3), np.uint8)
  img[:] = spk["color"]
  cv2.ellipse(img, (32, 34), (18, 24), 0, 0, 360, spk["skin"].tolist(), -1)
  for x in (25, 39):
    cv2.circle(img, (x, 28), 2, (30, 30, 30), -1)
  cv2.ellipse(img, (32, 46), (7, 1 + int(round(60 * opening))), 0, 0, 360, (40, 20, 120), -1)
  ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
  assert ok
  return buf.tobytes()


def _mouth_direction() -> tuple[np.ndarray, float]:
  """(w [63], b) with mouth_opening(exp) = exp.flatten() @ w + b (it is linear, by its contract)."""
  basis = np.concatenate([np.zeros((1, EXP_DIM)), np.eye(EXP_DIM)]).reshape(-1, NUM_KP, 3)
  values = np.asarray(mouth_opening(basis.astype(np.float32)), np.float64)
  return values[1:] - values[0], float(values[0])


def make_clip(spec: DemoSpec, split: str, speaker: int, index: int, encoder, speakers: list[dict],
              mouth: tuple[np.ndarray, float]) -> dict:
  """One example dict of the `playmate_clips` schema, plus 'envelope' [T] (the rule's input)."""
  spk = speakers[speaker]
  rng = np.random.default_rng([spec.seed, 3, ("train", "test").index(split), speaker, index])
  frames = int(round(rng.uniform(spec.min_seconds, spec.max_seconds) * FPS))
  env, fric = _envelope(rng, frames * HOP)
  wave = VOICE_LEVEL * env * _voice(rng, spk, frames) + fric + NOISE_LEVEL * rng.standard_normal(len(env))
  wave = np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
  features = encoder.encode(wave.astype(np.float32) / 32768.0)

  true_emotion = (index + speaker) % EMOTIONS
  label = -1 if rng.random() < spec.unknown_emotion_prob else true_emotion
  env_frames = env.reshape(frames, HOP).mean(axis=1)
  opening = MOUTH_GAIN * env_frames
  exp = spk["exp_bias"] + emotion_offsets(spec.seed)[true_emotion] + 0.003 * _ou(rng, frames, EXP_DIM, 0.9)
  w, b = mouth
  exp = exp + ((opening - exp @ w - b) / (w @ w))[:, None] * w
  pose = spk["pose_mean"] + spk["pose_std"] * _ou(rng, frames, 6, 0.96)
  f32 = lambda x: np.asarray(x, np.float32)
  motion = dict(exp=f32(exp.reshape(frames, NUM_KP, 3)), pitch=f32(pose[:, 0]), yaw=f32(pose[:, 1]),
                roll=f32(pose[:, 2]), t=f32(np.stack([pose[:, 3], pose[:, 4], np.zeros(frames)], axis=-1)),
                scale=f32(pose[:, 5]), kp=f32(spk["kp"] + 0.001 * rng.standard_normal((frames, NUM_KP, 3))))
  return dict(clip_id=f"demo-{split}-{spk['id']}-{index:03d}", speaker_id=spk["id"], num_frames=frames,
              emotion=label, motion=motion, audio=dict(waveform=wave, features=features),
              reference_frame=_reference_frame(spk, float(opening[0])), envelope=f32(env_frames))


def demo_examples(spec: DemoSpec, split: str, encoder):
  """Yields the split's example dicts, speaker-interleaved (clip index major)."""
  speakers, mouth = _speakers(spec), _mouth_direction()
  per = spec.train_clips_per_speaker if split == "train" else spec.test_clips_per_speaker
  for index in range(per):
    for s in range(spec.num_speakers):
      ex = make_clip(spec, split, s, index, encoder, speakers, mouth)
      ex.pop("envelope")
      yield ex


# Bump when the generated data or its statistics change, so that stale caches are not reused: the default cache
# folder is named after it, and DEMO_FILE in the dataset records it (for a demo written into config.data.data_dir).
DEMO_VERSION = 6
DEMO_FILE = "demo.json"


def written_version(path: str) -> int:
  """The demo version that wrote the dataset at `path` (a version folder): DEMO_FILE's, else (demos written before
  the file) told by the statistics: 6 brought speaker references (exp_reference), 2 the mean identity (kp_mean),
  and 1 stands for the unnumbered first, which had neither."""
  try:
    with open(os.path.join(path, DEMO_FILE)) as f:
      return int(json.load(f)["demo_version"])
  except FileNotFoundError:
    with open(os.path.join(path, stats_lib.STATS_FILE)) as f:
      record = json.load(f)
    return 6 if "exp_reference" in record else 2 if "kp_mean" in record else 1


@functools.lru_cache(maxsize=None)
def _check_version(path: str) -> None:
  """Warns (once per process) when the demo dataset at `path` was written by another demo version: it is used as
  it is (still a valid dataset), but its clips are not the ones this code describes."""
  try:
    version = written_version(path)
  except (OSError, ValueError, KeyError, TypeError):
    return  # unreadable: the loader names the damaged file
  if version != DEMO_VERSION:
    log.warning("The demo dataset %s was generated by demo version %d, not this code's %d; it is used as it is: "
                "delete %s to generate the current one.", path, version, DEMO_VERSION, path)


def demo_data_dir(config: ml_collections.ConfigDict) -> str:
  """config.data.data_dir if set, else ~/.cache/playmate_jax/demo/v<DEMO_VERSION>-<audio encoder name>."""
  if config.data.data_dir:
    return os.path.expanduser(config.data.data_dir)
  name = f"v{DEMO_VERSION}-{get_encoder(config.audio).name}"
  return os.path.join(os.path.expanduser("~/.cache/playmate_jax/demo"), name)


def ensure_demo_dataset(config: ml_collections.ConfigDict, spec: DemoSpec = DemoSpec()) -> str:
  """Writes the demo dataset unless present (atomically, safe for concurrent callers); returns its data_dir."""
  data_dir = demo_data_dir(config)
  final = builder.version_dir(data_dir)
  if os.path.isdir(final):
    _check_version(final)
    return data_dir
  encoder = get_encoder(config.audio)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".demo-incomplete-", dir=data_dir)
  log.info("Generating the demo dataset in %s (first use only; a few seconds).", data_dir)
  try:
    import tensorflow_datasets as tfds
    splits = {s: demo_examples(spec, s, encoder) for s in ("train", "test")}
    tfds.disable_progress_bar()  # TFDS's "downloading ... shuffling" bars say nothing true about generated data
    with contextlib.redirect_stdout(io.StringIO()):
      written = builder.write_dataset(tmp, splits, encoder_name=encoder.name, feature_dim=encoder.feature_dim,
                                      audio_config=config.audio.to_dict(), num_shards=2)
    tfds.enable_progress_bar()
    with open(os.path.join(written, DEMO_FILE), "w") as f:
      json.dump({"demo_version": DEMO_VERSION}, f)
    try:
      os.rename(written, final)
    except OSError:
      if not os.path.isdir(final):  # not a lost race with another writer: a real failure
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return data_dir
