"""Face tracking for preprocessing: where the speaker's face is, where shots cut, and the clips worth keeping.

A video (already resampled to 25 fps) is scanned once at a reduced size (`scan`): every frame gets a colour
histogram, compared with the previous frame's to find shot cuts, and every `detect_every`-th frame (plus the
frames on both sides of a cut and the last frame) runs the face detector and landmarks (`face.finder`; faces of
the whole frame only, so a small face in the background stays small and is ignored). `find_clips` then turns the
scan into clips, pure numpy with no images:

- a detection frame shows *one* face (the largest, when any other face is under `second_face_ratio` of its
  area: a bystander), *two* (two faces of about the same size, so which one speaks is ambiguous) or *none*;
- a run of one-face detections, with no cut between them and each face close to the run's median face (centre
  within `max_shift` of its side, side within a factor `max_scale_change`), is one stretch of one steady face;
  a face that jumps or changes size ends it, and so does a face lost or doubled when two detections of it are
  more than `max_missing_seconds` apart (the stretch ends at its last good detection; a shorter miss, e.g. a detector
  failure on a blurred frame, is bridged);
- stretches shorter than `min_seconds` are dropped, longer than `max_seconds` split into equal parts;
- each clip gets ONE crop, LivePortrait's source crop (`face.crop`) computed from each detection frame's landmarks,
  its centre, side and roll each the median over the clip: no jitter at all, and the head's own motion inside the
  crop stays in the motion (its translation t, scale and roll), as it does for LivePortrait's driving videos.
When no clip survives, `find_clips` says why in plain words (see `Rejection`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import cv2
import numpy as np

from playmate_jax.face import crop as crop_lib
from playmate_jax.face import finder as face_finder

FPS = 25


@dataclasses.dataclass(frozen=True)
class TrackSettings:
  """Every number of the tracker (the preprocessing CLI exposes the ones users change)."""
  detect_every: int = 5               # run the face detector on every n-th frame (and around cuts)
  scan_max_side: int = 480            # frames are shrunk to this longer side for scanning
  min_face: float = 0.1               # smaller faces (side / the frame's shorter side) are background: ignored
  cut_threshold: float = 0.45         # Bhattacharyya distance of HSV histograms between frames: a shot cut
  second_face_ratio: float = 0.5      # a second face with at least this fraction of the largest's area: "two"
  max_shift: float = 0.5              # face centre may move this fraction of its side from the run's median
  max_scale_change: float = 1.3       # face side may change by this factor from the run's median
  max_missing_seconds: float = 0.4    # a face missed (or doubled) between detections this close is bridged
  min_seconds: float = 3.0
  max_seconds: float = 30.0
  crop_scale: float = crop_lib.SOURCE.scale        # LivePortrait's source-portrait crop, as at inference
  crop_vy_ratio: float = crop_lib.SOURCE.vy_ratio
  face_models: str | None = None      # LivePortrait's face models folder (--face-models), else MediaPipe's


@dataclasses.dataclass
class Scan:
  """What `scan` saw: frame count, shot cuts (index of each new shot's first frame), and, for every frame the
  detector ran on, the face boxes (x, y, w, h) and the crop landmarks [N, 2], largest first, in the original
  frame's pixels."""
  num_frames: int
  size: tuple[int, int]  # (height, width) of the original frames
  cuts: list[int]
  faces: dict[int, list[tuple[float, float, float, float]]]
  landmarks: dict[int, list[np.ndarray]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Clip:
  """Frames [start, stop) of the 25 fps video, cropped with one LivePortrait crop: `matrix`, its 512 M_c2o."""
  start: int
  stop: int
  matrix: np.ndarray

  @property
  def num_frames(self) -> int:
    return self.stop - self.start

  @property
  def square(self) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the upright square around the (possibly rotated) crop."""
    corners = crop_lib.apply(self.matrix, np.array([[-0.5, -0.5], [511.5, -0.5], [511.5, 511.5], [-0.5, 511.5]]))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2), float((hi - lo).max())


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
  """Cuts and faces of a stream of RGB frames that were shrunk by `scale` (boxes and landmarks are divided by
  it, so they are in the original frame's pixels)."""
  s = settings
  cuts: list[int] = []
  faces: dict[int, list] = {}
  marks: dict[int, list] = {}
  find = face_finder.finder(s.face_models)

  def detect(i, frame):
    found = [f for f in find.find_batch([frame])[0] if max(f.box[2] - f.box[0], f.box[3] - f.box[1])
             >= s.min_face * min(frame.shape[:2])]
    faces[i] = [tuple(float(v) / scale for v in (f.box[0], f.box[1], f.box[2] - f.box[0], f.box[3] - f.box[1]))
                for f in found]
    marks[i] = [f.crop_landmarks / scale for f in found]

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
  return Scan(num_frames=i + 1, size=(height, width), cuts=cuts, faces=faces, landmarks=marks)


def clip_matrix(landmarks: list[np.ndarray], settings: TrackSettings = TrackSettings()) -> np.ndarray:
  """One 512 crop matrix for a clip: LivePortrait's crop of each landmark set, its centre, side and roll each the
  median over the clip."""
  spec = crop_lib.CropSpec(scale=settings.crop_scale, vy_ratio=settings.crop_vy_ratio)
  squares = [crop_lib.crop_square(lm, spec) for lm in landmarks]
  # Rounded (1/100 px, 1e-5 rad): the face models' last bits differ with the CPU's threading (a worker process
  # or the main one), and the dataset must not.
  centre = np.median(np.stack([c for c, _, _ in squares]), axis=0).round(2)
  side = round(float(np.median([sd for _, sd, _ in squares])), 2)
  angle = round(float(np.median([np.arctan2(ax[0, 1], ax[0, 0]) for _, _, ax in squares])), 5)
  c, s_ = np.cos(angle), np.sin(angle)
  return crop_lib.square_matrix(centre, side, np.array([[c, s_], [-s_, c]]), spec.dsize)


def _label(boxes: list, second_face_ratio: float) -> str:
  if not boxes:
    return "none"
  if len(boxes) > 1 and boxes[1][2] * boxes[1][3] >= second_face_ratio * boxes[0][2] * boxes[0][3]:
    return "two"
  return "one"


def _steady(box, run: list, settings: TrackSettings) -> bool:
  """Whether a face box continues a run of (frame, box) pairs: close to the run's median face."""
  x, y, w, h = np.median(np.asarray([r[1] for r in run]), axis=0)
  side, new_side = max(w, h), max(box[2], box[3])
  shift = np.hypot(box[0] + box[2] / 2 - (x + w / 2), box[1] + box[3] / 2 - (y + h / 2))
  ratio = new_side / side
  return shift <= settings.max_shift * side and 1 / settings.max_scale_change <= ratio <= settings.max_scale_change


def _stretches(sc: Scan, settings: TrackSettings) -> list[list[tuple]]:
  """Runs of one steady face, each a list of (detection frame, face box, landmarks); a run covers frames
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
    run.append((i, boxes[0], sc.landmarks[i][0] if sc.landmarks.get(i) else None))
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
      marks = [lm for i, _, lm in run if a <= i < b and lm is not None] or [run[0][2]]
      clips.append(Clip(a, b, clip_matrix(marks, s)))
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
