"""LivePortrait's landmark face crop (playmate_jax.face.crop): parity with LivePortrait, geometry, paste-back."""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np
import pytest

from playmate_jax.errors import UserError
from playmate_jax.face import crop as fc

skimage_data = pytest.importorskip("skimage.data")

MATRIX_RTOL = 1e-4      # LivePortrait's matrices are float32 inside; ours float64
CROP_MEAN_ABS = 1.0     # uint8 levels, mean over the crop


# ----------------------------------------------------------------------------------------------------------------------
# Parity with LivePortrait (vectors made by its src/utils/crop.py; layout in shared/parity/README.md, section crop/)

@pytest.fixture(scope="module")
def crop_reference(parity_dir):
  path = os.path.join(parity_dir, "crop", "crop_reference.npz")
  if not os.path.isfile(path):
    pytest.skip(f"crop parity vectors not found at {path}")
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  cases = sorted(m.group(1) for m in (re.fullmatch(r"(case\d+)_landmarks", k) for k in arrays) if m)
  assert cases, f"{path} holds no caseNNN_landmarks"
  return arrays, cases


def _matrix_error(ours: np.ndarray, ref: np.ndarray, dsize: int) -> float:
  """Relative error of an M_c2o: of its linear part, and of the whole acting on the crop's extent (columns scaled
  by dsize), so that translation and scale are judged against the crop's size and place in the image."""
  extent = np.diag([dsize, dsize, 1.0])
  whole = np.linalg.norm((ours - ref) @ extent) / np.linalg.norm(ref @ extent)
  linear = np.linalg.norm(ours[:2, :2] - ref[:2, :2]) / np.linalg.norm(ref[:2, :2])
  return float(max(whole, linear))


@pytest.mark.parity
@pytest.mark.parametrize("name,spec", [("source", fc.SOURCE), ("driving", fc.DRIVING)])
def test_crop_matrix_parity(crop_reference, name, spec):
  arrays, cases = crop_reference
  failures = []
  for case in cases:
    key = f"{case}_{name}_M_c2o"
    if key not in arrays:
      continue
    ref = np.asarray(arrays[key], np.float64)
    ours = fc.crop_matrix(arrays[f"{case}_landmarks"], spec)
    assert ours.shape == (3, 3) and ours.dtype == np.float64
    np.testing.assert_array_equal(ours[2], [0.0, 0.0, 1.0])
    err = _matrix_error(ours, ref, spec.dsize)
    if not err <= MATRIX_RTOL:
      n = arrays[f"{case}_landmarks"].shape[0]
      failures.append(f"{case} ({n} points): relative error {err:.2e}")
  assert not failures, f"{name} M_c2o differs from LivePortrait's: " + "; ".join(failures)


@pytest.mark.parity
def test_crop_matrix_parity_covers_every_case(crop_reference):
  arrays, cases = crop_reference
  for case in cases:
    n = arrays[f"{case}_landmarks"].shape[0]
    assert n in (5, 68, 106, 203), f"{case}: {n} landmarks, a layout LivePortrait's crop does not read"
    assert f"{case}_source_M_c2o" in arrays or f"{case}_driving_M_c2o" in arrays, f"{case} has no matrix"


@pytest.mark.parity
def test_crop256_parity(crop_reference):
  arrays, cases = crop_reference
  image = arrays["image"]
  failures = []
  for case in (c for c in cases if f"{c}_source_crop256" in arrays):
    ref = arrays[f"{case}_source_crop256"]
    m = fc.crop_matrix(arrays[f"{case}_landmarks"], fc.SOURCE)
    ours = fc.crop256(image, m, fc.SOURCE.dsize, ref.shape[0])
    assert ours.shape == ref.shape and ours.dtype == np.uint8, case
    diff = float(np.abs(ours.astype(np.int16) - ref).mean())
    if not diff <= CROP_MEAN_ABS:
      failures.append(f"{case}: mean abs diff {diff:.3f} levels")
    face = fc.crop_face(image, arrays[f"{case}_landmarks"], fc.SOURCE, ref.shape[0])
    np.testing.assert_array_equal(np.round(face.image * 255.0).astype(np.uint8), ours, err_msg=case)
  assert not failures, "crop256 differs from LivePortrait's: " + "; ".join(failures)


# ----------------------------------------------------------------------------------------------------------------------
# Landmarks: hand-placed on skimage's 512 x 512 astronaut, and synthetic clouds in every layout

EYES_68 = [36, 39, 42, 45]
ASTRONAUT_ANCHORS = {  # 68-point index -> (x, y), measured by eye
    0: (181, 122), 16: (271, 122), 8: (222, 187), 19: (204, 90), 24: (247, 90), 30: (225, 126),
    36: (196, 101), 39: (212, 101), 42: (239, 103), 45: (255, 103), 48: (204, 141), 54: (245, 141)}


def _astronaut_landmarks() -> np.ndarray:
  pts = np.tile(np.array(ASTRONAUT_ANCHORS[30], np.float64), (68, 1))
  for i, xy in ASTRONAUT_ANCHORS.items():
    pts[i] = xy
  return pts


def _cloud(n: int, rng: np.random.Generator, centre=(300.0, 250.0), size=120.0) -> np.ndarray:
  """A random upright face-like cloud of n landmarks: the eye and lip indices placed like eyes and lips."""
  cx, cy = centre
  pts = rng.uniform([cx - size / 2, cy - size * 0.7], [cx + size / 2, cy + size * 0.6], (n, 2))
  (left, right), lips = fc._EYES[n], fc._LIPS[n]
  jitter = rng.normal(0.0, 2.0, (len(left), 2))  # mirrored between the eyes: the eye centre stays at x = cx
  pts[left] = [cx - 0.2 * size, cy - 0.15 * size] + jitter
  pts[right] = [cx + 0.2 * size, cy - 0.15 * size] + jitter * [-1.0, 1.0]
  pts[list(lips)] = [[cx - 0.15 * size, cy + 0.25 * size], [cx + 0.15 * size, cy + 0.25 * size]]
  return pts


def _rotation(degrees: float, about) -> np.ndarray:
  """3x3: rotation by `degrees` about point `about` in image pixels (x right, y down: positive turns x towards y)."""
  t = np.radians(degrees)
  r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
  m = np.eye(3)
  m[:2, :2] = r
  m[:2, 2] = np.asarray(about) - r @ np.asarray(about)
  return m


@pytest.fixture(scope="module")
def astronaut():
  return skimage_data.astronaut()


def test_eye_lip_points_per_layout():
  rng = np.random.default_rng(0)
  for n in (5, 68, 106, 203):
    pts = _cloud(n, rng)
    eyes, lips = fc.eye_lip_points(pts)
    np.testing.assert_allclose(lips, [300.0, 280.0], atol=1e-9)
    np.testing.assert_allclose(eyes, [300.0, 232.0], atol=3.0)
  pts = _astronaut_landmarks()
  np.testing.assert_allclose(fc.eye_lip_points(pts), [[225.5, 102.0], [224.5, 141.0]])
  for bad in (np.zeros((7, 2)), np.zeros((68, 3)), np.zeros(68)):
    with pytest.raises(ValueError):
      fc.eye_lip_points(bad)


# ----------------------------------------------------------------------------------------------------------------------
# Geometry

@pytest.mark.parametrize("n", [5, 68, 106, 203])
@pytest.mark.parametrize("degrees", [-60.0, 25.0, 90.0])
def test_crop_removes_the_roll(n, degrees):
  pts = _cloud(n, np.random.default_rng(n))
  upright = fc.crop_matrix(pts)
  # an upright face's crop is not turned
  assert abs(upright[0, 1]) < 1e-12 and abs(upright[1, 0]) < 1e-12
  rot = _rotation(degrees, (123.0, 456.0))
  turned = fc.crop_matrix(fc.apply(rot, pts))
  # the crop turns with the face: same square, carried by the rotation
  np.testing.assert_allclose(turned, rot @ upright, atol=1e-9 * np.abs(upright).max())
  angle = np.degrees(np.arctan2(turned[1, 0], turned[0, 0]))
  assert angle == pytest.approx(degrees, abs=1e-9)


def test_crop_of_a_rotated_image_equals_the_crop_of_the_upright_one(astronaut):
  pts = _astronaut_landmarks()
  upright = fc.crop_face(astronaut, pts)
  rot = _rotation(35.0, pts.mean(axis=0))
  turned_image = cv2.warpAffine(astronaut, rot[:2], (512, 512), flags=cv2.INTER_LINEAR)
  turned = fc.crop_face(turned_image, fc.apply(rot, pts))
  np.testing.assert_allclose(turned.matrix, rot @ upright.matrix, atol=1e-9)
  inner = slice(32, 224)  # away from the black corners the rotation brings into the turned image
  diff = np.abs(turned.image[inner, inner] - upright.image[inner, inner]).mean()
  assert diff < 0.01
  unturned = fc.crop_face(turned_image, fc.apply(rot, pts), dataclasses.replace(fc.SOURCE, rotate=False))
  assert np.abs(unturned.image[inner, inner] - upright.image[inner, inner]).mean() > 5 * diff


@pytest.mark.parametrize("degrees", [0.0, -40.0])
def test_crop_side_is_scale_times_the_square_landmark_box(degrees):
  pts = _cloud(68, np.random.default_rng(7), size=150.0)
  x0, y0 = pts.min(axis=0)
  x1, y1 = pts.max(axis=0)
  box_side, box_centre = max(x1 - x0, y1 - y0), np.array([(x0 + x1) / 2, (y0 + y1) / 2])
  rot = _rotation(degrees, (200.0, 100.0))
  ux, uy = rot[:2, :2] @ [1.0, 0.0], rot[:2, :2] @ [0.0, 1.0]
  for scale, vx, vy in [(2.3, 0.0, -0.125), (2.2, 0.0, -0.1), (1.0, 0.0, 0.0), (1.7, 0.05, 0.2)]:
    spec = fc.CropSpec(dsize=512, scale=scale, vx_ratio=vx, vy_ratio=vy)
    m = fc.crop_matrix(fc.apply(rot, pts), spec)
    side = np.linalg.norm(m[:2, 0]) * spec.dsize
    assert side == pytest.approx(scale * box_side, rel=1e-9)
    assert np.linalg.norm(m[:2, 1]) * spec.dsize == pytest.approx(side, rel=1e-9)
    centre = fc.apply(m, [[spec.dsize / 2, spec.dsize / 2]])[0]  # LivePortrait's centre: crop point (256, 256)
    expected = fc.apply(rot, [box_centre])[0] + vx * side * ux + vy * side * uy
    np.testing.assert_allclose(centre, expected, atol=1e-9 * side)


def test_crop_without_rotation_keeps_the_square_upright():
  pts = fc.apply(_rotation(40.0, (300.0, 250.0)), _cloud(203, np.random.default_rng(2)))
  turned = fc.crop_matrix(pts, fc.DRIVING)
  upright = fc.crop_matrix(pts, dataclasses.replace(fc.DRIVING, rotate=False))
  # LivePortrait's flag_do_rot=False: the same centre and side (found in the face's axes), no turn
  np.testing.assert_allclose(upright[:2, :2], np.eye(2) * np.linalg.norm(turned[:2, 0]), atol=1e-12)
  np.testing.assert_allclose(fc.apply(upright, [[256.0, 256.0]]), fc.apply(turned, [[256.0, 256.0]]), atol=1e-9)


def test_crop_presets():
  assert fc.SOURCE == fc.CropSpec(dsize=512, scale=2.3, vx_ratio=0.0, vy_ratio=-0.125, rotate=True)
  assert fc.DRIVING == fc.CropSpec(dsize=512, scale=2.2, vx_ratio=0.0, vy_ratio=-0.1, rotate=True)
  with pytest.raises(dataclasses.FrozenInstanceError):
    fc.SOURCE.scale = 3.0


def test_crop_of_coincident_eyes_and_lips_stays_upright():
  pts = _cloud(5, np.random.default_rng(3))
  pts[[0, 1, 3, 4]] = pts[0]  # eyes and lips coincide; the nose still spans a box
  m = fc.crop_matrix(pts)
  assert abs(m[0, 1]) < 1e-12 and abs(m[1, 0]) < 1e-12 and m[0, 0] > 0


def test_crop_corners_and_box():
  pts = _cloud(106, np.random.default_rng(5))
  rot = _rotation(30.0, (0.0, 0.0))
  crop = fc.crop_face(np.zeros((600, 600, 3), np.uint8), fc.apply(rot, pts), size=256)
  corners = crop.corners
  side = np.linalg.norm(crop.matrix[:2, 0]) * 256
  np.testing.assert_allclose(np.linalg.norm(np.diff(np.vstack([corners, corners[:1]]), axis=0), axis=1), side)
  np.testing.assert_allclose(np.degrees(np.arctan2(*(corners[1] - corners[0])[::-1])), 30.0)
  x0, y0, x1, y1 = crop.box
  assert (x0, y0, x1, y1) == (corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max())
  assert crop.size == 256 and crop.image.shape == (256, 256, 3) and crop.image.dtype == np.float32


# ----------------------------------------------------------------------------------------------------------------------
# Resolution changes and the pixel convention

def test_crop_scaled_matrix_keeps_the_square():
  m = fc.crop_matrix(fc.apply(_rotation(-20.0, (50.0, 60.0)), _cloud(68, np.random.default_rng(1))))
  for size in (256, 64, 1000):
    scaled = fc.scaled_matrix(m, 512, size)
    image = np.zeros((size, size, 3), np.float32)
    np.testing.assert_allclose(fc.Crop(image, scaled).corners, fc.Crop(np.zeros((512, 512, 3)), m).corners, atol=1e-9)
    np.testing.assert_allclose(fc.scaled_matrix(scaled, size, 512), m, atol=1e-9)
  # pixel j of the 256 crop is the average of 512 pixels 2j and 2j + 1: its centre is 512 pixel 2j + 0.5
  half = fc.scaled_matrix(m, 512, 256)
  np.testing.assert_allclose(fc.apply(half, [[10.0, 20.0]]), fc.apply(m, [[20.5, 40.5]]), atol=1e-9)


def test_crop256_equals_a_direct_warp_through_the_scaled_matrix(astronaut):
  pts = _astronaut_landmarks()
  m = fc.crop_matrix(fc.apply(_rotation(20.0, (256.0, 256.0)), pts), fc.CropSpec(scale=4.0))
  image = cv2.warpAffine(astronaut, _rotation(20.0, (256.0, 256.0))[:2], (512, 512))
  image = cv2.GaussianBlur(image, (0, 0), 1.5)  # no detail finer than either crop resolves
  small = fc.crop256(image, m).astype(np.float32)
  direct = fc.warp_crop(image, fc.scaled_matrix(m, 512, 256), 256).astype(np.float32)
  assert fc.pixel_scale(m) > 0.7  # a real resample
  inner = slice(8, 248)
  good = np.abs(small - direct)[inner, inner].mean()
  assert good < 0.6
  # a half-pixel slip (pixel edges taken as centres) shows
  naive = np.array(m) @ np.diag([2.0, 2.0, 1.0])
  slipped = fc.warp_crop(image, naive, 256).astype(np.float32)
  assert np.abs(small - slipped)[inner, inner].mean() > 2 * good


def test_crop_warp_is_lossless_at_unit_scale(astronaut):
  h, w = 300, 500
  image = np.ascontiguousarray(astronaut[:h, :w])
  m = fc.center_crop_matrix(h, w, 300)
  np.testing.assert_array_equal(fc.warp_crop(image, m, 300), image[:, 100:400])
  np.testing.assert_allclose(fc.Crop(np.zeros((64, 64, 3)), fc.center_crop_matrix(h, w, 64)).box,
                             (99.5, -0.5, 399.5, 299.5), atol=1e-9)
  tall = np.ascontiguousarray(astronaut[:w, :h])
  np.testing.assert_array_equal(fc.warp_crop(tall, fc.center_crop_matrix(w, h, 300), 300), tall[100:400])


def test_crop256_is_liveportrait_up_to_its_exact_scale_and_does_not_alias_beyond(astronaut):
  noise = np.random.default_rng(0).integers(0, 256, (3300, 3300, 3), dtype=np.uint8)
  photo = np.tile(astronaut, (5, 5, 1))  # 2560 x 2560

  def square(k, centre):  # an upright crop of k image pixels per 512-crop pixel
    return np.array([[k, 0.0, centre - k * 256.0], [0.0, k, centre - k * 256.0], [0.0, 0.0, 1.0]])

  def liveportrait(image, m):
    return cv2.resize(fc.warp_crop(image, m, 512), (256, 256), interpolation=cv2.INTER_AREA)

  m = square(fc.EXACT_MAX_SCALE - 0.1, 1650.0)
  np.testing.assert_array_equal(fc.crop256(noise, m), liveportrait(noise, m))
  # just past the exact range: a small step on a photo, and the filter only takes detail away
  m = square(fc.EXACT_MAX_SCALE + 0.05, 1280.0)
  assert np.abs(fc.crop256(photo, m).astype(np.int16) - liveportrait(photo, m)).mean() < 1.5
  assert fc.crop256(noise, m).std() <= liveportrait(noise, m).std()
  # crop side 3277 px: LivePortrait's warp keeps much of the noise, an alias-free crop averages it away
  m = square(6.4, 1650.0)
  huge = fc.crop256(noise, m).astype(np.float32)
  assert liveportrait(noise, m).std() > 25.0
  assert huge.std() < 74.0 / (6.4 * 2) * 1.5  # 256-crop pixel = 12.8 x 12.8 noise pixels of std 74
  assert abs(huge.mean() - 127.5) < 2.0


# ----------------------------------------------------------------------------------------------------------------------
# Paste-back

def _outside(crop: fc.Crop, shape, margin: float = 1.5) -> np.ndarray:
  """[H, W] bool: pixel centres more than `margin` px outside the crop's (rotated) square."""
  inv = np.linalg.inv(crop.matrix)
  ys, xs = np.mgrid[:shape[0], :shape[1]]
  c = fc.apply(inv, np.stack([xs.ravel(), ys.ravel()], -1)).reshape(shape[0], shape[1], 2)
  step = np.linalg.norm(crop.matrix[:2, 0])
  lo, hi = -0.5 - margin / step, crop.size - 0.5 + margin / step
  return ((c < lo) | (c > hi)).any(-1)


def _inside(crop: fc.Crop, shape, fraction: float) -> np.ndarray:
  """[H, W] bool: pixel centres within the central `fraction` of the crop's square."""
  inv = np.linalg.inv(crop.matrix)
  ys, xs = np.mgrid[:shape[0], :shape[1]]
  c = fc.apply(inv, np.stack([xs.ravel(), ys.ravel()], -1)).reshape(shape[0], shape[1], 2) + 0.5
  margin = crop.size * (1 - fraction) / 2
  return ((c > margin) & (c < crop.size - margin)).all(-1)


def test_crop_paste_back_touches_only_the_crop(astronaut):
  pts = fc.apply(_rotation(-50.0, (225.0, 120.0)), _astronaut_landmarks())
  crop = fc.crop_face(astronaut, pts, size=256)
  rendered = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
  out = fc.paste_back(astronaut, rendered, crop)
  assert out.shape == astronaut.shape and out.dtype == np.uint8
  outside = _outside(crop, astronaut.shape)
  np.testing.assert_array_equal(out[outside], astronaut[outside])
  inside = _inside(crop, astronaut.shape, 0.7)
  assert np.abs(out[inside].astype(np.int16) - astronaut[inside]).mean() > 30
  # the work stays within the crop's bounding box
  paster = fc.PasteBack(astronaut, crop, 512)
  x0, y0, x1, y1 = crop.box
  px0, py0, px1, py1 = paster.roi
  assert px0 >= x0 - 2 and py0 >= y0 - 2 and px1 <= x1 + 3 and py1 <= y1 + 3
  np.testing.assert_array_equal(paster(rendered), out)
  np.testing.assert_array_equal(paster(rendered.astype(np.float32) / 255.0), out)


@pytest.mark.parametrize("size", [512, 256])
def test_crop_paste_back_of_its_own_crop_reproduces_the_image(astronaut, size):
  pts = fc.apply(_rotation(30.0, (225.0, 120.0)), _astronaut_landmarks())
  crop = fc.crop_face(astronaut, pts, size=size)
  assert abs(crop.matrix[1, 0]) > 0.1 * abs(crop.matrix[0, 0])  # the square is turned
  out = fc.paste_back(astronaut, crop.image, crop)
  inside = _inside(crop, astronaut.shape, 0.7)
  err = np.abs(out[inside].astype(np.float32) - astronaut[inside]).mean()
  assert err < 4.0
  # half a pixel off would show
  slipped = fc.Crop(crop.image, crop.matrix @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]]))
  assert np.abs(fc.paste_back(astronaut, crop.image, slipped)[inside].astype(np.float32) - astronaut[inside]).mean() \
      > 1.4 * err


def test_crop_partly_outside_the_image(astronaut):
  pts = _astronaut_landmarks() - [150.0, 60.0]  # the face near the top-left corner: its crop overhangs
  crop = fc.crop_face(astronaut, pts, size=256)
  x0, y0, _, _ = crop.box
  assert x0 < 0 and y0 < 0
  assert crop.image[:10, :10].max() == 0.0  # black outside the image
  out = fc.paste_back(astronaut, crop.image, crop)
  outside = _outside(crop, astronaut.shape)
  np.testing.assert_array_equal(out[outside], astronaut[outside])
  inside = _inside(crop, astronaut.shape, 0.7)
  assert inside.sum() > 1000
  assert np.abs(out[inside].astype(np.float32) - astronaut[inside]).mean() < 4.0
  gone = fc.Crop(crop.image, crop.matrix @ np.array([[1, 0, -2000.0], [0, 1, 0], [0, 0, 1]]))
  np.testing.assert_array_equal(fc.paste_back(astronaut, crop.image, gone), astronaut)
  assert fc.crop256(astronaut, fc.scaled_matrix(gone.matrix, 256, 512)).max() == 0


def test_crop_paste_back_rejects_a_wrong_size(astronaut):
  crop = fc.crop_face(astronaut, _astronaut_landmarks())
  with pytest.raises(ValueError):
    fc.PasteBack(astronaut, crop, 512)(np.zeros((256, 256, 3), np.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# Images

def test_crop_as_rgb_uint8():
  gray = np.full((4, 5), 7, np.uint8)
  assert fc.as_rgb_uint8(gray).shape == (4, 5, 3)
  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., 3] = 255
  np.testing.assert_array_equal(fc.as_rgb_uint8(rgba), np.zeros((4, 5, 3), np.uint8))
  np.testing.assert_array_equal(fc.as_rgb_uint8(np.array([[[0.0, 0.5, 1.0]]])), [[[0, 128, 255]]])
  with pytest.raises(ValueError):
    fc.as_rgb_uint8(np.zeros((4, 5, 2)))


def test_crop_load_image(tmp_path, astronaut):
  path = tmp_path / "portrait.png"
  cv2.imwrite(str(path), astronaut[..., ::-1])
  np.testing.assert_array_equal(fc.load_image(path), astronaut)
  with pytest.raises(UserError, match="missing.png"):
    fc.load_image(tmp_path / "missing.png")
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  with pytest.raises(UserError, match="broken.jpg"):
    fc.load_image(broken)
