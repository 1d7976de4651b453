"""LivePortrait's face crop, computed from facial landmarks, and the helpers that crop with it and paste back.

The renderer's networks were trained on LivePortrait's crops, so the portrait and the driving frames must be cut
the way LivePortrait cuts them (its `src/utils/crop.py`, `crop_image` with `flag_do_rot=True`):
- two points give the face's axes: the eye centre and the lip centre (`eye_lip_points`). The down axis `uy` runs
  from the eyes to the lips, the right axis is `ux = (uy_y, -uy_x)`; the crop is turned with them, so the roll
  is removed (eyes level in the crop).
- all the landmarks, seen in those axes, give a bounding box; its larger side times `scale` is the crop's side
  and its centre, moved by `vy_ratio * side` along `uy` (negative: up, towards the forehead) and `vx_ratio * side`
  along `ux`, is the crop's centre. LivePortrait's `crop_image` drops `vx_ratio` (it is always 0 there); here it
  is honoured.
- the square is resampled to `dsize` x `dsize` (512) with bilinear cv2.warpAffine, black outside the image, and
  LivePortrait's cropper shrinks that to 256 x 256 with cv2.INTER_AREA for its networks (`crop256`).

Matrices are 3x3 `M_c2o` as LivePortrait returns them: crop pixel (x, y, 1) -> image pixel. Pixels follow
OpenCV's convention (cv2.warpAffine's): pixel (row i, column j) has its centre at x = j, y = i, so an S x S crop
covers [-0.5, S - 0.5] in its own coordinates. LivePortrait puts the square's centre at crop point
(dsize / 2, dsize / 2), half a pixel right of and below the crop's middle; that is kept, since the networks saw it.

LivePortrait warps straight from the image, so a large face aliases: past 2 image pixels per 512-crop pixel the
bilinear samples skip pixels that the 2x2 INTER_AREA step cannot recover. `crop256` is LivePortrait's crop up to
EXACT_MAX_SCALE (4: a 2048 px square, faces up to about 900 px) and area-averages the face's region of the image
first above it, by just enough that the warp sees at most max(ALIAS_FREE_SCALE, 2 * EXACT_MAX_SCALE - scale)
image pixels per crop pixel: alias-free from 6 on, with only a small step where a video's face grows past 4.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from playmate_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """LivePortrait's crop settings: crop resolution `dsize`, side = `scale` * landmark box side, centre shift."""
  dsize: int = 512
  scale: float = 2.3
  vx_ratio: float = 0.0
  vy_ratio: float = -0.125
  rotate: bool = True


SOURCE = CropSpec(dsize=512, scale=2.3, vx_ratio=0.0, vy_ratio=-0.125, rotate=True)   # the portrait
DRIVING = CropSpec(dsize=512, scale=2.2, vx_ratio=0.0, vy_ratio=-0.1, rotate=True)    # driving-video frames
EXACT_MAX_SCALE = 4.0   # image pixels per dsize-crop pixel up to which crop256 is LivePortrait's crop exactly
ALIAS_FREE_SCALE = 2.0  # ... and at most this many (bilinear, then 2x2 area) once the face is large (see above)
FEATHER = 0.12          # paste-back mask: fraction of the crop side over which it fades to zero

# Landmarks LivePortrait averages into the eye centre (two eyes) and the lip centre, per layout.
_EYES = {5: ([0], [1]), 68: ([36, 39], [42, 45]), 106: ([33, 35, 40, 39], [87, 89, 94, 93]),
         203: ([0, 6, 12, 18], [24, 30, 36, 42])}
_LIPS = {5: (3, 4), 68: (48, 54), 106: (52, 61), 203: (48, 66)}


@dataclasses.dataclass(frozen=True)
class Crop:
  """A square face crop: `image` float32 [S, S, 3] in [0, 1]; `matrix` [3, 3] crop pixel -> image pixel."""
  image: np.ndarray
  matrix: np.ndarray

  @property
  def size(self) -> int:
    return int(self.image.shape[0])

  @property
  def corners(self) -> np.ndarray:
    """[4, 2] the crop's outer corners in image pixels: top-left, top-right, bottom-right, bottom-left."""
    return apply(self.matrix, _square_corners(self.size))

  @property
  def box(self) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1): the axis-aligned bounding box of `corners`, in image pixels."""
    c = self.corners
    return float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max())


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """[N, 2] points (x, y) mapped through a 2x3 or 3x3 affine matrix."""
  m = np.asarray(matrix, np.float64)
  return np.asarray(points, np.float64) @ m[:2, :2].T + m[:2, 2]


def _square_corners(size: int) -> np.ndarray:
  lo, hi = -0.5, size - 0.5
  return np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi]], np.float64)


def eye_lip_points(landmarks: np.ndarray) -> np.ndarray:
  """[2, 2]: LivePortrait's eye centre and lip centre (x, y) for 5, 68, 106 or 203 landmarks [N, 2]."""
  pts = np.asarray(landmarks, np.float64)
  n = pts.shape[0] if pts.ndim == 2 and pts.shape[1] == 2 else None
  if n not in _EYES:
    raise ValueError(f"expected landmarks [N, 2] with N in {sorted(_EYES)}, got shape {pts.shape}")
  left, right = _EYES[n]
  eyes = (pts[left].mean(axis=0) + pts[right].mean(axis=0)) / 2.0
  lips = pts[list(_LIPS[n])].mean(axis=0)
  return np.stack([eyes, lips])


def _face_axes(landmarks: np.ndarray) -> np.ndarray:
  """[2, 2] rows ux, uy: the face's right and down unit axes in the image, from the eyes to the lips."""
  eyes, lips = eye_lip_points(landmarks)
  down = lips - eyes
  length = float(np.linalg.norm(down))
  uy = down / length if length > 1e-3 else np.array([0.0, 1.0])
  return np.array([[uy[1], -uy[0]], uy])


def crop_square(landmarks: np.ndarray, spec: CropSpec = SOURCE) -> tuple[np.ndarray, float, np.ndarray]:
  """(centre [2], side, axes [2, 2] rows x, y) of LivePortrait's crop square in image pixels.

  The centre and side always come from the landmarks seen in the face's axes; `spec.rotate` only decides whether
  the square turns with the face or stays upright (as LivePortrait's flag_do_rot does)."""
  pts = np.asarray(landmarks, np.float64)
  axes = _face_axes(pts)
  mean = pts.mean(axis=0)
  local = (pts - mean) @ axes.T  # the landmarks in face axes
  lo, hi = local.min(axis=0), local.max(axis=0)
  side = float((hi - lo).max()) * spec.scale
  middle = (lo + hi) / 2.0 + side * np.array([spec.vx_ratio, spec.vy_ratio])
  return mean + middle @ axes, side, axes if spec.rotate else np.eye(2)


def crop_matrix(landmarks: np.ndarray, spec: CropSpec = SOURCE) -> np.ndarray:
  """LivePortrait's M_c2o [3, 3] float64: pixel (x, y, 1) of the spec.dsize crop -> image pixel."""
  return square_matrix(*crop_square(landmarks, spec), spec.dsize)


def square_matrix(centre: np.ndarray, side: float, axes: np.ndarray, dsize: int) -> np.ndarray:
  """M_c2o [3, 3] of a square (centre, side, axes rows x, y) as a dsize crop, LivePortrait's way (its centre at
  crop point (dsize / 2, dsize / 2))."""
  spec = CropSpec(dsize=dsize)
  step = side / spec.dsize  # image pixels per crop pixel
  m = np.eye(3)
  m[:2, :2] = step * axes.T  # crop x runs along ux, crop y along uy
  m[:2, 2] = centre - m[:2, :2] @ np.full(2, spec.dsize / 2.0)
  return m


def scaled_matrix(m_c2o: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
  """The same square's M_c2o for a to_size crop instead of a from_size one.

  A resize keeps the square's outer edges: pixel j of the to_size crop covers [j, j + 1) * r - 0.5 in from_size
  pixels (r = from_size / to_size), so its centre is from_size pixel r * j + (r - 1) / 2."""
  r = from_size / to_size
  resize = np.array([[r, 0.0, (r - 1.0) / 2.0], [0.0, r, (r - 1.0) / 2.0], [0.0, 0.0, 1.0]])
  return _as3x3(m_c2o) @ resize


def center_crop_matrix(height: int, width: int, size: int) -> np.ndarray:
  """M_c2o [3, 3] of the largest centred square of a height x width image, as a size x size crop."""
  side = float(min(height, width))
  r = side / size
  x0, y0 = (width - side) / 2.0, (height - side) / 2.0  # the square's outer top-left edge, in pixel edges
  return np.array([[r, 0.0, x0 + r / 2.0 - 0.5], [0.0, r, y0 + r / 2.0 - 0.5], [0.0, 0.0, 1.0]])


def _as3x3(matrix: np.ndarray) -> np.ndarray:
  m = np.asarray(matrix, np.float64)
  return m if m.shape == (3, 3) else np.vstack([m[:2], [0.0, 0.0, 1.0]])


def warp_crop(image: np.ndarray, m_c2o: np.ndarray, dsize: int) -> np.ndarray:
  """[dsize, dsize, C] of the image seen through M_c2o: bilinear, black outside (LivePortrait's _transform_img)."""
  m_o2c = np.linalg.inv(_as3x3(m_c2o))[:2]
  return cv2.warpAffine(np.ascontiguousarray(image), m_o2c, (dsize, dsize), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))


def pixel_scale(matrix: np.ndarray) -> float:
  """Image pixels per crop pixel of an M_c2o (the square root of its linear part's determinant)."""
  m = _as3x3(matrix)
  return float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))


def _shrunk_region(image: np.ndarray, m_c2o: np.ndarray, dsize: int, factor: float):
  """(pixels, matrix): the crop's region of the image area-averaged by `factor`, and M_c2o into those pixels."""
  h, w = image.shape[:2]
  corners = apply(m_c2o, _square_corners(dsize))
  margin = 2.0 * factor + 2.0
  x0, y0 = (max(0, int(np.floor(v - margin))) for v in corners.min(axis=0))
  x1, y1 = min(w, int(np.ceil(corners[:, 0].max() + margin))), min(h, int(np.ceil(corners[:, 1].max() + margin)))
  if x1 <= x0 or y1 <= y0:
    return None, None
  region = image[y0:y1, x0:x1]
  sw, sh = max(1, round((x1 - x0) / factor)), max(1, round((y1 - y0) / factor))
  small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
  fx, fy = (x1 - x0) / sw, (y1 - y0) / sh
  # small pixel q covers region pixels [q, q + 1) * f - 0.5: region pixel p is small pixel (p + 0.5) / f - 0.5.
  to_small = np.array([[1 / fx, 0.0, 0.5 / fx - 0.5 - x0 / fx], [0.0, 1 / fy, 0.5 / fy - 0.5 - y0 / fy], [0, 0, 1]])
  return small, to_small @ _as3x3(m_c2o)


def crop256(image: np.ndarray, m_c2o: np.ndarray, dsize: int = 512, out: int = 256) -> np.ndarray:
  """LivePortrait's network input: the dsize crop (warp_crop) shrunk to out x out with cv2.INTER_AREA.

  A face larger than EXACT_MAX_SCALE image pixels per crop pixel is area-averaged first (see the module doc);
  only its region of the image is touched."""
  pixels, m = np.asarray(image), _as3x3(m_c2o)
  scale = pixel_scale(m)
  if scale > EXACT_MAX_SCALE:
    target = max(ALIAS_FREE_SCALE, 2.0 * EXACT_MAX_SCALE - scale)
    pixels, m = _shrunk_region(pixels, m, dsize, scale / target)
    if pixels is None:  # the square lies entirely outside the image
      return np.zeros((out, out) + np.asarray(image).shape[2:], np.asarray(image).dtype)
  crop = warp_crop(pixels, m, dsize)
  if out == dsize:
    return crop
  return cv2.resize(crop, (out, out), interpolation=cv2.INTER_AREA)


def crop_face(image: np.ndarray, landmarks: np.ndarray, spec: CropSpec = SOURCE, size: int = 256) -> Crop:
  """LivePortrait's crop of the face (spec.dsize, then INTER_AREA to size); its matrix maps the size crop."""
  pixels = as_rgb_uint8(image)
  m = crop_matrix(landmarks, spec)
  crop = crop256(pixels, m, spec.dsize, size)
  return Crop(image=crop.astype(np.float32) / 255.0, matrix=scaled_matrix(m, spec.dsize, size))


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
  """An image file as RGB uint8 [H, W, 3] (EXIF orientation applied); UserError naming a missing/unreadable file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"Image file {path} does not exist; check the path.")
  # IMREAD_COLOR applies the EXIF orientation (a phone photo as it is displayed) and brings gray, palette, CMYK and
  # 16-bit pictures to 8-bit BGR.
  image = cv2.imread(path, cv2.IMREAD_COLOR)
  if image is None:
    raise UserError(f"Image file {path} could not be read; give a JPEG, PNG, WebP or other image OpenCV can open.")
  if image.shape[0] < 16 or image.shape[1] < 16:
    raise UserError(f"Image file {path} is only {image.shape[1]}x{image.shape[0]} pixels; give a photo at least "
                    "64 pixels across the face.")
  return cv2.cvtColor(_over_white(path, image), cv2.COLOR_BGR2RGB)


def _over_white(path: str, bgr: np.ndarray) -> np.ndarray:
  """A picture with transparency shown as a viewer shows it on a page: its colours over white (IMREAD_COLOR drops
  the alpha channel, leaving whatever colour the transparent pixels happen to hold)."""
  if os.path.splitext(path)[1].lower() not in (".png", ".webp", ".tif", ".tiff", ".gif"):
    return bgr
  full = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if full is None or full.ndim != 3 or full.shape[2] != 4 or full.shape[:2] != bgr.shape[:2]:
    return bgr
  scale = 65535.0 if full.dtype == np.uint16 else 255.0
  alpha = full[..., 3:].astype(np.float32) / scale
  return np.clip(bgr.astype(np.float32) * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)


def _feathered_mask(size: int, feather: float) -> np.ndarray:
  """[size, size] float32: 1 inside, falling smoothly (cosine) to 0 at the square's edge over feather * size px."""
  ramp = max(1.0, feather * size)
  edge_distance = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size)) / ramp
  edge = 0.5 - 0.5 * np.cos(np.pi * np.clip(edge_distance, 0.0, 1.0))
  return np.outer(edge, edge).astype(np.float32)


class PasteBack:
  """Pastes rendered crops [R, R, 3] back into one original image through the crop's (possibly rotated) square.

  The warped feathered mask is computed once (for videos). Only the square's bounding box in the original is
  touched, so the cost follows the face's size, not the photo's; a rendered crop larger than twice the face's
  size in the original is area-averaged down first, so that it does not alias."""

  def __init__(self, original: np.ndarray, crop: Crop, rendered_size: int, feather: float = FEATHER):
    self.original = as_rgb_uint8(original)
    self.rendered_size = int(rendered_size)
    h, w = self.original.shape[:2]
    to_image = scaled_matrix(crop.matrix, crop.size, self.rendered_size)
    side = pixel_scale(to_image) * self.rendered_size  # the square's side in original pixels
    self.work_size = int(min(self.rendered_size, max(2, np.ceil(2.0 * side))))
    corners = apply(to_image, _square_corners(self.rendered_size))
    x0, y0 = (max(0, int(np.floor(v)) - 1) for v in corners.min(axis=0))
    x1, y1 = min(w, int(np.ceil(corners[:, 0].max())) + 2), min(h, int(np.ceil(corners[:, 1].max())) + 2)
    self.roi = (x0, y0, max(x0, x1), max(y0, y1))
    self.roi_size = (max(0, x1 - x0), max(0, y1 - y0))  # (width, height)
    to_roi = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    self._warp = (to_roi @ scaled_matrix(to_image, self.rendered_size, self.work_size))[:2]
    if min(self.roi_size) > 0:
      self.mask = self._warped(_feathered_mask(self.work_size, feather))[..., None]
      self._base = self.original[y0:y1, x0:x1].astype(np.float32) * (1.0 - self.mask)

  def _warped(self, pixels: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(pixels, self._warp, self.roi_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))

  def __call__(self, rendered: np.ndarray) -> np.ndarray:
    """The original with the rendered crop (uint8 or float in [0, 1]) blended in; RGB uint8."""
    rendered = as_rgb_uint8(rendered)
    if rendered.shape[:2] != (self.rendered_size, self.rendered_size):
      raise ValueError(f"rendered image is {rendered.shape[:2]}, expected {self.rendered_size} square")
    out = self.original.copy()
    if min(self.roi_size) == 0:  # the crop lies entirely outside the image
      return out
    if self.work_size != self.rendered_size:
      rendered = cv2.resize(rendered, (self.work_size, self.work_size), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = self.roi
    blended = self._base + self._warped(rendered).astype(np.float32) * self.mask
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def paste_back(original: np.ndarray, rendered: np.ndarray, crop: Crop, feather: float = FEATHER) -> np.ndarray:
  """The original image with the rendered crop (e.g. the renderer's 512 x 512 output) blended back in place."""
  return PasteBack(original, crop, int(np.asarray(rendered).shape[0]), feather)(rendered)
