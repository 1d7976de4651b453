"""pipelines/sample.py: motion for audio of any length with flat memory, and clear errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs sample.py's main() and prints this process's peak resident memory (KiB) on the last line. VmHWM, not
# ru_maxrss: ru_maxrss survives exec and would count the parent's memory at fork time.
MEASURED = """
import runpy, sys
sys.argv = ["sample.py"] + sys.argv[1:]
try:
  runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
  if e.code:
    raise
print("peak_kib", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def run_sample(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  code = MEASURED.format(script=os.path.join(ROOT, "pipelines", "sample.py"))
  return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
  """Syllable-rate bursts of a harmonic tone with pauses: enough to drive the model, cheap to make."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6)), 0, None) * (np.sin(2 * np.pi * 0.3 * t) > -0.3)
  tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420, 560), 1))
  return (0.3 * envelope * tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(stage1_run):
  """A tiny stage-1 model trained for a few steps (shared with the other tests, tests/conftest.py)."""
  return stage1_run


def test_ten_minutes_of_audio_with_flat_memory(checkpoint, tmp_path):
  peaks = {}
  for minutes in (1, 10):
    wav = tmp_path / f"speech_{minutes}.wav"
    sf.write(wav, speech_like(60 * minutes), 16000, subtype="PCM_16")
    out = tmp_path / f"motion_{minutes}.npz"
    result = run_sample("--checkpoint", checkpoint, "--audio", wav, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    peaks[minutes] = int(result.stdout.strip().splitlines()[-1].split()[-1]) / 1024  # MiB
    with np.load(out) as m:
      frames = 60 * minutes * 25
      assert m["exp"].shape == (frames, 21, 3) and m["kp"].shape == (frames, 21, 3) and m["t"].shape == (frames, 3)
      for key in ("pitch", "yaw", "roll", "scale"):
        assert m[key].shape == (frames,)
      assert all(np.isfinite(m[k]).all() for k in m.files)
  # Ten times the audio: the waveform (9 more minutes: 35 MB as float32) and features grow, the sampling does not.
  assert peaks[10] - peaks[1] < 100, peaks


def test_source_identity_is_used(checkpoint, tmp_path):
  wav = tmp_path / "speech.wav"
  sf.write(wav, speech_like(3.0, sr=22050), 22050)  # another rate: resampled to 16 kHz
  rng = np.random.default_rng(0)
  source = {"exp": 0.01 * rng.standard_normal((21, 3)), "pitch": 3.0, "yaw": -10.0, "roll": 1.0,
            "t": np.array([0.01, -0.02, 0.0]), "scale": 1.4, "kp": 0.3 * rng.standard_normal((21, 3))}
  np.savez(tmp_path / "source.npz", **source)
  result = run_sample("--checkpoint", checkpoint, "--audio", wav, "--source", tmp_path / "source.npz",
                      "--out", tmp_path / "out.npz")
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as m:
    assert m["exp"].shape[0] == 75
    np.testing.assert_allclose(m["kp"], np.broadcast_to(source["kp"], (75, 21, 3)), rtol=1e-6)


@pytest.mark.parametrize("content, name", [(b"", "empty.wav"), (b"RIFF\x00\x01garbage" * 300, "corrupt.wav"),
                                           (None, "missing.wav")], ids=["empty", "corrupt", "missing"])
def test_bad_audio_is_one_sentence(checkpoint, tmp_path, content, name):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  result = run_sample("--checkpoint", checkpoint, "--audio", path)
  assert result.returncode == 2
  assert name in result.stderr and "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_checkpoint_is_one_sentence(tmp_path):
  wav = tmp_path / "speech.wav"
  sf.write(wav, speech_like(1.0), 16000)
  result = run_sample("--checkpoint", tmp_path / "nowhere", "--audio", wav)
  assert result.returncode == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr
