"""Face tracking for preprocessing: where the speaker's face is, where shots cut, and the clips worth keeping.

A video (already resampled to 25 fps) is scanned once at a reduced size (`scan`): every frame gets a colour
histogram, compared with the previous frame's to find shot cuts, and every `detect_every`-th frame (plus the
frames on both sides of a cut and the last frame) runs OpenCV's Haar face detector. `find_clips` then turns the
scan into clips, pure numpy with no images:

- a detection frame shows *one* face (the largest, when any other face is under `second_face_ratio` of its
  area: a bystander), *two* (two faces of about the same size, so which one speaks is ambiguous) or *none*;
- a run of one-face detections, with no cut between them and each face close to the run's median face (centre
  within `max_shift` of its side, side within a factor `max_scale_change`), is one stretch of one steady face;
  a face that jumps or changes size ends it, and so does a face lost or doubled when two detections of it are
  more than `max_missing_seconds` apart (the stretch ends at its last good detection; a shorter miss, e.g. a detector
  failure on a blurred frame, is bridged);
- stretches shorter than `min_seconds` are dropped, longer than `max_seconds` split into equal parts;
- each clip gets ONE crop square, LivePortrait's crop (`renderer.crop.crop_square`) of the median face box
  over the clip: no jitter at all, and the head's own motion inside the square stays in the motion (its
  translation t and scale), as it does for LivePortrait's driving videos.
When no clip survives, `find_clips` says why in plain words (see `Rejection`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import cv2
import numpy as np

from playmate_jax.renderer import crop as crop_lib

FPS = 25


@dataclasses.dataclass(frozen=True)
class TrackSettings:
  """Every number of the tracker (the preprocessing CLI exposes the ones users change)."""
  detect_every: int = 5               # run the face detector on every n-th frame (and around cuts)
  scan_max_side: int = 360            # frames are shrunk to this longer side for scanning
  min_face: float = 0.1               # smallest face looked for, as a fraction of the frame's shorter side
  detect_scale_step: float = 1.2      # face sizes the detector tries are this factor apart
  cut_threshold: float = 0.45         # Bhattacharyya distance of HSV histograms between frames: a shot cut
  second_face_ratio: float = 0.5      # a second face with at least this fraction of the largest's area: "two"
  max_shift: float = 0.5              # face centre may move this fraction of its side from the run's median
  max_scale_change: float = 1.3       # face side may change by this factor from the run's median
  max_missing_seconds: float = 0.4    # a face missed (or doubled) between detections this close is bridged
  min_seconds: float = 3.0
  max_seconds: float = 30.0
  crop_scale: float = crop_lib.SOURCE_SCALE        # LivePortrait's source-portrait crop, as at inference
  crop_vy_ratio: float = crop_lib.SOURCE_VY_RATIO


@dataclasses.dataclass
class Scan:
  """What `scan` saw: frame count, shot cuts (index of each new shot's first frame), and the Haar boxes
  (x, y, w, h, in the original frame's pixels) of every frame the detector ran on."""
  num_frames: int
  size: tuple[int, int]  # (height, width) of the original frames
  cuts: list[int]
  faces: dict[int, list[tuple[float, float, float, float]]]


@dataclasses.dataclass(frozen=True)
class Clip:
  """Frames [start, stop) of the 25 fps video, cropped with one square (centre x, centre y, side)."""
  start: int
  stop: int
  square: tuple[float, float, float]

  @property
  def num_frames(self) -> int:
    return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Rejection:
  """Why a video gave no clip: a short key for the report and a sentence in plain words."""
  kind: str
  reason: str


def _histogram(frame: np.ndarray) -> np.ndarray:
  small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
  hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
  hist = cv2.calcHist([hsv], [0, 1, 2], None, [12, 4, 4], [0, 180, 0, 256, 0, 256])
  return cv2.normalize(hist, hist).flatten()


def scan(frames: Iterable[np.ndarray], scale: float, settings: TrackSettings = TrackSettings()) -> Scan:
  """Cuts and faces of a stream of RGB frames that were shrunk by `scale` (boxes are divided by it, so they
  are in the original frame's pixels)."""
  s = settings
  cuts: list[int] = []
  faces: dict[int, list] = {}
  detect = lambda i, frame: faces.__setitem__(i, [tuple(v / scale for v in box) for box in
                                                  crop_lib.detect_faces(frame, s.min_face, s.detect_scale_step)])
  prev, prev_hist, i, shape = None, None, -1, (0, 0)
  for i, frame in enumerate(frames):
    shape = frame.shape[:2]
    hist = _histogram(frame)
    if prev_hist is not None and cv2.compareHist(prev_hist, hist, cv2.HISTCMP_BHATTACHARYYA) > s.cut_threshold:
      cuts.append(i)
      if i - 1 not in faces:
        detect(i - 1, prev)
      detect(i, frame)
    elif i % s.detect_every == 0:
      detect(i, frame)
    prev, prev_hist = frame, hist
  if i >= 0 and i not in faces:
    detect(i, prev)
  height, width = (round(shape[0] / scale), round(shape[1] / scale))
  return Scan(num_frames=i + 1, size=(height, width), cuts=cuts, faces=faces)


def _label(boxes: list, second_face_ratio: float) -> str:
  if not boxes:
    return "none"
  if len(boxes) > 1 and boxes[1][2] * boxes[1][3] >= second_face_ratio * boxes[0][2] * boxes[0][3]:
    return "two"
  return "one"


def _steady(box, run: list, settings: TrackSettings) -> bool:
  """Whether a face box continues a run of (frame, box) pairs: close to the run's median face."""
  x, y, w, h = np.median(np.asarray([b for _, b in run]), axis=0)
  side, new_side = max(w, h), max(box[2], box[3])
  shift = np.hypot(box[0] + box[2] / 2 - (x + w / 2), box[1] + box[3] / 2 - (y + h / 2))
  ratio = new_side / side
  return shift <= settings.max_shift * side and 1 / settings.max_scale_change <= ratio <= settings.max_scale_change


def _stretches(sc: Scan, settings: TrackSettings) -> list[list[tuple[int, tuple]]]:
  """Runs of one steady face, each a list of (detection frame, face box); a run covers frames
  [its first detection frame, its last + 1)."""
  out, run = [], []
  max_gap = settings.max_missing_seconds * FPS
  cut_between = lambda a, b: any(a < c <= b for c in sc.cuts)
  for i in sorted(sc.faces):
    boxes = sc.faces[i]
    if run and (cut_between(run[-1][0], i) or i - run[-1][0] > max_gap):
      out.append(run)
      run = []
    if _label(boxes, settings.second_face_ratio) != "one":
      continue  # a missed or doubled face: bridged if the same face is back soon enough
    if run and not _steady(boxes[0], run, settings):
      out.append(run)
      run = []
    run.append((i, boxes[0]))
  if run:
    out.append(run)
  return out


def find_clips(sc: Scan, settings: TrackSettings = TrackSettings()) -> tuple[list[Clip], Rejection | None]:
  """The clips of a scanned video, and why there are none (None when there are some)."""
  s = settings
  min_frames, max_frames = round(s.min_seconds * FPS), round(s.max_seconds * FPS)
  clips = []
  for run in _stretches(sc, s):
    start, stop = run[0][0], run[-1][0] + 1
    n = stop - start
    if n < min_frames:
      continue
    parts = -(-n // max_frames)
    bounds = [start + (n * k) // parts for k in range(parts + 1)]
    for a, b in zip(bounds[:-1], bounds[1:]):
      boxes = [box for i, box in run if a <= i < b] or [run[0][1]]
      face = tuple(float(v) for v in np.median(np.asarray(boxes), axis=0))
      clips.append(Clip(a, b, crop_lib.crop_square(face, s.crop_scale, s.crop_vy_ratio)))
  if clips:
    return clips, None
  return [], _why_none(sc, s)


def _why_none(sc: Scan, s: TrackSettings) -> Rejection:
  labels = [_label(b, s.second_face_ratio) for b in sc.faces.values()]
  one, two, none = (labels.count(k) for k in ("one", "two", "none"))
  if two > one:
    return Rejection("two_faces", "two faces of about the same size: which one is speaking is ambiguous")
  if none >= max(one, 1) or not one:
    return Rejection("no_face", "no face found")
  return Rejection("no_steady_face", f"no stretch of {s.min_seconds:g} s or more with one steady face (the face is "
                                     "lost, moves too fast or the shot cuts too often)")
