"""Portrait cropping (LivePortrait's convention around a Haar face box) and paste-back, on skimage's astronaut."""

import cv2
import numpy as np
import pytest

from playmate_jax.errors import UserError
from playmate_jax.renderer import crop as crop_lib

skimage_data = pytest.importorskip("skimage.data")

# Hand-measured on the 512x512 astronaut: eyes, mouth, chin and the top of the hair.
ASTRONAUT_FACE_POINTS = np.array([[205, 103], [245, 103], [225, 145], [225, 168], [225, 20]], np.float64)


@pytest.fixture(scope="module")
def astronaut():
  return skimage_data.astronaut()


def _inside(box, pts):
  x0, y0, x1, y1 = box
  return np.all((pts[:, 0] > x0) & (pts[:, 0] < x1) & (pts[:, 1] > y0) & (pts[:, 1] < y1))


def test_astronaut_crop_is_square_and_contains_the_face(astronaut):
  c = crop_lib.crop_portrait(astronaut)
  assert c.image.shape == (256, 256, 3) and c.image.dtype == np.float32
  assert 0.0 <= c.image.min() and c.image.max() <= 1.0
  m = c.matrix
  assert m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] == pytest.approx(m[1, 1])  # square, axis-aligned
  x0, y0, x1, y1 = c.box
  assert x1 - x0 == pytest.approx(y1 - y0)
  assert _inside(c.box, ASTRONAUT_FACE_POINTS)
  face = crop_lib.detect_face(astronaut)
  fx, fy, fw, fh = face
  assert _inside(c.box, np.array([[fx, fy], [fx + fw, fy + fh]]))
  # LivePortrait's proportions: side = 2.3 * 0.9 * Haar side, face centred horizontally, shifted down in the crop.
  assert (x1 - x0) / fw == pytest.approx(2.3 * 0.9, rel=1e-6)
  assert (x0 + x1) / 2 == pytest.approx(fx + fw / 2, abs=1e-6)
  assert (fy + fh / 2 - y0) / (y1 - y0) == pytest.approx(0.5 + 0.125 - 0.15 / (2.3 * 0.9), abs=1e-6)


def test_crop_matches_the_image_through_its_matrix(astronaut):
  c = crop_lib.crop_portrait(astronaut)
  # Crop pixel centres mapped through the matrix land on the same colours in the original.
  ij = np.stack(np.meshgrid(np.arange(40, 216, 8), np.arange(40, 216, 8)), -1).reshape(-1, 2)
  xy = (ij + 0.5) @ c.matrix[:, :2].T + c.matrix[:, 2]
  original = astronaut[np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)] / 255.0
  assert np.abs(c.image[ij[:, 1], ij[:, 0]] - original).mean() < 0.04


def test_crop_follows_the_face_when_the_image_moves(astronaut):
  c0 = crop_lib.crop_portrait(astronaut)
  dx, dy = 37, 51
  moved = np.zeros((640, 640, 3), np.uint8)
  moved[dy:dy + 512, dx:dx + 512] = astronaut
  c1 = crop_lib.crop_portrait(moved)
  np.testing.assert_allclose(np.array(c1.box), np.array(c0.box) + [dx, dy, dx, dy], atol=6)


def test_paste_back_of_the_crop_reproduces_the_original(astronaut):
  c = crop_lib.crop_portrait(astronaut)
  rendered = cv2.resize((c.image * 255).round().astype(np.uint8), (512, 512), interpolation=cv2.INTER_CUBIC)
  out = crop_lib.paste_back(astronaut, rendered, c)
  assert out.shape == astronaut.shape and out.dtype == np.uint8
  x0, y0, x1, y1 = (int(round(v)) for v in c.box)
  y0 = max(y0, 0)
  diff = np.abs(out.astype(int) - astronaut.astype(int))
  assert diff[y0:y1, x0:x1].mean() < 3.0         # resampling error only
  outside = np.ones(diff.shape[:2], bool)
  outside[y0:y1, x0:x1] = False
  assert diff[outside].max() == 0                 # untouched outside the box
  # The mask is 1 in the middle of the box: a black render shows there, and only fades out at the edges.
  black = crop_lib.paste_back(astronaut, np.zeros_like(rendered), c)
  cy, cx, q = (y0 + y1) // 2, (x0 + x1) // 2, (x1 - x0) // 4
  assert black[cy - q:cy + q, cx - q:cx + q].max() == 0
  ramp = black[cy, x0:cx].astype(float).mean(-1) / np.maximum(astronaut[cy, x0:cx].astype(float).mean(-1), 1)
  assert ramp[0] > 0.9 and ramp[-1] == 0 and np.all(np.diff(ramp[:len(ramp) // 2]) <= 0.02)  # a smooth fade


def test_paste_back_handles_a_crop_past_the_image_border(astronaut):
  top = astronaut[60:360]                         # the crop square now starts above the image
  c = crop_lib.crop_portrait(top)
  assert c.box[1] < 0
  assert c.image[:10].max() == 0                  # zeros outside the image, as LivePortrait's crop
  out = crop_lib.paste_back(top, np.full((512, 512, 3), 255, np.uint8), c)
  assert out.shape == top.shape


def test_no_face_is_a_user_error_naming_the_file(tmp_path):
  path = tmp_path / "wall.png"
  cv2.imwrite(str(path), np.full((240, 320, 3), 120, np.uint8))
  with pytest.raises(UserError) as e:
    crop_lib.crop_portrait(str(path))
  assert str(path) in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(UserError, match="No face"):
    crop_lib.crop_portrait(np.full((240, 320, 3), 120, np.uint8))
  assert crop_lib.detect_face(np.zeros((100, 100, 3), np.uint8)) is None


def test_unreadable_image_is_a_user_error(tmp_path):
  path = tmp_path / "broken.jpg"
  path.write_bytes(b"not a jpeg")
  with pytest.raises(UserError, match="broken.jpg"):
    crop_lib.crop_portrait(str(path))
  with pytest.raises(UserError, match="does not exist"):
    crop_lib.crop_portrait(str(tmp_path / "missing.jpg"))


def test_video_square_comes_from_the_first_frame_with_a_face(astronaut):
  blank = np.zeros_like(astronaut)
  found = crop_lib.find_video_square([blank, blank, astronaut, blank])
  assert found is not None and found[1] == 2
  cx, cy, side = found[0]
  assert side == pytest.approx(2.2 * 0.9 * crop_lib.detect_face(astronaut)[2])
  assert crop_lib.find_video_square([blank] * 3) is None
