"""Portrait cropping in LivePortrait's convention, with an offline face detector, and paste-back.

LivePortrait crops a square around the face: from its 203 facial landmarks it takes the landmarks' bounding
box (roll-aligned), makes it square with side L = max(width, height) (brows to chin, cheek to cheek), scales
the side by `scale` (2.3 for a source portrait) and moves the centre by `vy_ratio` times the scaled side along
the face's downward axis (-0.125: up, to keep the hair and forehead); the square is resampled to 256x256.

We have no landmark model offline, so the face comes from OpenCV's bundled Haar cascade
(haarcascade_frontalface_default.xml; the largest face). A Haar box is square and sits higher and a little
wider than the landmark box: it spans roughly mid-forehead to just above the chin. We map it to LivePortrait's
landmark box with two constants, estimated by eye against the brows, chin and cheeks of a frontal face
(skimage's astronaut): L = 0.9 * haar_side, and the landmark box's centre 0.15 * haar_side below the Haar
box's centre (same x). They are approximate; the crop's scale matters more than its exact position, since
motion is taken relative to the first frame. Haar boxes carry no roll, so the crop is never rotated
(LivePortrait's `flag_do_rot` has nothing to correct). On skimage's astronaut the Haar box is 93 px; the crop
is then a 193 px square from the top of the hair to the collar, the face's proportions in LivePortrait's crops.

`Crop.matrix` maps crop coordinates (x, y) to the original image, like LivePortrait's M_c2o (continuous
coordinates: pixel i covers [i, i + 1)). `paste_back`
warps a rendered crop (any resolution, e.g. the renderer's 512x512) into the original through that matrix and
blends it in with a feathered square mask, so that no seam shows.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable

import cv2
import numpy as np

from playmate_jax.errors import UserError

CROP_SIZE = 256
SOURCE_SCALE, SOURCE_VY_RATIO = 2.3, -0.125  # LivePortrait's source-portrait crop
VIDEO_SCALE, VIDEO_VY_RATIO = 2.2, -0.1      # LivePortrait's driving-video crop
HAAR_TO_LANDMARK_SIZE = 0.9   # landmark box side / Haar box side
HAAR_TO_LANDMARK_DY = 0.15    # (landmark box centre y - Haar box centre y) / Haar box side
FEATHER = 0.12                # paste-back mask: fraction of the crop side over which it fades to zero
DETECT_MAX_SIDE = 640         # images are downscaled to at most this for detection (speed)


@dataclasses.dataclass(frozen=True)
class Crop:
  """A square face crop: `image` float32 [S, S, 3] in [0, 1]; `matrix` 2x3, crop (x, y, 1) -> original (x, y)."""
  image: np.ndarray
  matrix: np.ndarray

  @property
  def size(self) -> int:
    return int(self.image.shape[0])

  @property
  def box(self) -> tuple[float, float, float, float]:
    """The crop square in original pixel coordinates: (left, top, right, bottom)."""
    (x0, y0), (x1, y1) = _apply(self.matrix, np.array([[0.0, 0.0], [self.size, self.size]]))
    return float(x0), float(y0), float(x1), float(y1)


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
  return pts @ matrix[:, :2].T + matrix[:, 2]


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
  if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
    raise UserError(f"OpenCV {cv2.__version__} has no bundled Haar face detector (OpenCV 5 dropped it); install "
                    "OpenCV 4 with `pip install 'opencv-python<5'`.")
  path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise UserError(f"OpenCV's face detector {path} could not be loaded; reinstall opencv-python (version 4.x, "
                    "which bundles the Haar cascades).")
  return cascade


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """RGB uint8 [H, W, 3] from gray, RGB or RGBA, uint8 or float in [0, 1]."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
  return np.ascontiguousarray(image[..., :3])


def load_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as RGB uint8 [H, W, 3]; UserError naming the file if it is missing or unreadable."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"Image file {path} does not exist; check the path.")
  image = cv2.imread(path, cv2.IMREAD_COLOR)
  if image is None:
    raise UserError(f"Image file {path} could not be read; give a JPEG, PNG or other image OpenCV can open.")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def detect_faces(image: np.ndarray, min_face: float = 0.06,
                 scale_step: float = 1.1) -> list[tuple[float, float, float, float]]:
  """Every frontal face as a Haar box (x, y, w, h) in pixels, largest first (empty when there is none).

  Faces smaller than `min_face` of the image's shorter side are not looked for; the detector tries face sizes
  `scale_step` apart. Both trade recall and box precision for speed (most of the time goes to small faces)."""
  gray = cv2.cvtColor(as_rgb_uint8(image), cv2.COLOR_RGB2GRAY)
  factor = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
  if factor < 1.0:
    gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
  gray = cv2.equalizeHist(gray)
  min_side = max(24, int(min_face * min(gray.shape)))
  faces = _cascade().detectMultiScale(gray, scaleFactor=scale_step, minNeighbors=5, minSize=(min_side, min_side))
  faces = sorted((tuple(float(v) / factor for v in f) for f in faces), key=lambda f: -f[2] * f[3])
  return faces


def detect_face(image: np.ndarray) -> tuple[float, float, float, float] | None:
  """The largest frontal face as a Haar box (x, y, w, h) in pixels, or None when there is none."""
  faces = detect_faces(image)
  return faces[0] if faces else None


def crop_square(face: tuple[float, float, float, float], scale: float = SOURCE_SCALE,
                vy_ratio: float = SOURCE_VY_RATIO) -> tuple[float, float, float]:
  """LivePortrait's crop square (centre x, centre y, side) for a Haar face box (x, y, w, h)."""
  x, y, w, h = face
  side = max(w, h)
  landmark_side = HAAR_TO_LANDMARK_SIZE * side
  cx, cy = x + w / 2.0, y + h / 2.0 + HAAR_TO_LANDMARK_DY * side
  crop_side = scale * landmark_side
  return cx, cy + vy_ratio * crop_side, crop_side


def crop_pixels(image: np.ndarray, square: tuple[float, float, float], size: int = CROP_SIZE) -> np.ndarray:
  """The square (centre x, centre y, side) of the image resampled to RGB uint8 [size, size, 3] (zeros outside
  the image); a square much larger than `size` is shrunk with area averaging first, so that it does not alias."""
  cx, cy, side = square
  s = side / size
  pixels = as_rgb_uint8(image)
  h, w = pixels.shape[:2]
  # Only the square's region (plus a pixel of margin for interpolation) is resampled, not the whole frame.
  x0, y0 = max(0, int(np.floor(cx - side / 2)) - 1), max(0, int(np.floor(cy - side / 2)) - 1)
  x1, y1 = min(w, int(np.ceil(cx + side / 2)) + 1), min(h, int(np.ceil(cy + side / 2)) + 1)
  if x1 <= x0 or y1 <= y0:  # the square lies entirely outside the image
    return np.zeros((size, size, 3), np.uint8)
  pixels = pixels[y0:y1, x0:x1]
  to_crop = cv2.invertAffineTransform(_square_matrix((cx - x0, cy - y0, side), size))
  if s > 1.5:
    h, w = pixels.shape[:2]
    small = cv2.resize(pixels, (max(1, round(w / s)), max(1, round(h / s))), interpolation=cv2.INTER_AREA)
    to_small = np.diag([small.shape[1] / w, small.shape[0] / h])
    to_crop = np.concatenate([to_crop[:, :2] @ np.linalg.inv(to_small), to_crop[:, 2:]], axis=1)
    pixels = small
  return cv2.warpAffine(pixels, _pixel_warp(to_crop), (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _square_matrix(square: tuple[float, float, float], size: int) -> np.ndarray:
  """2x3 map from crop coordinates of a size x size crop to the square (centre x, centre y, side)."""
  cx, cy, side = square
  s = side / size
  return np.array([[s, 0.0, cx - side / 2.0], [0.0, s, cy - side / 2.0]], np.float64)


def crop_with_square(image: np.ndarray, square: tuple[float, float, float], size: int = CROP_SIZE) -> Crop:
  """The square (centre x, centre y, side) of the image as a Crop of size x size (zeros outside the image)."""
  crop = crop_pixels(image, square, size)
  return Crop(image=crop.astype(np.float32) / 255.0, matrix=_square_matrix(square, size))


def crop_portrait(image: np.ndarray | str | os.PathLike, size: int = CROP_SIZE, scale: float = SOURCE_SCALE,
                  vy_ratio: float = SOURCE_VY_RATIO, name: str | os.PathLike | None = None) -> Crop:
  """The portrait's face crop (LivePortrait's source convention). `image` is RGB uint8 or an image path;
  UserError (naming the file: the path, or `name` for pixels read from it) when no face is found."""
  if isinstance(image, (str, os.PathLike)):
    name = os.fspath(image)
    pixels = load_image(name)
  else:
    pixels = as_rgb_uint8(image)
  face = detect_face(pixels)
  if face is None:
    where = f"portrait {name}" if name is not None else "the portrait image"
    raise UserError(f"No face was found in {where}; use a photo with one clearly visible, frontal face.")
  return crop_with_square(pixels, crop_square(face, scale, vy_ratio), size)


def find_video_square(frames: Iterable[np.ndarray], scale: float = VIDEO_SCALE, vy_ratio: float = VIDEO_VY_RATIO,
                      max_frames: int | None = 250) -> tuple[tuple[float, float, float], int] | None:
  """(crop square, frame index) from the first frame with a face among the first `max_frames`, else None.

  One fixed square for the whole video (LivePortrait's driving-video crop sizes): the driving motion is taken
  relative to the first frame, so a fixed square keeps the head's own translation in the motion.
  """
  for i, frame in enumerate(frames):
    if max_frames is not None and i >= max_frames:
      break
    face = detect_face(frame)
    if face is not None:
      return crop_square(face, scale, vy_ratio), i
  return None


def center_square(height: int, width: int) -> tuple[float, float, float]:
  """The largest centred square of a frame, as (centre x, centre y, side)."""
  return width / 2.0, height / 2.0, float(min(height, width))


class PasteBack:
  """Pastes rendered crops back into one original image; the warped mask is computed once (for videos).

  Only the crop square's region of the original is touched, so the cost follows the face's size, not the
  photo's."""

  def __init__(self, original: np.ndarray, crop: Crop, rendered_size: int, feather: float = FEATHER):
    self.original = as_rgb_uint8(original)
    h, w = self.original.shape[:2]
    x0, y0, x1, y1 = crop.box
    self.roi = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))), min(w, int(np.ceil(x1))),
                min(h, int(np.ceil(y1))))
    rx0, ry0, rx1, ry1 = self.roi
    self.roi_size = (max(0, rx1 - rx0), max(0, ry1 - ry0))  # (width, height)
    # rendered -> crop coordinates is a scale by crop.size / rendered_size (both cover the same square);
    # then crop -> original, then original -> region of interest.
    m = crop.matrix.astype(np.float64)
    self.matrix = np.concatenate([m[:, :2] * (crop.size / rendered_size), m[:, 2:]], axis=1)
    self.rendered_size = rendered_size
    to_roi = self.matrix.copy()
    to_roi[:, 2] -= (rx0, ry0)
    self._warp = _pixel_warp(to_roi)
    if min(self.roi_size) > 0:
      mask = cv2.warpAffine(_feathered_mask(rendered_size, feather), self._warp, self.roi_size,
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
      self.mask = mask[..., None]
      region = self.original[ry0:ry1, rx0:rx1].astype(np.float32)
      self._base = region * (1.0 - self.mask)

  def __call__(self, rendered: np.ndarray) -> np.ndarray:
    """The original with the rendered crop [R, R, 3] (uint8 or float in [0, 1]) blended in; RGB uint8."""
    rendered = as_rgb_uint8(rendered)
    if rendered.shape[0] != self.rendered_size or rendered.shape[1] != self.rendered_size:
      raise ValueError(f"rendered image is {rendered.shape[:2]}, expected {self.rendered_size} square")
    out = self.original.copy()
    if min(self.roi_size) == 0:  # the crop lies entirely outside the image
      return out
    warped = cv2.warpAffine(rendered, self._warp, self.roi_size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x0, y0, x1, y1 = self.roi
    out[y0:y1, x0:x1] = np.clip(self._base + warped.astype(np.float32) * self.mask + 0.5, 0, 255).astype(np.uint8)
    return out


def paste_back(original: np.ndarray, rendered: np.ndarray, crop: Crop, feather: float = FEATHER) -> np.ndarray:
  """The original image with the rendered crop (e.g. the renderer's 512x512 output) blended back in place."""
  return PasteBack(original, crop, int(np.asarray(rendered).shape[0]), feather)(rendered)


def _pixel_warp(matrix: np.ndarray) -> np.ndarray:
  """cv2.warpAffine's forward map (source pixel index -> destination pixel index) for a matrix that maps
  continuous coordinates (pixel i covers [i, i + 1))."""
  m = matrix.astype(np.float64).copy()
  # continuous: dst = A src + b; index: dst_i + 0.5 = A (src_i + 0.5) + b
  m[:, 2] = m[:, 2] + m[:, :2] @ np.array([0.5, 0.5]) - 0.5
  return m


def _feathered_mask(size: int, feather: float) -> np.ndarray:
  """[size, size] float32: 1 inside, falling smoothly (cosine) to 0 at the border over feather * size px."""
  ramp = max(1.0, feather * size)
  d = np.minimum(np.arange(size) + 0.5, size - (np.arange(size) + 0.5)) / ramp
  edge = 0.5 - 0.5 * np.cos(np.pi * np.clip(d, 0.0, 1.0))
  return np.outer(edge, edge).astype(np.float32)
