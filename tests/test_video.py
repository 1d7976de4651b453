"""Video IO through imageio-ffmpeg's ffmpeg: probe, frames, audio, writing with muxed audio, user errors."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from playmate_jax import video
from playmate_jax.errors import UserError


def _frames(n, h, w):
  """Smooth frames (compress well) whose brightness encodes the frame index."""
  y, x = np.mgrid[0:h, 0:w]
  base = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 128.0)], -1)
  return [np.clip(base * 0.5 + 10 * i, 0, 255).astype(np.uint8) for i in range(n)]


def _tone(seconds, rate=16000):
  t = np.arange(int(seconds * rate)) / rate
  return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_round_trip_with_audio(tmp_path):
  path = str(tmp_path / "a.mp4")
  frames = _frames(12, 48, 64)
  with video.VideoWriter(path, fps=20, audio=_tone(0.6)) as w:
    w.write_batch(np.stack(frames))
  info = video.probe(path)
  assert (info.fps, info.width, info.height, info.num_frames, info.has_audio) == (20, 64, 48, 12, True)
  assert info.duration == pytest.approx(0.6, abs=0.06)
  assert video.count_frames(path) == 12
  got = list(video.read_frames(path))
  assert len(got) == 12 and got[0].shape == (48, 64, 3) and got[0].dtype == np.uint8
  for a, b in zip(got, frames):
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4      # H.264 at crf 18: nearly lossless
  audio = video.extract_audio(path)
  assert audio.dtype == np.float32 and audio.ndim == 1
  assert len(audio) / 16000 == pytest.approx(0.6, abs=0.06)
  assert np.sqrt(np.mean(audio ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.15)  # the tone, not silence


def test_no_audio_track(tmp_path):
  path = str(tmp_path / "silent.mp4")
  with video.VideoWriter(path) as w:
    for f in _frames(5, 32, 32):
      w.write(f)
  info = video.probe(path)
  assert not info.has_audio and info.fps == 25 and info.num_frames == 5
  assert video.extract_audio(path) is None


def test_audio_from_a_file_is_cut_to_the_video(tmp_path):
  donor = str(tmp_path / "donor.mp4")
  with video.VideoWriter(donor, fps=25, audio=_tone(2.0)) as w:
    w.write_batch(np.stack(_frames(50, 32, 32)))
  out = str(tmp_path / "short.mp4")
  with video.VideoWriter(out, fps=25, audio=donor) as w:  # the donor's audio track, 2 s, onto 0.4 s of video
    w.write_batch(np.stack(_frames(10, 32, 32)))
  assert video.probe(out).has_audio
  assert len(video.extract_audio(out)) / 16000 == pytest.approx(0.4, abs=0.06)


def test_fps_resampling_and_odd_sizes(tmp_path):
  path = str(tmp_path / "odd.mp4")
  with video.VideoWriter(path, fps=20) as w:
    w.write_batch(np.stack(_frames(12, 31, 45)))
  info = video.probe(path)
  assert (info.width, info.height) == (46, 32)           # padded to even sizes for yuv420p
  assert len(list(video.read_frames(path, fps=10))) == 6
  assert len(list(video.read_frames(path, fps=40))) == 24


def test_rotation_metadata_is_applied(tmp_path):
  path, rotated = str(tmp_path / "wide.mp4"), str(tmp_path / "rotated.mp4")
  with video.VideoWriter(path) as w:
    w.write_batch(np.stack(_frames(3, 32, 64)))
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i", path,
                  "-c", "copy", rotated], check=True)
  info = video.probe(rotated)
  assert (info.width, info.height) == (32, 64)
  assert next(video.read_frames(rotated)).shape == (64, 32, 3)


def test_video_made_by_imageio_ffmpeg_directly(tmp_path):
  path = str(tmp_path / "direct.mp4")
  gen = imageio_ffmpeg.write_frames(path, (64, 32), fps=10, macro_block_size=1, ffmpeg_log_level="error")
  gen.send(None)
  for f in _frames(7, 32, 64):
    gen.send(f)
  gen.close()
  info = video.probe(path)
  assert (info.fps, info.num_frames, info.width, info.height, info.has_audio) == (10, 7, 64, 32, False)
  assert len(list(video.read_frames(path))) == 7


def test_unreadable_and_missing_files_are_user_errors(tmp_path):
  bad = tmp_path / "notes.mp4"
  bad.write_text("this is not a video")
  for fn in (video.probe, lambda p: next(video.read_frames(p)), video.extract_audio):
    with pytest.raises(UserError) as e:
      fn(str(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(UserError, match="does not exist"):
    video.probe(str(tmp_path / "missing.mp4"))
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  with pytest.raises(UserError, match="empty"):
    video.probe(str(empty))


def test_failed_writing_leaves_no_file(tmp_path):
  path = tmp_path / "partial.mp4"
  with pytest.raises(RuntimeError):
    with video.VideoWriter(str(path)) as w:
      w.write(_frames(1, 32, 32)[0])
      raise RuntimeError("renderer crashed")
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(UserError, match="does not exist"):
    video.VideoWriter(str(tmp_path / "no" / "such" / "dir.mp4"))
