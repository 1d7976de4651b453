"""face.insightface: LivePortrait's three face models run with onnxruntime, checked on tiny stand-in models.

The stand-ins are built here with onnx.helper and have the real models' input and output names, ranks and
shapes; their outputs are constants plus one term read from a single input pixel, so that the expected boxes,
keypoints, 106 and 203 points follow in closed form and the pre-processing (letterbox, mean/std, RGB order)
shows in the numbers. Expectations are written out by hand, not with the module's helpers.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from playmate_jax.errors import UserError
from playmate_jax.face import insightface
from playmate_jax.face.types import Face

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
from onnx import TensorProto, helper  # noqa: E402

# The test image: 301x600, a flat background with a red block under the faces' centres.
HEIGHT, WIDTH = 301, 600
BACKGROUND = (90, 120, 60)
RED_ROWS, RED_COLS = (100, 230), (320, 470)
LETTERBOX_SCALE = 256 / 301  # 600 wide -> 512, 301 high -> int(512 * 301 / 600) = 256

# The real face: stride 16, cell (20, 8), second anchor; its score is read from the canvas pixel at the anchor.
FACE_CELL, FACE_ANCHOR = (20, 8), 1
FACE_DIST = (4.0, 5.0, 4.0, 6.0)  # left, top, right, bottom, in strides
FACE_KPS = ((-1.5, -1.0), (1.5, -1.0), (0.0, 0.5), (-1.0, 2.0), (1.0, 2.0))
FACE_SCORE = (255 - 127.5) / 128 - (0 - 127.5) / 128 - 1.5  # R - B of the normalised red pixel, minus 1.5
# A lower-scored copy one cell to the right (NMS removes it), a larger low-scored face at stride 32, and an
# anchor under the 0.1 threshold.
DUPLICATE_CELL, DUPLICATE_SCORE = (21, 8), 0.3
BIG_CELL, BIG_DIST, BIG_SCORE = (3, 3), (3.0, 3.0, 3.0, 3.0), 0.2
WEAK_CELL, WEAK_SCORE = (50, 10), 0.09

# 106 and 203 model terms: weights on the (R, G, B) values of the crop's centre pixel, added to every output.
W106 = (0.0005, 0.0, -0.0005)
W203 = (0.01, 0.0, -0.01)


def _points_106() -> np.ndarray:
  """A normalised 106 point set: an ellipse, with level eyes and the lip centre straight below their midpoint."""
  theta = 2 * np.pi * np.arange(106) / 106
  points = np.stack([0.5 * np.cos(theta), 0.6 * np.sin(theta)], axis=-1)
  for indices, x in (([33, 35, 40, 39], -0.25), ([87, 89, 94, 93], 0.25)):
    points[indices] = [[x - 0.05, -0.2], [x, -0.22], [x + 0.05, -0.2], [x, -0.18]]
  points[52], points[61] = (-0.1, 0.35), (0.1, 0.35)
  return points.astype(np.float32)


def _points_203() -> np.ndarray:
  rng = np.random.default_rng(3)
  return rng.uniform(0.1, 0.9, size=(203, 2)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Stand-in models.


def _pixel_term(graph_input: str, y: int, x: int, weights, prefix: str) -> tuple[list, list, str]:
  """Nodes and initialisers computing sum(weights * input[0, :, y, x]) into the scalar named prefix + '_term'."""
  inits = [helper.make_tensor(f"{prefix}_starts", TensorProto.INT64, [4], [0, 0, y, x]),
           helper.make_tensor(f"{prefix}_ends", TensorProto.INT64, [4], [1, 3, y + 1, x + 1]),
           helper.make_tensor(f"{prefix}_shape", TensorProto.INT64, [1], [3]),
           helper.make_tensor(f"{prefix}_weights", TensorProto.FLOAT, [3], list(weights))]
  nodes = [helper.make_node("Slice", [graph_input, f"{prefix}_starts", f"{prefix}_ends"], [f"{prefix}_pixel"]),
           helper.make_node("Reshape", [f"{prefix}_pixel", f"{prefix}_shape"], [f"{prefix}_flat"]),
           helper.make_node("Mul", [f"{prefix}_flat", f"{prefix}_weights"], [f"{prefix}_weighted"]),
           helper.make_node("ReduceSum", [f"{prefix}_weighted"], [f"{prefix}_term"], keepdims=0)]
  return nodes, inits, f"{prefix}_term"


def _save(path, nodes, inits, inputs, outputs) -> None:
  graph = helper.make_graph(nodes, "stand_in", inputs, outputs, initializer=inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  onnx.save(model, path)


def _anchor(cell, anchor, cells_per_row) -> int:
  return 2 * (cell[1] * cells_per_row + cell[0]) + anchor


def _detector_outputs() -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """stride -> (scores [N, 1], distances [N, 4], keypoint offsets [N, 10]) constants, in strides."""
  outputs = {}
  for stride in insightface.STRIDES:
    n = (512 // stride) ** 2 * 2
    outputs[stride] = (np.zeros((n, 1), np.float32), np.zeros((n, 4), np.float32), np.zeros((n, 10), np.float32))
  scores, distances, kps = outputs[16]
  for cell, anchor in ((FACE_CELL, FACE_ANCHOR), (DUPLICATE_CELL, 0)):
    distances[_anchor(cell, anchor, 32)] = FACE_DIST
    kps[_anchor(cell, anchor, 32)] = np.ravel(FACE_KPS)
  scores[_anchor(DUPLICATE_CELL, 0, 32), 0] = DUPLICATE_SCORE
  scores, distances, _ = outputs[32]
  scores[_anchor(BIG_CELL, 0, 16), 0], distances[_anchor(BIG_CELL, 0, 16)] = BIG_SCORE, BIG_DIST
  scores, distances, _ = outputs[8]
  scores[_anchor(WEAK_CELL, 0, 64), 0], distances[_anchor(WEAK_CELL, 0, 64)] = WEAK_SCORE, (1, 1, 1, 1)
  return outputs


def _write_detector(path) -> None:
  """det_10g.onnx's interface: input 'input.1' [1, 3, ?, ?]; 9 unbatched outputs, scores/boxes/kps per stride."""
  constants = _detector_outputs()
  y, x = FACE_CELL[1] * 16, FACE_CELL[0] * 16
  nodes, inits, term = _pixel_term("input.1", y, x, (1.0, 0.0, -1.0), "det")
  inits.append(helper.make_tensor("offset", TensorProto.FLOAT, [], [-1.5]))
  mask = np.zeros((2048, 1), np.float32)
  mask[_anchor(FACE_CELL, FACE_ANCHOR, 32), 0] = 1
  inits.append(helper.make_tensor("mask16", TensorProto.FLOAT, mask.shape, mask.ravel()))
  nodes += [helper.make_node("Add", [term, "offset"], ["face_score"]),
            helper.make_node("Mul", ["mask16", "face_score"], ["masked16"])]
  names = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
  outputs = []
  for kind in range(3):
    for level, stride in enumerate(insightface.STRIDES):
      name, value = names[3 * kind + level], constants[stride][kind]
      inits.append(helper.make_tensor(f"const_{name}", TensorProto.FLOAT, value.shape, value.ravel()))
      if kind == 0 and stride == 16:
        nodes.append(helper.make_node("Add", [f"const_{name}", "masked16"], [name]))
      else:
        nodes.append(helper.make_node("Identity", [f"const_{name}"], [name]))
      outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, value.shape[1]]))
  inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
  _save(path, nodes, inits, inputs, outputs)


def _write_landmark106(path) -> None:
  """2d106det.onnx's interface: input 'data' [None, 3, 192, 192], output 'fc1' [None, 212]."""
  nodes, inits, term = _pixel_term("data", 96, 96, W106, "lmk")
  inits.append(helper.make_tensor("points", TensorProto.FLOAT, [1, 212], _points_106().ravel()))
  nodes.append(helper.make_node("Add", ["points", term], ["fc1"]))
  _save(path, nodes, inits, [helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [None, 212])])


def _write_landmark203(path) -> None:
  """liveportrait/landmark.onnx's interface: input 'input' [1, 3, 224, 224]; the third of 3 outputs the points."""
  nodes, inits, term = _pixel_term("input", 112, 112, W203, "pts")
  inits += [helper.make_tensor("coeff", TensorProto.FLOAT, [1, 214], np.zeros(214)),
            helper.make_tensor("lmk", TensorProto.FLOAT, [1, 131, 2], np.zeros(262)),
            helper.make_tensor("points", TensorProto.FLOAT, [1, 203, 2], _points_203().ravel())]
  nodes += [helper.make_node("Identity", ["coeff"], ["output"]), helper.make_node("Identity", ["lmk"], ["853"]),
            helper.make_node("Add", ["points", term], ["856"])]
  outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 214]),
             helper.make_tensor_value_info("853", TensorProto.FLOAT, [1, 131, 2]),
             helper.make_tensor_value_info("856", TensorProto.FLOAT, [1, 203, 2])]
  _save(path, nodes, inits, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])], outputs)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """A LivePortrait repo root holding pretrained_weights/ with the three stand-ins."""
  root = tmp_path_factory.mktemp("LivePortrait")
  folder = root / "pretrained_weights"
  _write_detector(str(folder / insightface.MODEL_FILES["detector"]))
  _write_landmark106(str(folder / insightface.MODEL_FILES["landmark106"]))
  _write_landmark203(str(folder / insightface.MODEL_FILES["landmark203"]))
  return folder


@pytest.fixture(scope="module")
def models(weights):
  return insightface.InsightFaceModels(str(weights))


def _image() -> np.ndarray:
  image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
  image[:] = BACKGROUND
  image[RED_ROWS[0]:RED_ROWS[1], RED_COLS[0]:RED_COLS[1]] = (255, 0, 0)
  return image


def _copy(weights, tmp_path):
  folder = tmp_path / "pretrained_weights"
  shutil.copytree(weights, folder)
  return folder


# ----------------------------------------------------------------------------------------------------------------
# End to end.


def _expected_face_box() -> np.ndarray:
  (cx, cy), (left, top, right, bottom) = np.multiply(FACE_CELL, 16), FACE_DIST
  return np.array([cx - 16 * left, cy - 16 * top, cx + 16 * right, cy + 16 * bottom]) / LETTERBOX_SCALE


def _expected_106(box, pixel) -> np.ndarray:
  """The 106 points: normalised output p + term, crop pixel (p + 1) * 96, back by the box alignment."""
  scale = 192 / (max(box[2] - box[0], box[3] - box[1]) * 1.5)
  center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
  term = float(np.dot(W106, pixel))
  return (_points_106() + term) * 96 / scale + center


def _expected_203(points106) -> np.ndarray:
  """The 203 points: the upright 224 crop around the 106 points' box (no roll: eyes level, lip below)."""
  low, high = points106.min(axis=0), points106.max(axis=0)
  side = 1.5 * max(high - low)
  center = (low + high) / 2 + np.array([0, -0.1 * side])
  term = float(np.dot(W203, (1.0, 0.0, 0.0)))  # the crop centre is red; the model reads RGB / 255
  return ((_points_203() + term) * 224 - 112) * side / 224 + center


def test_find_decodes_every_face_largest_first(models):
  faces = models.find(_image())
  assert [type(f) for f in faces] == [Face, Face]
  big, face = faces
  # The stride-32 face is larger, so it comes first although its score is lower; the duplicate is gone.
  np.testing.assert_allclose(big.box, np.array([0, 0, 192, 192]) / LETTERBOX_SCALE, atol=1e-3)
  assert big.score == pytest.approx(BIG_SCORE, abs=1e-6)
  np.testing.assert_allclose(face.box, _expected_face_box(), atol=1e-3)
  assert face.score == pytest.approx(FACE_SCORE, abs=1e-5)
  # LivePortrait crops the portrait from the 106 points and reads the ratios from the 203.
  assert face.landmarks.shape == (203, 2) and face.crop_landmarks.shape == (106, 2)
  detection = models.detect(_image())[1]
  np.testing.assert_array_equal(face.crop_landmarks, detection.landmarks_106)
  np.testing.assert_array_equal(face.landmarks, detection.landmarks_203)


def test_detect_keypoints_and_landmarks(models):
  big, face = models.detect(_image())
  kps = (np.multiply(FACE_CELL, 16) + 16 * np.array(FACE_KPS)) / LETTERBOX_SCALE
  np.testing.assert_allclose(face.keypoints, kps, atol=1e-3)
  box = _expected_face_box()
  red = (255.0, 0.0, 0.0)
  np.testing.assert_allclose(face.landmarks_106, _expected_106(box, red), atol=2e-3)
  np.testing.assert_allclose(big.landmarks_106, _expected_106(big.box.astype(float), BACKGROUND), atol=2e-3)
  np.testing.assert_allclose(face.landmarks_203, _expected_203(face.landmarks_106.astype(float)), atol=2e-3)
  np.testing.assert_array_equal(models.find(_image())[1].landmarks, face.landmarks_203)


def test_thresholds_on_a_black_image(models):
  """On a black image the real face scores R - B - 1.5 = -1.5 and goes; the duplicate it suppressed comes back,
  the 0.09 anchor stays under the 0.1 threshold."""
  faces = models.find(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  assert [f.score for f in faces] == pytest.approx([BIG_SCORE, DUPLICATE_SCORE], abs=1e-6)
  duplicate = _expected_face_box() + np.array([16, 0, 16, 0]) / LETTERBOX_SCALE
  np.testing.assert_allclose(faces[1].box, duplicate, atol=1e-3)


def test_landmarks_203_tracks_from_203_points(models):
  """LivePortrait's tracking step: the 203 points again from the last frame's 203 points."""
  face = models.find(_image())[1]
  again = models.landmarks_203(_image(), face.landmarks)
  assert again.shape == (203, 2) and np.isfinite(again).all()


def test_folder_can_be_the_weights_folder_or_the_repo_root(weights):
  direct = insightface.InsightFaceModels(str(weights))
  root = insightface.InsightFaceModels(str(weights.parent))
  assert direct.folder == root.folder == str(weights)
  assert root.providers[-1] == "CPUExecutionProvider"


# ----------------------------------------------------------------------------------------------------------------
# User errors.


def _one_sentence(error, path) -> None:
  message = str(error.value)
  assert str(path) in message and message.endswith(".") and ". " not in message.replace(str(path), "")


def test_missing_folder(tmp_path):
  with pytest.raises(UserError) as error:
    insightface.InsightFaceModels(str(tmp_path / "nowhere"))
  _one_sentence(error, tmp_path / "nowhere")


def _remove(path):
  os.remove(path)


def _garble(path):
  path.write_bytes(b"this is not an onnx model")


@pytest.mark.parametrize("model, spoil, said", [("landmark203", _remove, "is missing; give --face-models"),
                                                ("detector", _garble, "could not be loaded")])
def test_missing_or_garbage_file_names_it(weights, tmp_path, model, spoil, said):
  folder = _copy(weights, tmp_path)
  spoiled = folder / insightface.MODEL_FILES[model]
  spoil(spoiled)
  with pytest.raises(UserError, match=said) as error:
    insightface.InsightFaceModels(str(folder))
  _one_sentence(error, spoiled)


def test_wrong_model_names_it(weights, tmp_path):
  folder = _copy(weights, tmp_path)
  wrong = folder / insightface.MODEL_FILES["landmark106"]
  shutil.copy(folder / insightface.MODEL_FILES["landmark203"], wrong)
  with pytest.raises(UserError, match="is not the model LivePortrait uses") as error:
    insightface.InsightFaceModels(str(folder))
  _one_sentence(error, wrong)


# ----------------------------------------------------------------------------------------------------------------
# The pure steps.


def test_letterbox_wide_and_tall():
  canvas, scale = insightface.letterbox(np.full((300, 600, 3), 7, np.uint8))
  assert canvas.shape == (512, 512, 3) and scale == 256 / 300
  assert (canvas[:256] == 7).all() and (canvas[256:] == 0).all()
  canvas, scale = insightface.letterbox(np.full((600, 300, 3), 7, np.uint8))
  assert scale == 512 / 600
  assert (canvas[:, :256] == 7).all() and (canvas[:, 256:] == 0).all()
  canvas, scale = insightface.letterbox(np.full((333, 500, 3), 7, np.uint8))  # int(512 * 333 / 500) = 340
  assert scale == 340 / 333
  assert (canvas[:340] == 7).all() and (canvas[340:] == 0).all()


def test_blob_is_normalised_rgb_nchw():
  image = np.zeros((2, 2, 3), np.uint8)
  image[0, 1] = (255, 128, 0)
  blob = insightface.to_blob(image, 127.5, 128.0)
  assert blob.shape == (1, 3, 2, 2) and blob.dtype == np.float32
  np.testing.assert_allclose(blob[0, :, 0, 1], [127.5 / 128, 0.5 / 128, -127.5 / 128])


def test_anchor_centers_repeat_per_anchor_row_major():
  centers = insightface.anchor_centers(2, 3, 16)
  expected = [[0, 0], [0, 0], [16, 0], [16, 0], [32, 0], [32, 0], [0, 16], [0, 16], [16, 16], [16, 16],
              [32, 16], [32, 16]]
  np.testing.assert_array_equal(centers, expected)


def test_distances_to_boxes_and_points():
  centers = np.array([[10.0, 20.0]])
  np.testing.assert_array_equal(insightface.distance_to_boxes(centers, np.array([[1.0, 2.0, 3.0, 4.0]])),
                                [[9, 18, 13, 24]])
  points = insightface.distance_to_points(centers, np.array([[1.0, -1.0, 2.0, 0.0]]))
  np.testing.assert_array_equal(points, [[[11, 19], [12, 20]]])


def test_nms_keeps_the_higher_scored_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
  assert insightface.nms(boxes, np.array([0.6, 0.9, 0.5], np.float32)) == [1, 2]


def test_nms_counts_pixels_inclusively():
  """insightface's +1 pixel areas: IoU 8 / 24 = 0.33 as continuous boxes, but 15 / 35 = 0.43 > 0.4; and
  10 / 40 = 0.25 (kept) for boxes that overlap by one pixel column more than they touch."""
  scores = np.array([0.9, 0.8], np.float32)
  assert insightface.nms(np.array([[0, 0, 4, 4], [2, 0, 6, 4]], np.float32), scores) == [0]
  assert insightface.nms(np.array([[0, 0, 4, 4], [3, 0, 7, 4]], np.float32), scores) == [0, 1]


def test_sort_by_area_is_stable():
  boxes = np.array([[0, 0, 2, 2], [0, 0, 3, 3], [5, 5, 7, 7]], np.float32)
  assert insightface.sort_by_area(boxes) == [1, 0, 2]


def test_align_106_maps_the_box_centre_to_the_crop_centre():
  matrix = insightface.align_106(np.array([100, 50, 200, 250], np.float32))
  scale = 192 / (200 * 1.5)
  np.testing.assert_allclose(matrix, [[scale, 0, 96 - 150 * scale], [0, scale, 96 - 150 * scale]])
  np.testing.assert_allclose(insightface.points_106(np.zeros(212), matrix), np.full((106, 2), 150.0), atol=1e-4)


@pytest.mark.parametrize("degrees", [30, -30, 120])
def test_landmark_crop_follows_the_face_roll(degrees):
  """Rolling the points rolls the crop with them: they land on the same crop pixels."""
  points = _points_106() * 100 + np.array([300, 200], np.float32)
  o2c, c2o = insightface.landmark_crop(points)
  angle = np.deg2rad(degrees)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  rolled = ((points - [250, 260]) @ rotation.T + [250, 260]).astype(np.float32)
  o2c_rolled, _ = insightface.landmark_crop(rolled)
  crop = points @ o2c[:2, :2].T + o2c[:2, 2]
  np.testing.assert_allclose(rolled @ o2c_rolled[:2, :2].T + o2c_rolled[:2, 2], crop, atol=1e-3)
  low, high = points.min(axis=0), points.max(axis=0)
  side = 1.5 * max(high - low)  # the ellipse is higher than wide
  center = (low + high) / 2 - [0, 0.1 * side]
  np.testing.assert_allclose(o2c[0, 0], 224 / side, rtol=1e-5)
  np.testing.assert_allclose(c2o[:2, 2], center - 112 * side / 224, atol=1e-3)
