"""Faces on real photos (skimage's astronaut rotated, cut, covered, doubled and shrunk; its cat, coffee and rocket),
the TFLite models in JAX against the TFLite runtime, and the portrait's face choice with its messages."""

from __future__ import annotations

import os

import cv2
import jax
import numpy as np
import pytest

from playmate_jax.errors import UserError
from playmate_jax.face import crop as crop_lib
from playmate_jax.face import finder as face_finder
from playmate_jax.face import mediapipe, tflite

skimage_data = pytest.importorskip("skimage.data")

# Hand-measured on the 512x512 astronaut: eye centres, nose tip, mouth centre.
EYES = np.array([[205.0, 103.0], [248.0, 103.0]])
MOUTH = np.array([225.0, 143.0])


def rotate(image, degrees, scale=1.0):
  h, w = image.shape[:2]
  m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, scale)
  return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT), m


@pytest.fixture(scope="module")
def astronaut():
  return skimage_data.astronaut()


@pytest.fixture(scope="module")
def find():
  return face_finder.finder()


def _landmark_eye_centres(face):
  lm = face.crop_landmarks  # iBUG 68
  return lm[[36, 39]].mean(0), lm[[42, 45]].mean(0)


def test_frontal_face_landmarks_sit_on_the_eyes_and_mouth(astronaut, find):
  faces = find.find(astronaut)
  assert len(faces) == 1
  face = faces[0]
  assert face.landmarks.shape == (468, 2) and face.crop_landmarks.shape == (68, 2) and face.score > 0.7
  left, right = _landmark_eye_centres(face)
  np.testing.assert_allclose(left, EYES[0], atol=6)
  np.testing.assert_allclose(right, EYES[1], atol=6)
  lips = face.crop_landmarks[[48, 54]].mean(0)
  np.testing.assert_allclose(lips, MOUTH, atol=8)
  x0, y0, x1, y1 = face.box
  assert x0 < EYES[0, 0] < EYES[1, 0] < x1 and y0 < EYES[0, 1] < MOUTH[1] < y1


@pytest.mark.parametrize("degrees", [20, -30, 40])
def test_rolled_close_up_cut_at_the_top_is_found_and_its_roll_removed(astronaut, find, degrees):
  turned, m = rotate(astronaut, degrees)
  close_up = cv2.resize(turned[60:330, 90:360], (540, 540))   # the head's top is cut off; fills the frame
  faces = find.find(close_up)
  assert len(faces) == 1
  # The crop turns with the face: its x axis follows the eyes, so the eyes are level in the crop.
  crop = crop_lib.crop_face(close_up, faces[0].crop_landmarks)
  in_crop = crop_lib.apply(np.linalg.inv(crop.matrix), np.stack(_landmark_eye_centres(faces[0])))
  assert abs(in_crop[0, 1] - in_crop[1, 1]) < 3.0
  roll = np.degrees(np.arctan2(crop.matrix[1, 0], crop.matrix[0, 0]))
  assert roll == pytest.approx(-degrees, abs=6)  # cv2's positive angle turns the picture anticlockwise


def test_sunglasses(astronaut, find):
  covered = astronaut.copy()
  for x, y in EYES.astype(int):
    cv2.ellipse(covered, (x, y), (22, 13), 0, 0, 360, (12, 12, 12), -1)
  cv2.line(covered, (226, 100), (228, 100), (12, 12, 12), 4)
  faces = find.find(covered)
  assert len(faces) == 1 and faces[0].box[0] < EYES[0, 0] < faces[0].box[2]


def test_two_people_the_largest_is_taken_and_the_message_says_two(astronaut, tmp_path):
  photo = np.full((600, 1100, 3), 200, np.uint8)
  photo[50:562, 0:512] = astronaut
  photo[120:540, 620:1040] = cv2.resize(astronaut, (420, 420))
  said = []
  face = face_finder.portrait_face(photo, "two.jpg", report=said.append)
  assert face.box[2] < 512  # the larger astronaut, on the left
  assert len(said) == 1 and said[0].startswith("2 faces found in two.jpg") and "face 1 (the largest)" in said[0]
  second = face_finder.portrait_face(photo, "two.jpg", index=2, report=said.append)
  assert second.box[0] > 600
  with pytest.raises(UserError, match=r"--face 3 .* two.jpg, which has 2 faces"):
    face_finder.portrait_face(photo, "two.jpg", index=3)


def test_small_figure_in_a_large_photo(astronaut, find):
  scene = cv2.resize(skimage_data.coffee(), (1200, 900))
  scene[600:900, 700:1000] = cv2.resize(astronaut, (300, 300))  # a face about 5% of the photo's width
  faces = find.find(scene)
  assert len(faces) == 1
  x0, y0, x1, y1 = faces[0].box
  assert 700 < x0 < x1 < 1000 and 600 < y0 < y1 < 800
  assert find.find_batch([scene]) == [[]]  # the video tracker looks at whole frames only: a background face


@pytest.mark.parametrize("name", ["cat", "chelsea", "coffee", "rocket"])
def test_animals_and_scenes_are_refused(name):
  image = getattr(skimage_data, name)()
  with pytest.raises(UserError, match=rf"^No human face was found in {name}\.png; "):
    face_finder.portrait_face(image, f"{name}.png")


def test_synthetic_talking_face_frames_are_found(find):
  from tests import videos
  frame = videos._face_scene(320, 240, seed=0)(0.0)
  faces = find.find_batch([frame])[0]
  assert len(faces) == 1 and faces[0].box[2] - faces[0].box[0] > 40


def test_open_ratios_follow_the_mouth(astronaut, find):
  face = find.find(astronaut)[0]
  eyes, lip = face_finder.open_ratios(face.landmarks)
  assert eyes.shape == (2,) and 0.1 < eyes.min() and eyes.max() < 0.6
  assert 0.0 <= lip < 0.2
  opened = face.landmarks.copy()
  opened[14] += (0, 20)  # the lower inner lip down by 20 px
  assert face_finder.open_ratios(opened)[1] > lip + 0.2


@pytest.mark.parametrize("name", [mediapipe.DETECTOR_FILE, mediapipe.MESH_FILE, "face_detection_short_range.tflite"])
def test_tflite_in_jax_matches_the_tflite_runtime(name, astronaut):
  litert = pytest.importorskip("ai_edge_litert.interpreter")
  path = os.path.join(mediapipe.model_dir(), name)
  model = tflite.load(path)
  size = model.input_shapes[0][1]
  x = (cv2.resize(astronaut, (size, size)).astype(np.float32) / 127.5 - 1.0)[None]
  x = np.concatenate([x, x[:, ::-1]])  # a batch of two: the batch dimension is generalised
  ours = jax.jit(model.apply)(model.params, x)
  interpreter = litert.Interpreter(model_path=path)
  interpreter.allocate_tensors()
  for k in range(2):
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x[k:k + 1])
    interpreter.invoke()
    for detail in interpreter.get_output_details():
      want = interpreter.get_tensor(detail["index"])
      got = np.asarray(ours[detail["name"]][k:k + 1]).reshape(want.shape)
      np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, np.abs(want).max()))


def test_unknown_operator_and_bad_file_are_one_sentence(tmp_path):
  bad = tmp_path / "model.tflite"
  bad.write_bytes(b"not a flatbuffer at all")
  with pytest.raises(UserError, match=f"^Face model {bad} is not a TFLite model"):
    tflite.load(bad)
  with pytest.raises(UserError, match="could not be read"):
    tflite.load(tmp_path / "missing.tflite")


def test_weighted_nms_averages_overlapping_detections():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float64)
  kps = np.zeros((3, 6, 2))
  kps[1] += 2.0
  scores = np.array([0.9, 0.6, 0.8])
  out = mediapipe.weighted_nms(boxes, kps, scores)
  assert len(out) == 2
  (box, kp, score), (box2, _, score2) = out
  np.testing.assert_allclose(box, [0.4, 0, 10.4, 10])  # (0.9 * 0 + 0.6 * 1) / 1.5
  np.testing.assert_allclose(kp, 0.8)
  assert score == 0.9 and score2 == 0.8 and box2[0] == 50


def test_letterbox_maps_back_to_image_pixels():
  image = np.zeros((100, 300, 3), np.uint8)
  image[40:60, 200:220] = 255
  pixels, to_image = mediapipe.letterbox(image, 192)
  ys, xs = np.nonzero(pixels[..., 0] > 127)
  corner = to_image[:2, :2] @ np.array([xs.min(), ys.min()]) + to_image[:2, 2]
  np.testing.assert_allclose(corner, [200, 40], atol=1.6)
