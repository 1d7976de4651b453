"""The generated test videos (tests/videos.py) decode through playmate_jax.video as they claim: length, upright
faces, audio length and click timing, stored timing and rotation; and the broken inputs are broken as named."""

import os
import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from playmate_jax import video
from playmate_jax.errors import UserError
from playmate_jax.face.finder import finder
from tests import videos

FPS, RATE = 25, video.AUDIO_RATE
FRAME = 1.0 / FPS


def detect_face(frame):
  """The largest face's box as (x, y, w, h), or None."""
  faces = finder().find(frame, small_faces=False)
  if not faces:
    return None
  x0, y0, x1, y1 = faces[0].box
  return x0, y0, x1 - x0, y1 - y0


@pytest.fixture(scope="module")
def collection(video_collection):
  folder, expect = video_collection
  return {name: dict(e, path=str(folder / name)) for name, e in expect.items()}


def _spread(frames, count=12):
  """`count` frames spread evenly over the video (face detection is the slow part of these tests)."""
  return [frames[i] for i in np.linspace(0, len(frames) - 1, count).round().astype(int)]


def _loud_events(audio, threshold=0.5, gap=0.02):
  """Times (s) of the loudest sample of each run of |audio| > threshold (runs closer than `gap` s merged)."""
  loud = np.flatnonzero(np.abs(audio) > threshold)
  if not len(loud):
    return []
  runs = np.split(loud, np.flatnonzero(np.diff(loud) > gap * RATE) + 1)
  return [r[np.argmax(np.abs(audio[r]))] / RATE for r in runs]


def _packets(path):
  """(stored width, height, sorted video packet timestamps in s) from ffmpeg's framecrc of the stream copy."""
  out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", path, "-map", "0:v", "-c", "copy",
                        "-f", "framecrc", "-"], capture_output=True, text=True, check=True).stdout
  header = dict(line[1:].split(": ") for line in out.splitlines() if line.startswith("#"))
  tb_num, tb_den = header["tb 0"].split("/")
  width, height = header["dimensions 0"].split("x")
  pts = sorted(int(line.split(",")[2]) for line in out.splitlines() if not line.startswith("#"))
  return int(width), int(height), np.array(pts) * int(tb_num) / int(tb_den)


@pytest.mark.parametrize("name", list(videos.GOOD))
def test_good_video_decodes_upright_with_aligned_audio(collection, name):
  e = collection[name]
  width, height = e["size"]
  info = video.probe(e["path"])
  assert (info.width, info.height, info.has_audio) == (width, height, True)
  frames = list(video.read_frames(e["path"], fps=FPS))
  assert abs(len(frames) - round(e["duration"] * FPS)) <= 1
  assert frames[0].shape == (height, width, 3)
  faces = [detect_face(f) for f in _spread(frames)]
  found = [f for f in faces if f is not None]
  assert len(found) >= 0.9 * len(faces)  # a frontal-face detector finds no face on its side or upside down
  for x, y, w, h in found:
    assert 0.2 * width < x + w / 2 < 0.8 * width and y + h / 2 < 0.5 * height  # upper middle: upright
    assert w == pytest.approx(videos.FACE_FRACTION * min(width, height), rel=0.25)
  audio = video.extract_audio(e["path"])
  assert abs(len(audio) - e["duration"] * RATE) <= RATE * FRAME
  events = _loud_events(audio)
  assert len(events) == len(e["clicks"])  # the speech never reaches the click threshold
  np.testing.assert_allclose(events, e["clicks"], atol=FRAME)
  quiet = np.abs(audio) < 0.5
  assert np.sqrt(np.mean(audio[quiet] ** 2)) > 0.02  # there is speech between the clicks


@pytest.mark.parametrize("name", list(videos.GOOD))
def test_good_video_stores_timing_and_rotation_as_claimed(collection, name):
  e = collection[name]
  stored_w, stored_h, pts = _packets(e["path"])
  turned = e["rotation"] in (90, 270)
  assert (stored_h, stored_w) == (e["size"] if turned else e["size"][::-1])  # metadata, not turned pixels
  assert len(pts) == e["num_frames"]
  assert 0 <= pts[0] < 0.01  # Matroska shifts the timeline by the audio codec's priming (a few ms)
  pts = pts - pts[0]
  steps = np.diff(pts) * e["fps"]  # in nominal frames
  if e["vfr"]:
    grid = np.round(steps * videos.VFR_SUBSTEPS)
    assert len(np.unique(grid)) >= 4 and grid.min() >= 1 and grid.max() <= 9
    assert pts[-1] == pytest.approx(e["duration"] - 1 / (videos.VFR_SUBSTEPS * e["fps"]), abs=1e-3)
  else:
    np.testing.assert_allclose(steps, 1.0, atol=1.5e-3 * e["fps"])
    assert pts[-1] == pytest.approx(e["duration"] - 1 / e["fps"], abs=1e-3)


def test_collection_lists_every_file_with_its_expectation(collection):
  rejects = {e["reject"] for e in collection.values()}
  assert rejects == {None, "truncated", "empty", "not_video", "no_audio", "too_short", "no_face", "two_faces",
                     "still_image"}
  good = [e for e in collection.values() if e["reject"] is None]
  assert len(good) >= 5 and all(4 <= e["duration"] <= 6 for e in good)
  assert {os.path.splitext(e["path"])[1] for e in good} == set(videos.FORMATS)
  assert {e["fps"] for e in good} >= {24, 25, 30} and any(e["vfr"] for e in good)
  assert {e["rotation"] for e in good} >= {0, 90, 180, 270}
  assert all(os.path.isfile(e["path"]) for e in collection.values())


def test_unreadable_files_are_user_errors(collection):
  with pytest.raises(UserError, match="empty"):
    video.probe(collection["empty.mp4"]["path"])
  for name in ("notes.mp4", "truncated_no_index.mp4"):
    path = collection[name]["path"]
    for fn in (video.probe, lambda p: next(video.read_frames(p)), video.extract_audio):
      with pytest.raises(UserError, match=re.escape(path)):
        fn(path)


def test_truncated_file_loses_most_frames(collection):
  path = collection["truncated.mp4"]["path"]
  info = video.probe(path)  # the index survives: ffmpeg believes the whole length
  assert info.duration == pytest.approx(collection["truncated.mp4"]["full_duration"], abs=0.05)
  try:
    decoded = sum(1 for _ in video.read_frames(path, fps=FPS))
  except UserError:
    decoded = 0
  assert decoded < 0.6 * info.duration * FPS


def test_no_audio_and_too_short(collection):
  silent = collection["no_audio.mp4"]["path"]
  assert not video.probe(silent).has_audio and video.extract_audio(silent) is None
  assert detect_face(next(video.read_frames(silent))) is not None
  short = collection["short_2s.mp4"]["path"]
  assert video.probe(short).duration == pytest.approx(2.0, abs=0.05)
  assert sum(1 for _ in video.read_frames(short, fps=FPS)) == 2 * FPS
  assert len(video.extract_audio(short)) == pytest.approx(2 * RATE, abs=RATE * FRAME)


def test_no_face_and_two_faces(collection):
  shapes = list(video.read_frames(collection["no_face.mp4"]["path"], fps=FPS))
  assert all(detect_face(f) is None for f in _spread(shapes))
  assert video.probe(collection["no_face.mp4"]["path"]).has_audio
  pairs = _spread(list(video.read_frames(collection["two_faces.mp4"]["path"], fps=FPS)), 8)
  both = 0
  for frame in pairs:
    half = frame.shape[1] // 2
    left, right = detect_face(frame[:, :half]), detect_face(frame[:, half:])
    if left is not None and right is not None:
      both += 1
      assert left[2] == pytest.approx(right[2], rel=0.2)  # about the same size: no obvious main speaker
  assert both >= 0.9 * len(pairs)
  assert video.probe(collection["two_faces.mp4"]["path"]).has_audio


def test_still_image_decodes_as_one_frame_without_audio(collection):
  path = collection["still_image.mp4"]["path"]
  info = video.probe(path)
  frames = list(video.read_frames(path))
  assert not info.has_audio and len(frames) == 1 and detect_face(frames[0]) is not None


def test_writing_is_deterministic_and_checks_its_arguments(tmp_path):
  a, b, c = (str(tmp_path / f"{k}.mkv") for k in "abc")
  for path, seed in ((a, 0), (b, 0), (c, 1)):
    videos.talking_face(path, 1.0, size=(96, 64), vfr=True, rotation=90, clicks=(0.5,), seed=seed)
  bytes_ = [open(p, "rb").read() for p in (a, b, c)]
  assert bytes_[0] == bytes_[1] and bytes_[0] != bytes_[2]
  for kwargs in (dict(path=str(tmp_path / "x.flv")), dict(path=str(tmp_path / "x.avi"), rotation=90),
                 dict(path=str(tmp_path / "x.avi"), vfr=True), dict(path=str(tmp_path / "x.mp4"), rotation=45),
                 dict(path=str(tmp_path / "x.mp4"), clicks=(1.5,))):
    with pytest.raises(ValueError):
      videos.talking_face(seconds=1.0, **kwargs)
  assert not list(tmp_path.glob("x.*"))
