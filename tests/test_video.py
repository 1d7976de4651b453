"""Video IO through imageio-ffmpeg's ffmpeg: probe, frames, audio, writing with muxed audio, user errors."""

import subprocess
import time

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


@pytest.mark.parametrize("num_frames", [None, 12], ids=["muxed-at-close", "one-pass"])
def test_round_trip_with_audio(tmp_path, num_frames):
  path = str(tmp_path / "a.mp4")
  frames = _frames(12, 48, 64)
  with video.VideoWriter(path, fps=20, audio=_tone(0.6), num_frames=num_frames) as w:
    assert w.one_pass == (num_frames is not None)
    w.write_batch(np.stack(frames))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]   # no temporary video or WAV left
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


@pytest.mark.parametrize("num_frames", [None, 10], ids=["muxed-at-close", "one-pass"])
def test_audio_from_a_file_is_cut_to_the_video(tmp_path, num_frames):
  donor = str(tmp_path / "donor.mp4")
  with video.VideoWriter(donor, fps=25, audio=_tone(2.0)) as w:
    w.write_batch(np.stack(_frames(50, 32, 64)))
  out = str(tmp_path / "short.mp4")
  # The donor's audio track, 2 s, onto 0.4 s of video; the donor's own (wider) video stream is not taken.
  with video.VideoWriter(out, fps=25, audio=donor, num_frames=num_frames) as w:
    w.write_batch(np.stack(_frames(10, 32, 32)))
  info = video.probe(out)
  assert info.has_audio and (info.width, info.height, info.num_frames) == (32, 32, 10)
  listing = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", out], capture_output=True,
                           text=True).stderr
  assert listing.count("Stream #") == 2, listing   # one video and one audio stream
  assert len(video.extract_audio(out)) / 16000 == pytest.approx(0.4, abs=0.06)


def test_one_pass_errors_leave_no_file(tmp_path):
  """A frame count other than the one announced, or an audio file ffmpeg cannot read, writes nothing."""
  with pytest.raises(ValueError, match="told 5 frames and was given 4"):
    with video.VideoWriter(str(tmp_path / "short.mp4"), audio=_tone(1.0), num_frames=5) as w:
      w.write_batch(np.stack(_frames(4, 32, 32)))
  notes = tmp_path / "notes.wav"
  notes.write_text("this is not audio")
  with pytest.raises(UserError, match=f"audio of {notes} could not be muxed"):
    with video.VideoWriter(str(tmp_path / "bad.mp4"), audio=str(notes), num_frames=30) as w:
      w.write_batch(np.stack(_frames(30, 64, 64)))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.wav"]


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


def test_a_stream_grows_a_fragment_per_window_and_becomes_the_mp4(tmp_path):
  """stream=: a fragmented MP4 that holds each finished window before the video is closed, then the ordinary mp4
  with every frame and the sound."""
  wave = (0.2 * np.sin(np.arange(16000 * 5) / 16000 * 2 * np.pi * 200)).astype(np.float32)
  stream, out = tmp_path / "stream.mp4", tmp_path / "out.mp4"
  grew = []
  with video.VideoWriter(out, fps=25, audio=wave, num_frames=120, stream=stream, fragment_frames=40) as w:
    for i in range(120):
      w.write(np.full((64, 96, 3), 2 * i, np.uint8))
      if i in (39, 41, 81):
        deadline = time.monotonic() + 10
        while i > 40 and stream.read_bytes().count(b"moof") < (i - 1) // 40 and time.monotonic() < deadline:
          time.sleep(0.02)
        grew.append(stream.read_bytes().count(b"moof"))
    assert not out.exists()
  assert grew == [0, 1, 2]          # a window's fragment is written once the next window has begun
  data = stream.read_bytes()
  assert data[4:8] == b"ftyp" and data.count(b"moof") == 3
  info = video.probe(out)
  assert info.num_frames == 120 and info.has_audio and (info.width, info.height) == (96, 64)
  assert video.count_frames(stream) == 120
