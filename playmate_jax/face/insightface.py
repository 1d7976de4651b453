"""LivePortrait's own face models, run with onnxruntime: every face in an image with LivePortrait's 203 landmarks.

LivePortrait finds a face in three steps, each an ONNX model from its `pretrained_weights` download:

1. `insightface/models/buffalo_l/det_10g.onnx`, insightface's SCRFD-10G detector (insightface loads it as
   `RetinaFace`): the image is letterboxed into a 512x512 canvas (scaled to fit, top-left, zero padding),
   normalised to (x - 127.5) / 128 in RGB order, NCHW. Its 9 outputs are, for strides 8, 16, 32 in turn, the
   scores [N, 1], the box distances [N, 4] and the 5 keypoint offsets [N, 10], N = (512 / stride)^2 * 2 (two
   anchors per cell, unbatched). An anchor at cell (x, y) sits at (x, y) * stride; a box is the anchor minus
   (left, top) and plus (right, bottom) times the stride, a keypoint the anchor plus its offset times the stride.
   Anchors scoring at least 0.1 (LivePortrait's `CropConfig.det_thresh`) are kept, mapped back to the image by
   the letterbox scale, and thinned by non-maximum suppression at IoU 0.4 (insightface's, with its +1 pixel
   areas); the faces are then sorted by box area, largest first (LivePortrait's `direction='large-small'`).
2. `insightface/models/buffalo_l/2d106det.onnx`, 106 points: the face box's centre is warped into a 192x192
   crop at scale 192 / (1.5 * max(box width, box height)), no rotation; the crop goes in as raw RGB values
   0..255 (the graph subtracts and scales itself: its first nodes are `_minusscalar0` / `_mulscalar0`, which is
   how insightface's `Landmark` picks mean 0, std 1); the 212 outputs are (x, y) pairs in [-1, 1], mapped to
   crop pixels by (p + 1) * 96 and back to the image through the inverse warp.
3. `liveportrait/landmark.onnx`, 203 points (LivePortrait's `LandmarkRunner`): a 224x224 crop around the 106
   points, rolled upright along the eyes-to-lip axis, side 1.5 times the points' square extent, centre moved up
   by 0.1 of that side (`crop_image(..., dsize=224, scale=1.5, vy_ratio=-0.1)`); the crop goes in as RGB / 255,
   NCHW; the third output holds 203 (x, y) pairs in [0, 1] of the crop, times 224, mapped back through the
   crop's inverse.

The helpers for each step are pure numpy / OpenCV functions, so that they can be checked without onnxruntime;
`InsightFaceModels` loads the three sessions and strings the steps together. onnxruntime is imported only there,
so the rest of the package does not need it. Coordinates are OpenCV's, like LivePortrait's (see face.types).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from playmate_jax.errors import UserError
from playmate_jax.face.types import Face

# The three models, relative to LivePortrait's pretrained_weights folder.
MODEL_FILES = {"detector": "insightface/models/buffalo_l/det_10g.onnx",
               "landmark106": "insightface/models/buffalo_l/2d106det.onnx",
               "landmark203": "liveportrait/landmark.onnx"}

# Detector (insightface RetinaFace/SCRFD with LivePortrait's settings: Cropper.prepare(det_size=(512, 512),
# det_thresh=CropConfig.det_thresh); nms_thresh is insightface's default).
DET_SIZE = 512
DET_THRESH = 0.1
NMS_THRESH = 0.4
DET_MEAN, DET_STD = 127.5, 128.0
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
NUM_KEYPOINTS = 5

# 106-point model (insightface Landmark.get).
LMK106_SIZE = 192
LMK106_BOX_SCALE = 1.5
LMK106_MEAN, LMK106_STD = 0.0, 1.0

# 203-point model (LivePortrait LandmarkRunner: crop_image(img, lmk, dsize=224, scale=1.5, vy_ratio=-0.1)).
LMK203_SIZE = 224
LMK203_SCALE = 1.5
LMK203_VY_RATIO = -0.1
LMK203_OUTPUT = 2  # index of the 203 points among the model's outputs

_HINT = "give --face-models LivePortrait's pretrained_weights folder (it holds insightface/ and liveportrait/)"


# ----------------------------------------------------------------------------------------------------------------
# Detection.


def letterbox(image: np.ndarray, size: tuple[int, int] = (DET_SIZE, DET_SIZE)) -> tuple[np.ndarray, float]:
  """(canvas, scale): `image` resized to fit a (width, height) `size` canvas at its top-left, the rest zeros.

  insightface's RetinaFace.detect: the side that limits is resized to the canvas exactly, the other to
  int(side * ratio); `scale` = new height / old height maps canvas pixels back to the image (divide by it)."""
  height, width = image.shape[:2]
  im_ratio = float(height) / width
  model_ratio = float(size[1]) / size[0]
  if im_ratio > model_ratio:
    new_height = size[1]
    new_width = max(1, int(new_height / im_ratio))
  else:
    new_width = size[0]
    new_height = max(1, int(new_width * im_ratio))
  scale = float(new_height) / height
  canvas = np.zeros((size[1], size[0], image.shape[2]), dtype=np.uint8)
  canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
  return canvas, scale


def to_blob(image: np.ndarray, mean: float, std: float) -> np.ndarray:
  """[1, 3, H, W] float32 (x - mean) / std of an RGB [H, W, 3] image (cv2.dnn.blobFromImage with swapRB on BGR)."""
  blob = (image.astype(np.float32) - np.float32(mean)) / np.float32(std)
  return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = NUM_ANCHORS) -> np.ndarray:
  """[height * width * num_anchors, 2] float32 (x, y) anchor positions: row-major cells, each repeated per anchor."""
  centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
  centers = (centers * stride).reshape(-1, 2)
  return np.repeat(centers, num_anchors, axis=0)


def distance_to_boxes(centers: np.ndarray, distances: np.ndarray) -> np.ndarray:
  """[N, 4] (x0, y0, x1, y1) from anchor `centers` [N, 2] and (left, top, right, bottom) `distances` [N, 4]."""
  return np.stack([centers[:, 0] - distances[:, 0], centers[:, 1] - distances[:, 1],
                   centers[:, 0] + distances[:, 2], centers[:, 1] + distances[:, 3]], axis=-1)


def distance_to_points(centers: np.ndarray, distances: np.ndarray) -> np.ndarray:
  """[N, K, 2] points: anchor `centers` [N, 2] plus (dx, dy) offsets `distances` [N, 2K]."""
  return centers[:, None, :] + distances.reshape(len(distances), distances.shape[1] // 2, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESH) -> list[int]:
  """Indices of the boxes kept by greedy non-maximum suppression, highest score first.

  insightface's: areas count pixels inclusively ((x1 - x0 + 1) * (y1 - y0 + 1)) and a box goes when its IoU with
  a kept one exceeds `threshold`."""
  x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
  areas = (x1 - x0 + 1) * (y1 - y0 + 1)
  order = scores.argsort()[::-1]
  keep = []
  while order.size > 0:
    i = order[0]
    keep.append(int(i))
    rest = order[1:]
    width = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
    height = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
    inter = width * height
    iou = inter / (areas[i] + areas[rest] - inter)
    order = rest[iou <= threshold]
  return keep


def decode_detections(outputs: Sequence[np.ndarray], size: tuple[int, int], threshold: float = DET_THRESH,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(boxes [M, 4], scores [M], keypoints [M, 5, 2]) in canvas pixels of the anchors scoring >= `threshold`.

  `outputs`: the detector's 9 outputs in its order (scores, boxes, keypoints; strides 8, 16, 32 within each),
  unbatched [N, C] or batched [1, N, C]; `size`: the canvas (width, height)."""
  outputs = [np.asarray(o)[0] if np.ndim(o) == 3 else np.asarray(o) for o in outputs]
  boxes, scores, points = [], [], []
  for level, stride in enumerate(STRIDES):
    centers = anchor_centers(size[1] // stride, size[0] // stride, stride)
    level_scores = outputs[level].reshape(-1)
    if level_scores.shape[0] != centers.shape[0]:
      raise ValueError(f"stride {stride}: {level_scores.shape[0]} scores for {centers.shape[0]} anchors")
    keep = np.where(level_scores >= threshold)[0]
    distances = outputs[level + len(STRIDES)].reshape(-1, 4)[keep] * stride
    offsets = outputs[level + 2 * len(STRIDES)].reshape(-1, 2 * NUM_KEYPOINTS)[keep] * stride
    boxes.append(distance_to_boxes(centers[keep], distances))
    points.append(distance_to_points(centers[keep], offsets))
    scores.append(level_scores[keep])
  return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)


def select_detections(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, scale: float,
                      threshold: float = NMS_THRESH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """RetinaFace.detect's tail: canvas -> image pixels (divide by the letterbox `scale`), order by score, NMS."""
  boxes, points = boxes / np.float32(scale), points / np.float32(scale)
  order = scores.argsort()[::-1]
  boxes, scores, points = boxes[order], scores[order], points[order]
  keep = nms(boxes, scores, threshold)
  return boxes[keep], scores[keep], points[keep]


def sort_by_area(boxes: np.ndarray) -> list[int]:
  """Indices of `boxes` [N, 4] by area, largest first; ties keep their order (LivePortrait's 'large-small')."""
  boxes = np.asarray(boxes, dtype=np.float32)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return sorted(range(len(areas)), key=lambda i: float(areas[i]), reverse=True)


# ----------------------------------------------------------------------------------------------------------------
# 106 points.


def align_106(box: np.ndarray, size: int = LMK106_SIZE) -> np.ndarray:
  """2x3 matrix, image -> the 106 model's crop: the box centre to the crop centre, scale size / (1.5 max side).

  insightface's face_align.transform(img, center, size, scale, rotation=0) (a skimage similarity chain), with
  LivePortrait's numpy 1.26 arithmetic: float32 box sides, the centre and the scale in float64."""
  box = np.asarray(box, dtype=np.float32)
  side = float(max(box[2] - box[0], box[3] - box[1]))
  scale = size / (side * LMK106_BOX_SCALE)
  cx = float(box[2] + box[0]) / 2 * scale
  cy = float(box[3] + box[1]) / 2 * scale
  return np.array([[scale, 0.0, size / 2 - cx], [0.0, scale, size / 2 - cy]])


def points_106(prediction: np.ndarray, matrix: np.ndarray, size: int = LMK106_SIZE) -> np.ndarray:
  """[106, 2] image pixels from the model's 212 outputs in [-1, 1] of the crop that `matrix` (align_106) made."""
  points = np.asarray(prediction, dtype=np.float32).reshape(-1, 2)[-106:]
  points = (points + 1) * np.float32(size // 2)
  return transform_points(points, cv2.invertAffineTransform(matrix)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# 203 points.


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """[N, 2] points through a 2x3 (or 3x3) affine `matrix`."""
  matrix = np.asarray(matrix)
  return points @ matrix[:2, :2].T + matrix[:2, 2]


def eye_lip_points(points: np.ndarray) -> np.ndarray:
  """[2, 2]: the eyes' midpoint and the lip centre (LivePortrait's parse_pt2_from_pt106 / _pt203, use_lip)."""
  if len(points) == 106:
    left, right, lip = points[[33, 35, 40, 39]], points[[87, 89, 94, 93]], points[[52, 61]]
  elif len(points) == 203:
    left, right, lip = points[[0, 6, 12, 18]], points[[24, 30, 36, 42]], points[[48, 66]]
  else:
    raise ValueError(f"the 203-point model is fed 106 or 203 points, not {len(points)}")
  eyes = (np.mean(left, axis=0) + np.mean(right, axis=0)) / 2
  return np.stack([eyes, np.mean(lip, axis=0)])


def landmark_crop(points: np.ndarray, dsize: int = LMK203_SIZE, scale: float = LMK203_SCALE,
                  vy_ratio: float = LMK203_VY_RATIO) -> tuple[np.ndarray, np.ndarray]:
  """(M_o2c, M_c2o) 3x3: LivePortrait's crop_image square around `points` (106 or 203) and its inverse.

  The square's axes follow the face (y from the eyes' midpoint to the lip centre), its side is `scale` times the
  larger extent of the points along those axes, its centre the middle of that extent moved by `vy_ratio` times
  the side along the face's y; it is resampled to `dsize` pixels."""
  points = np.asarray(points, dtype=np.float32)
  eyes, lip = eye_lip_points(points)
  uy = lip - eyes
  length = np.linalg.norm(uy)
  uy = np.array([0, 1], dtype=np.float32) if length <= 1e-3 else uy / length
  ux = np.array([uy[1], -uy[0]], dtype=np.float32)
  angle = math.acos(ux[0]) * (-1 if ux[1] < 0 else 1)
  center0 = np.mean(points, axis=0)
  rotated = (points - center0) @ np.stack([ux, uy]).T
  low, high = rotated.min(axis=0), rotated.max(axis=0)
  middle, extent = (low + high) / 2, high - low
  side = np.full(2, max(extent[0], extent[1]), dtype=np.float32) * np.float32(scale)
  center = center0 + ux * middle[0] + uy * middle[1] + uy * (np.float32(vy_ratio) * side)
  # The matrix in float64 from the float32 values, rounded to float32 (LivePortrait's numpy 1.26 promotion).
  s, cos, sin = dsize / float(side[0]), math.cos(angle), math.sin(angle)
  cx, cy = float(center[0]), float(center[1])
  o2c = np.array([[s * cos, s * sin, dsize / 2 - s * (cos * cx + sin * cy)],
                  [-s * sin, s * cos, dsize / 2 - s * (-sin * cx + cos * cy)], [0, 0, 1]], dtype=np.float32)
  return o2c, np.linalg.inv(o2c)


def points_203(prediction: np.ndarray, c2o: np.ndarray, dsize: int = LMK203_SIZE) -> np.ndarray:
  """[203, 2] image pixels from the model's 406 outputs in [0, 1] of the crop whose inverse is `c2o`."""
  points = np.asarray(prediction, dtype=np.float32).reshape(-1, 2) * np.float32(dsize)
  return transform_points(points, c2o).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# The models.


@dataclasses.dataclass(frozen=True)
class Detection:
  """One face with every step's result: `box` (x0, y0, x1, y1) and `score` from the detector, its 5 `keypoints`
  [5, 2] (eyes, nose, lip corners), `landmarks_106` [106, 2] and `landmarks_203` [203, 2], all image pixels."""
  box: np.ndarray
  score: float
  keypoints: np.ndarray
  landmarks_106: np.ndarray
  landmarks_203: np.ndarray

  def face(self) -> Face:
    # LivePortrait crops the source portrait from the 106 points (cropper.crop_source_image); the 203 refined
    # points are what its eye and lip ratios read.
    return Face(box=self.box, score=self.score, landmarks=self.landmarks_203, crop_landmarks=self.landmarks_106)


def resolve_folder(folder: str | os.PathLike) -> str:
  """The folder holding MODEL_FILES: `folder` itself, or its pretrained_weights/ (LivePortrait's repo root)."""
  folder = os.path.expanduser(os.fspath(folder))
  if not os.path.isdir(folder):
    raise UserError(f"Face model folder {folder} does not exist; {_HINT}.")
  inner = os.path.join(folder, "pretrained_weights")
  if not any(os.path.isdir(os.path.join(folder, d)) for d in ("insightface", "liveportrait")) and os.path.isdir(inner):
    return inner
  return folder


def default_providers() -> list[str]:
  """CUDA first where this onnxruntime has it, then CPU."""
  import onnxruntime
  available = onnxruntime.get_available_providers()
  return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


class InsightFaceModels:
  """LivePortrait's detector, 106-point and 203-point models from `folder` (see the module docstring).

  `find(image)` gives every face as a face.types.Face with the 203 points; `detect(image)` the same faces as
  `Detection`s, which also carry the detector's 5 keypoints and the 106 points. `landmarks_203(image, points)`
  is LivePortrait's tracking step: the 203 points again from the previous frame's 106 or 203 points."""

  def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None):
    try:
      import onnxruntime
    except ImportError as error:
      raise UserError("onnxruntime is not installed; install it with `pip install onnxruntime` (or "
                      "onnxruntime-gpu) to use --face-models.") from error
    self.folder = resolve_folder(folder)
    self.providers = list(providers) if providers is not None else default_providers()
    self.paths = {name: os.path.join(self.folder, rel) for name, rel in MODEL_FILES.items()}
    self.sessions = {name: self._load(onnxruntime, path) for name, path in self.paths.items()}
    _check_detector(self.sessions["detector"], self.paths["detector"])
    _check_landmark106(self.sessions["landmark106"], self.paths["landmark106"])
    _check_landmark203(self.sessions["landmark203"], self.paths["landmark203"])
    self.det_size = _detector_size(self.sessions["detector"])

  def _load(self, onnxruntime, path: str):
    if not os.path.isfile(path):
      raise UserError(f"Face model {path} is missing; {_HINT}.")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
      return onnxruntime.InferenceSession(path, sess_options=options, providers=self.providers)
    except Exception as error:  # onnxruntime raises several types for unreadable or invalid files
      raise UserError(f"Face model {path} could not be loaded by onnxruntime; replace it with the file from "
                      f"LivePortrait's pretrained_weights download.") from error

  def _run(self, name: str, blob: np.ndarray) -> list[np.ndarray]:
    session = self.sessions[name]
    return session.run(None, {session.get_inputs()[0].name: blob})

  def detect_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [M, 4], scores [M], keypoints [M, 5, 2]) in image pixels after NMS, highest score first."""
    canvas, scale = letterbox(image, self.det_size)
    outputs = self._run("detector", to_blob(canvas, DET_MEAN, DET_STD))
    try:
      boxes, scores, points = decode_detections(outputs, self.det_size)
    except ValueError as error:
      raise UserError(f"Face model {self.paths['detector']} gave outputs of the wrong size ({error}); replace it "
                      f"with det_10g.onnx from LivePortrait's pretrained_weights download.") from error
    return select_detections(boxes, scores, points, scale)

  def landmarks_106(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """[106, 2] image pixels for the face in `box` (insightface Landmark.get)."""
    matrix = align_106(box)
    crop = cv2.warpAffine(image, matrix, (LMK106_SIZE, LMK106_SIZE), borderValue=0.0)
    prediction = self._run("landmark106", to_blob(crop, LMK106_MEAN, LMK106_STD))[0][0]
    return points_106(prediction, matrix)

  def landmarks_203(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[203, 2] image pixels from the 224 crop around 106 or 203 `points` (LivePortrait LandmarkRunner.run)."""
    o2c, c2o = landmark_crop(points)
    crop = cv2.warpAffine(image, o2c[:2], (LMK203_SIZE, LMK203_SIZE), flags=cv2.INTER_LINEAR)
    prediction = self._run("landmark203", to_blob(crop, 0.0, 255.0))[LMK203_OUTPUT][0]
    return points_203(prediction, c2o)

  def detect(self, image: np.ndarray) -> list[Detection]:
    """Every face in an RGB uint8 [H, W, 3] `image`, all steps' results, largest box first."""
    image = _check_image(image)
    boxes, scores, keypoints = self.detect_boxes(image)
    found = []
    for i in sort_by_area(boxes):
      points106 = self.landmarks_106(image, boxes[i])
      found.append(Detection(box=boxes[i].astype(np.float32), score=float(scores[i]), keypoints=keypoints[i],
                             landmarks_106=points106, landmarks_203=self.landmarks_203(image, points106)))
    return found

  def find(self, image: np.ndarray) -> list[Face]:
    """Every face in an RGB uint8 [H, W, 3] `image` with its 203 points, largest box first."""
    return [detection.face() for detection in self.detect(image)]

  def find_batch(self, images: list[np.ndarray], small_faces: bool = False) -> list[list[Face]]:
    """`find` per image (the detector already looks at every face size; `small_faces` needs no second pass)."""
    return [self.find(image) for image in images]


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------------------------------------------
# What each model must look like (insightface's model router and LivePortrait's runners read the same).


def _fixed(dim) -> int | None:
  return dim if isinstance(dim, int) and dim > 0 else None


def _mismatch(path: str, found: str, expected: str) -> UserError:
  return UserError(f"Face model {path} is not the model LivePortrait uses there ({found}, expected {expected}); "
                   f"replace it with {os.path.basename(path)} from LivePortrait's pretrained_weights download.")


def _check_input(session, path: str, sides: tuple[int, int] | None) -> None:
  inputs = session.get_inputs()
  shape = inputs[0].shape if len(inputs) == 1 else None
  want = f"one input [1, 3, {sides[0]}, {sides[1]}]" if sides else "one input [1, 3, H, W]"
  if shape is None or len(shape) != 4 or _fixed(shape[1]) not in (None, 3):
    raise _mismatch(path, f"inputs {[i.shape for i in inputs]}", want)
  if sides and any(_fixed(d) not in (None, s) for d, s in zip(shape[2:], sides)):
    raise _mismatch(path, f"input {shape}", want)


def _check_detector(session, path: str) -> None:
  _check_input(session, path, None)
  outputs = session.get_outputs()
  want = "9 outputs: scores [N, 1], boxes [N, 4], keypoints [N, 10] for strides 8, 16, 32"
  if len(outputs) != 9:
    raise _mismatch(path, f"{len(outputs)} outputs", want)
  for output, channels in zip(outputs, (1,) * 3 + (4,) * 3 + (10,) * 3):
    if len(output.shape) not in (2, 3) or _fixed(output.shape[-1]) not in (None, channels):
      raise _mismatch(path, f"output {output.name} {output.shape}", want)


def _check_landmark106(session, path: str) -> None:
  _check_input(session, path, (LMK106_SIZE, LMK106_SIZE))
  if _fixed(session.get_inputs()[0].shape[2]) is None:
    raise _mismatch(path, f"input {session.get_inputs()[0].shape}", "one input [1, 3, 192, 192]")
  outputs = session.get_outputs()
  if len(outputs) != 1 or len(outputs[0].shape) != 2 or _fixed(outputs[0].shape[1]) not in (None, 212):
    raise _mismatch(path, f"outputs {[o.shape for o in outputs]}", "one output [1, 212]")


def _check_landmark203(session, path: str) -> None:
  _check_input(session, path, (LMK203_SIZE, LMK203_SIZE))
  outputs = session.get_outputs()
  want = "at least 3 outputs, the third [1, 406] (203 points)"
  if len(outputs) <= LMK203_OUTPUT:
    raise _mismatch(path, f"{len(outputs)} outputs", want)
  dims = outputs[LMK203_OUTPUT].shape[1:]
  if not dims or (all(_fixed(d) for d in dims) and math.prod(dims) != 406):
    raise _mismatch(path, f"third output {outputs[LMK203_OUTPUT].shape}", want)


def _detector_size(session) -> tuple[int, int]:
  """(width, height) the detector runs at: its own fixed input size, else LivePortrait's 512x512."""
  height, width = (_fixed(d) for d in session.get_inputs()[0].shape[2:])
  return (width, height) if width and height else (DET_SIZE, DET_SIZE)
