"""The renderer API (tiny random networks on 64x64 crops) and pipelines/reenact.py end to end."""

import os
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from playmate_jax import motion, video
from playmate_jax.errors import UserError
from playmate_jax.renderer.api import Renderer
from playmate_jax.renderer.config import TINY_MODEL_PARAMS

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines"))
import reenact  # noqa: E402

skimage_data = pytest.importorskip("skimage.data")
BATCH = 4


@pytest.fixture(scope="module")
def renderer():
  import logging
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger("playmate_jax.renderer.api").addHandler(handler)
  try:
    r = Renderer.random(TINY_MODEL_PARAMS, seed=0, crop_size=64)
  finally:
    logging.getLogger("playmate_jax.renderer.api").removeHandler(handler)
  assert [rec.getMessage() for rec in records if "RANDOM weights" in rec.getMessage()]  # said once, as a log line
  assert len(records) == 1
  return r


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("reenact")
  astronaut = skimage_data.astronaut()
  portrait = str(d / "astronaut.jpg")
  cv2.imwrite(portrait, cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
  noface = str(d / "wall.jpg")
  cv2.imwrite(noface, np.full((200, 300, 3), 128, np.uint8))
  moving = str(d / "moving.mp4")  # the astronaut drifting, landscape (so the driving crop is searched), with audio
  tone = (0.2 * np.sin(np.arange(16000) * 2 * np.pi * 300 / 16000)).astype(np.float32)
  with video.VideoWriter(moving, fps=25, audio=tone) as w:
    for i in range(10):
      frame = cv2.warpAffine(astronaut, np.float32([[1, 0, 2 * i], [0, 1, i]]), (512, 512))
      w.write(np.pad(frame[::2, ::2], ((0, 0), (32, 32), (0, 0))))
  static = str(d / "static.mp4")  # square, still, silent
  with video.VideoWriter(static, fps=20) as w:
    for _ in range(6):
      w.write(astronaut[::4, ::4])
  bad = str(d / "broken.mp4")
  with open(bad, "w") as f:
    f.write("not a video")
  return dict(dir=d, portrait=portrait, noface=noface, moving=moving, static=static, bad=bad, astronaut=astronaut)


def _crops(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((n, 64, 64, 3)), jnp.float32)


# --- the renderer API ------------------------------------------------------------------------------------------

def test_motion_heads_in_the_project_shapes(renderer):
  crops = _crops(2)
  m = renderer.extract_motion(crops)
  assert {k: v.shape for k, v in m.items()} == {"pitch": (2,), "yaw": (2,), "roll": (2,), "exp": (2, 21, 3),
                                               "t": (2, 3), "scale": (2,), "kp": (2, 21, 3)}
  raw = renderer.networks.motion_extractor(crops)
  np.testing.assert_allclose(m["yaw"], motion.bins_to_degrees(raw["yaw"]), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(m["exp"], raw["exp"].reshape(2, 21, 3), rtol=1e-5, atol=1e-6)
  x = renderer.keypoints(m)
  np.testing.assert_allclose(x, motion.transform_keypoints(m["kp"], m["pitch"], m["yaw"], m["roll"], m["exp"],
                                                           m["t"], m["scale"]), rtol=1e-6)
  f = renderer.extract_appearance(crops)
  assert f.shape == (2, 4, 16, 16, 4) and f.dtype == jnp.float32


def test_stitch_and_retarget_compose_the_mlps_as_liveportrait(renderer):
  m = renderer.extract_motion(_crops(3, seed=1))
  x_s, x_d = renderer.keypoints(m), renderer.keypoints(m)[::-1]
  s = renderer.networks.stitching_retargeting_module
  delta = np.asarray(s.stitching(jnp.concatenate([x_s.reshape(3, -1), x_d.reshape(3, -1)], -1)))
  want = np.asarray(x_d) + delta[:, :63].reshape(3, 21, 3)
  want[..., :2] += delta[:, None, 63:65]
  np.testing.assert_allclose(renderer.stitch(x_s, x_d), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(renderer.stitch(x_s[:1], x_d), renderer.stitch(jnp.repeat(x_s[:1], 3, 0), x_d),
                             rtol=1e-6)  # a batch-1 source broadcasts
  eye = jnp.asarray([[0.3, 0.35, 0.1]] * 3)
  np.testing.assert_allclose(renderer.retarget_eyes(x_s, eye),
                             s.eye(jnp.concatenate([x_s.reshape(3, -1), eye], -1)).reshape(3, 21, 3), rtol=1e-5)
  lip = jnp.asarray([[0.1, 0.4]] * 3)
  np.testing.assert_allclose(renderer.retarget_lips(x_s, lip),
                             s.lip(jnp.concatenate([x_s.reshape(3, -1), lip], -1)).reshape(3, 21, 3), rtol=1e-5)


def test_warp_decode_is_deterministic_and_batch_invariant(renderer):
  crop = _crops(1, seed=2)
  f_s = renderer.extract_appearance(crop)
  x_s = renderer.keypoints(renderer.extract_motion(crop))
  one = renderer.warp_decode(f_s, x_s, x_s)
  assert one.shape == (1, renderer.render_size, renderer.render_size, 3) == (1, 128, 128, 3)
  assert one.dtype == jnp.float32 and 0.0 <= float(one.min()) and float(one.max()) <= 1.0
  np.testing.assert_array_equal(one, renderer.warp_decode(f_s, x_s, x_s))
  four = renderer.warp_decode(f_s, x_s, jnp.repeat(x_s, BATCH, 0))   # feature and source broadcast
  assert four.shape[0] == BATCH
  for image in four:
    np.testing.assert_allclose(image, one[0], atol=1e-5)
  moved = renderer.warp_decode(f_s, x_s, x_s + jnp.array([0.3, 0.0, 0.0]))
  assert float(jnp.abs(moved - one).mean()) > 1e-3                     # and the keypoints matter


def test_load_round_trip_keeps_every_parameter(renderer, tmp_path):
  from playmate_jax import shapes
  params = nnx_params(renderer)
  shapes.save_converted(tmp_path / "w", "liveportrait", TINY_MODEL_PARAMS, params, str(tmp_path))
  loaded = Renderer.load(str(tmp_path / "w"), crop_size=64)
  assert jax.tree.structure(nnx_params(loaded)) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(nnx_params(loaded)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  x = renderer.keypoints(renderer.extract_motion(_crops(1, seed=3)))
  np.testing.assert_array_equal(loaded.stitch(x, x), renderer.stitch(x, x))
  params["spade_generator"]["fc"]["bias"] = params["spade_generator"]["fc"]["bias"][:-1]
  shapes.save_converted(tmp_path / "bad", "liveportrait", TINY_MODEL_PARAMS, params, str(tmp_path))
  with pytest.raises(UserError, match="spade_generator/fc/bias"):
    Renderer.load(str(tmp_path / "bad"), crop_size=64)


def nnx_params(renderer):
  from flax import nnx
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(renderer.networks, nnx.Param)))


# --- pipelines/reenact.py ---------------------------------------------------------------------------------------

def test_reenact_writes_every_frame_with_the_driving_audio(renderer, files, capsys):
  out = str(files["dir"] / "moving_out.mp4")
  result = reenact.reenact(renderer, files["portrait"], files["moving"], out, batch_size=BATCH, progress=False)
  assert result["frames"] == 10 and result["has_audio"]
  info = video.probe(out)
  assert (info.width, info.height, info.fps, info.has_audio) == (128, 128, 25, True)
  assert video.count_frames(out) == 10
  assert len(video.extract_audio(out)) / 16000 == pytest.approx(10 / 25, abs=0.06)
  assert "no audio" not in capsys.readouterr().out


class _Recorder:
  """The renderer, recording the driving keypoints that reach warp_decode."""

  def __init__(self, renderer):
    self.renderer, self.kp_driving = renderer, []

  def __getattr__(self, name):
    return getattr(self.renderer, name)

  def warp_decode(self, feature_3d, kp_source, kp_driving):
    self.kp_driving.append(np.asarray(kp_driving))
    return self.renderer.warp_decode(feature_3d, kp_source, kp_driving)


def _source_keypoints(renderer, portrait):
  from playmate_jax.face import crop as crop_lib
  from playmate_jax.face.finder import portrait_face
  image = crop_lib.load_image(portrait)
  face = portrait_face(image, portrait)
  crop = jnp.asarray(crop_lib.crop_face(image, face.crop_landmarks, crop_lib.SOURCE, renderer.crop_size).image[None])
  return np.asarray(renderer.keypoints(renderer.extract_motion(crop)))


def test_relative_motion_starts_at_the_source_pose(renderer, files):
  """Relative mode: the first driving frame reproduces the portrait's own keypoints, whatever it shows."""
  rec = _Recorder(renderer)
  out = str(files["dir"] / "relative.mp4")
  reenact.reenact(rec, files["portrait"], files["moving"], out, stitching=False, batch_size=BATCH, progress=False)
  x_s = _source_keypoints(renderer, files["portrait"])
  kp = np.concatenate(rec.kp_driving)
  assert kp.shape == (12, 21, 3)                                       # 10 frames, padded to 3 batches of 4
  np.testing.assert_allclose(kp[0], x_s[0], atol=1e-5)
  assert np.abs(kp[1:10] - x_s).max() > 1e-3                           # later frames move


def test_still_driving_video_keeps_the_source_pose(renderer, files, capsys):
  rec = _Recorder(renderer)
  out = str(files["dir"] / "static_out.mp4")
  result = reenact.reenact(rec, files["portrait"], files["static"], out, stitching=False, batch_size=BATCH,
                           progress=False)
  assert result["frames"] == 6 and not result["has_audio"]
  assert "has no audio track" in capsys.readouterr().out
  info = video.probe(out)
  assert not info.has_audio and info.fps == 20 and video.count_frames(out) == 6
  x_s = _source_keypoints(renderer, files["portrait"])
  kp = np.concatenate(rec.kp_driving)[:6]
  assert np.abs(kp - x_s).max() < 0.05 * np.abs(x_s).max()           # only H.264 noise in the driving frames
  stitched = _Recorder(renderer)
  reenact.reenact(stitched, files["portrait"], files["static"], out, batch_size=BATCH, progress=False)
  np.testing.assert_allclose(stitched.kp_driving[0], renderer.stitch(x_s, rec.kp_driving[0]), atol=1e-5)


def test_reenact_paste_back_retargeting_and_max_frames(renderer, files):
  out = str(files["dir"] / "pasted.mp4")
  result = reenact.reenact(renderer, files["portrait"], files["moving"], out, paste_back=True,
                           eye_retargeting=True, lip_retargeting=True, max_frames=3, batch_size=BATCH,
                           progress=False)
  assert result["frames"] == 3 and result["size"] == (512, 512)
  info = video.probe(out)
  assert (info.width, info.height) == (512, 512) and video.count_frames(out) == 3 and info.has_audio
  frame = next(video.read_frames(out))
  corner = np.abs(frame[-60:, -60:].astype(int) - files["astronaut"][-60:, -60:].astype(int)).mean()
  assert corner < 6.0                            # outside the face crop the portrait is untouched


def test_retargeting_feeds_the_mlps_landmark_ratios_as_liveportrait(files):
  """The eye MLP gets (portrait's two eye ratios, the driving frame's first eye ratio), the lip MLP (portrait's lip
  ratio, the driving frame's), measured on landmarks; the deltas add to the portrait's keypoints."""
  from playmate_jax.face.finder import finder, open_ratios

  class Recorder:
    def retarget_lips(self, kp, ratio):
      return jnp.zeros_like(kp).at[:, 19, :2].set(ratio)

    def retarget_eyes(self, kp, ratio):
      return jnp.zeros_like(kp).at[:, 13, :].set(ratio)

  face = finder().find(files["astronaut"])[0]
  x_s = jnp.asarray(np.random.default_rng(0).normal(size=(1, 21, 3)), jnp.float32)
  retarget = reenact._Retargeting(Recorder(), x_s, face.landmarks, eyes=True, lips=True)
  eyes, lip = open_ratios(face.landmarks)
  opened = files["astronaut"].copy()
  opened[140:150, 205:245] = 20  # a dark open mouth between the lips
  blank = np.full_like(opened, 128)
  eye_d, lip_d, last = reenact.driving_ratios([files["astronaut"], opened, blank], retarget.source_ratios())
  assert lip_d[1] > lip_d[0] and (eye_d[2], lip_d[2]) == (eye_d[1], lip_d[1]) == last  # no face: kept
  np.testing.assert_allclose([eye_d[0], lip_d[0]], [eyes[0], lip], atol=1e-3)  # batch of 3 against 1
  out = np.asarray(retarget(eye_d, lip_d))
  np.testing.assert_allclose(out[:, 13] - x_s[0, 13], np.stack([np.full(3, eyes[0]), np.full(3, eyes[1]), eye_d], -1),
                             atol=1e-6)
  np.testing.assert_allclose(out[:, 19, :2] - x_s[0, 19, :2], np.stack([np.full(3, lip), lip_d], -1), atol=1e-6)
  untouched = np.delete(np.arange(21), [13, 19])
  np.testing.assert_allclose(out[:, untouched], np.broadcast_to(x_s[:, untouched], (3, 19, 3)))


@pytest.mark.parametrize("case", ["noface", "bad", "missing"])
def test_cli_user_errors_are_one_sentence(files, capsys, case):
  source = files["noface"] if case == "noface" else files["portrait"]
  driving = {"bad": files["bad"], "missing": str(files["dir"] / "nope.mp4")}.get(case, files["moving"])
  code = reenact.main(["--renderer", "random:tiny", "--source", source, "--driving", driving,
                       "--out", str(files["dir"] / "err.mp4")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
  assert (source if case == "noface" else driving) in err[0]
  assert not os.path.exists(files["dir"] / "err.mp4")


def test_cli_renders_and_reports(renderer, files, capsys, monkeypatch):
  monkeypatch.setattr(reenact, "load_renderer", lambda spec, dtype: renderer)  # reuse the compiled renderer
  out = str(files["dir"] / "cli.mp4")
  code = reenact.main(["--renderer", "random:tiny", "--source", files["portrait"], "--driving", files["static"],
                       "--out", out, "--batch-size", "4", "--max-frames", "5"])
  captured = capsys.readouterr().out
  assert code == 0 and video.count_frames(out) == 5
  assert "has no audio track" in captured and "wrote 5 frames" in captured


# --- parity with LivePortrait through the API ---------------------------------------------------------------------

@pytest.mark.parity
def test_renderer_api_parity(parity_dir, tmp_path):
  """Converted reference weights through the Renderer API reproduce LivePortrait's own numbers: degrees,
  transformed keypoints, F, W then G, stitching (delta composed onto the driving keypoints) and retargeting."""
  from playmate_jax.convert.liveportrait import convert_dir
  lp = os.path.join(parity_dir, "liveportrait")
  convert_dir(lp, tmp_path / "w")
  ref = np.load(os.path.join(lp, "reference.npz"))
  r = Renderer.load(str(tmp_path / "w"), crop_size=ref["source_image"].shape[-1])

  def close(ours, want):
    want = np.asarray(want, np.float32)
    assert np.linalg.norm(np.asarray(ours) - want) <= 1e-4 * np.linalg.norm(want)

  for who in ("source", "driving"):
    image = jnp.asarray(ref[f"{who}_image"].transpose(0, 2, 3, 1))
    m = r.extract_motion(image)
    for angle in ("pitch", "yaw", "roll"):
      close(m[angle], ref[f"{who}_{angle}_degree"])
    close(m["scale"], ref[f"{who}_scale"][:, 0])
    close(r.keypoints(m), ref[f"{who}_kp_transformed"])
  feature = r.extract_appearance(jnp.asarray(ref["source_image"].transpose(0, 2, 3, 1)))
  close(feature, ref["feature_3d"].transpose(0, 2, 3, 4, 1))
  close(r.warp_decode(feature, ref["warp_kp_source"], ref["warp_kp_driving"]),
        ref["generator_image"].transpose(0, 2, 3, 1))
  b = len(ref["stitching_input"])
  kp_s, kp_d = (ref["stitching_input"][:, i * 63:(i + 1) * 63].reshape(b, 21, 3) for i in (0, 1))
  want = kp_d + ref["stitching_output"][:, :63].reshape(b, 21, 3)
  want[..., :2] += ref["stitching_output"][:, None, 63:65]
  close(r.stitch(kp_s, kp_d), want)
  close(r.retarget_lips(ref["lip_input"][:, :63].reshape(b, 21, 3), ref["lip_input"][:, 63:]),
        ref["lip_output"].reshape(b, 21, 3))
  close(r.retarget_eyes(ref["eye_input"][:, :63].reshape(b, 21, 3), ref["eye_input"][:, 63:]),
        ref["eye_output"].reshape(b, 21, 3))
