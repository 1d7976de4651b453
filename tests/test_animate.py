"""pipelines/animate.py and playmate_jax.animate: portrait + speech -> mp4, pose modes, clear errors.

Tiny trained models (tests/conftest.py) and tiny random renderer weights (64x64 crops, 128x128 frames).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from playmate_jax import animate as anim
from playmate_jax import motion, video
from playmate_jax.errors import UserError
from tests import videos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_cli():
  import importlib.util
  spec = importlib.util.spec_from_file_location("animate_cli", os.path.join(ROOT, "pipelines", "animate.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  from skimage import data
  import cv2
  folder = tmp_path_factory.mktemp("animate_inputs")
  cv2.imwrite(str(folder / "portrait.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
  # 1.9 s at 44.1 kHz: not a whole number of frames, not 16 kHz
  sf.write(folder / "speech.wav", videos.tone_bursts(1.9, 44100, freq=160, bursts=4), 44100)
  cv2.imwrite(str(folder / "blank.png"), np.full((200, 200, 3), 127, np.uint8))
  (folder / "noise.wav").write_bytes(b"not audio at all" * 10)
  return folder


def args_for(inputs, checkpoint, out, *extra):
  cli = load_cli()
  return cli, cli.parse_args(["--checkpoint", str(checkpoint), "--renderer", "random:tiny", "--image",
                              str(inputs / "portrait.png"), "--audio", str(inputs / "speech.wav"), "--out", str(out),
                              "--no-progress", "--dtype", "float32", *extra])


def test_portrait_and_speech_become_a_video_of_the_audio_length(stage2_run, inputs, tmp_path):
  cli, args = args_for(inputs, stage2_run, tmp_path / "talk.mp4", "--emotion", "happy", "--paste-back")
  result = cli.animate(args)
  info = video.probe(result["out"])
  audio_seconds = 1.9
  assert info.fps == 25 and info.has_audio and info.codec == "h264"
  assert abs(info.duration - audio_seconds) <= 1 / 25 + 1e-6, info
  assert result["frames"] == int(np.ceil(audio_seconds * 25))
  assert (info.width, info.height) == (512, 512)  # pasted back into the 512x512 photo
  with np.load(result["motion"]) as m:
    assert m["exp"].shape == (result["frames"], 21, 3) and m["yaw"].shape == (result["frames"],)
  sound = video.extract_audio(result["out"])
  assert abs(len(sound) / 16000 - audio_seconds) <= 1 / 25
  # The model was restored and its sampler warmed up on the worker thread, the renderer on the main one.
  assert set(result["background"].seconds) == {"restore", "sampler warm-up"}
  assert "render warm-up" in result["stages"].seconds


def test_pose_modes(stage1_run, inputs, tmp_path):
  """fixed holds the portrait's pose; sweep turns the head by the preset; a driving video's pose is taken
  relative to its first frame; the expression is the generated one in every mode."""
  from playmate_jax.renderer.api import Renderer
  from playmate_jax.renderer.config import TINY_MODEL_PARAMS
  renderer = Renderer.random(TINY_MODEL_PARAMS, crop_size=64)
  portrait = anim.load_portrait(renderer, *anim.find_portrait(str(inputs / "portrait.png")))
  model = anim.MotionModel.load(str(stage1_run))
  wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
  generated = model.generate(wave, portrait.motion)
  n = len(generated["exp"])
  src = portrait.motion
  r_s = np.asarray(motion.rotation_matrix(src["pitch"], src["yaw"], src["roll"]))[0]

  fixed = anim.compose(src, generated, "fixed")
  np.testing.assert_allclose(fixed["rotation"], np.broadcast_to(r_s, (n, 3, 3)), atol=1e-6)
  np.testing.assert_allclose(fixed["scale"], np.full(n, src["scale"][0]), rtol=1e-6)
  np.testing.assert_array_equal(fixed["exp"], generated["exp"])

  gen = anim.compose(src, generated, "generated")
  np.testing.assert_allclose(gen["yaw"], generated["yaw"], atol=1e-6)

  sweep = anim.compose(src, generated, "driven", anim.sweep_pose(n))
  expected = np.asarray(motion.rotation_matrix(*(anim.sweep_pose(n)[k] for k in ("pitch", "yaw", "roll")))) @ r_s
  np.testing.assert_allclose(sweep["rotation"], expected, atol=1e-5)
  assert np.ptp(sweep["yaw"]) > 10.0 and sweep["t"][:, 2].max() == 0.0

  # A driving video: its pose relative to its first frame; a still video leaves the portrait's pose unchanged.
  videos.talking_face(tmp_path / "drive.mp4", 3.0, size=(160, 120))
  driven = anim.video_pose(renderer, str(tmp_path / "drive.mp4"), n + 30, batch_size=16)
  assert driven["yaw"].shape == (n + 30,)  # 3 s of video for 2.2 s of frames: cut; longer: holds the last
  still = {k: np.repeat(v[:1], n, axis=0) for k, v in driven.items()}
  held = anim.compose(src, generated, "driven", still)
  np.testing.assert_allclose(held["rotation"], np.broadcast_to(r_s, (n, 3, 3)), atol=1e-5)
  np.testing.assert_allclose(held["t"][:, :2], np.broadcast_to(src["t"][:, :2], (n, 2)), atol=1e-6)


def test_bad_inputs_are_one_sentence(stage1_run, stage2_run, inputs, tmp_path):
  cli, args = args_for(inputs, stage2_run, tmp_path / "x.mp4", "--emotion", "joyful")
  with pytest.raises(UserError, match="'joyful'.*angry, contempt"):
    cli.animate(args)
  cli, args = args_for(inputs, stage1_run, tmp_path / "x.mp4", "--emotion", "happy")
  with pytest.raises(UserError, match="stage-1 model.*no emotion control"):
    cli.animate(args)
  cli, args = args_for(inputs, stage1_run, tmp_path / "x.mp4")
  args.image = str(inputs / "blank.png")
  with pytest.raises(UserError, match="No human face was found in .*blank.png"):
    cli.animate(args)
  args.image, args.audio = str(inputs / "portrait.png"), str(inputs / "noise.wav")
  with pytest.raises(UserError, match="noise.wav could not be decoded"):
    cli.animate(args)
  cli, args = args_for(inputs, stage1_run, tmp_path / "x.mp4", "--pose", "video:missing.mp4")
  with pytest.raises(UserError, match="missing.mp4.*does not exist"):
    cli.animate(args)
  cli, args = args_for(inputs, tmp_path / "no_run", tmp_path / "x.mp4")
  with pytest.raises(UserError, match="Checkpoint .*no_run does not exist"):
    cli.animate(args)
  cli, args = args_for(inputs, stage1_run, tmp_path / "x.mp4", "--pose", "nod")
  with pytest.raises(UserError, match="generated, fixed, sweep, video:FILE"):
    cli.animate(args)
  assert not os.path.exists(tmp_path / "x.mp4")


def test_a_jobs_file_runs_every_good_row_and_reports_each(stage2_run, inputs, tmp_path):
  """--jobs: one process, one report row per job; bad rows are reported and the rest still run."""
  import csv
  import shutil
  shutil.copy(inputs / "portrait.png", tmp_path / "me.png")
  (tmp_path / "out").mkdir()
  rows = [
      "image,audio,out,emotion,pose,seed",
      f"me.png,{inputs / 'speech.wav'},out/a.mp4,happy,,",          # relative to the CSV's folder
      f"{inputs / 'blank.png'},{inputs / 'speech.wav'},out/b.mp4,,,",   # no face
      f"me.png,{inputs / 'speech.wav'},out/c.mp4,,nod,",                # not a pose mode
      f"me.png,{inputs / 'speech.wav'},out/d.mp4,sad,fixed,",
      f"me.png,{inputs / 'noise.wav'},out/e.mp4,,,x",                   # seed not a number
  ]
  jobs = tmp_path / "jobs.csv"
  jobs.write_text("\n".join(rows) + "\n")
  cli = load_cli()
  code = cli.main(["--checkpoint", str(stage2_run), "--renderer", "random:tiny", "--jobs", str(jobs),
                   "--no-progress", "--dtype", "float32"])
  assert code == 1   # some jobs failed
  with open(tmp_path / "jobs.report.csv") as f:
    report = list(csv.DictReader(f))
  assert [r["state"] for r in report] == ["done", "failed", "failed", "done", "failed"]
  assert [r["line"] for r in report] == ["2", "3", "4", "5", "6"]
  assert "No human face" in report[1]["error"] and "'nod'" in report[2]["error"]
  assert "seed 'x' is not a number" in report[4]["error"]
  for name in ("a", "d"):
    info = video.probe(tmp_path / "out" / f"{name}.mp4")
    assert info.num_frames == 48 and info.has_audio   # 1.9 s
    assert os.path.isfile(tmp_path / "out" / f"{name}.motion.npz")
  assert not any(os.path.exists(tmp_path / "out" / f"{n}.mp4") for n in "bce")


def test_batched_motion_matches_the_shapes_and_padding_of_one_recording(stage2_run):
  """generate_many pads shorter recordings and the batch; each recording keeps its own length, and a recording's
  motion does not depend on what the other rows hold."""
  model = anim.MotionModel.load(str(stage2_run))
  rng = np.random.default_rng(0)
  waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 27000, 9000)]
  source = model.default_source()
  many = model.generate_many(waves, [source] * 3, emotions=[1, 2, 3])
  assert [len(m["exp"]) for m in many] == [25, 43, 15]
  assert all(np.isfinite(m["exp"]).all() for m in many)
  other = model.generate_many([waves[0], waves[1][::-1].copy(), waves[2]], [source] * 3, emotions=[1, 5, 3])
  np.testing.assert_allclose(other[0]["exp"], many[0]["exp"], atol=1e-5)
  np.testing.assert_allclose(other[2]["exp"], many[2]["exp"], atol=1e-5)
  assert not np.allclose(other[1]["exp"], many[1]["exp"])
  with pytest.raises(UserError, match="emotion guidance weight"):
    model.generate_many(waves, [source] * 3, w_emotion=2.0)


def test_no_crop_takes_the_image_as_the_face_crop(inputs):
  """--no-crop: no detection (a face-less image is accepted), the centred square resized to the crop size."""
  from playmate_jax.renderer.api import Renderer
  from playmate_jax.renderer.config import TINY_MODEL_PARAMS
  renderer = Renderer.random(TINY_MODEL_PARAMS, crop_size=64)
  portrait = anim.load_portrait(renderer, *anim.find_portrait(str(inputs / "blank.png"), crop=False))
  assert portrait.crop.image.shape == (64, 64, 3)
  np.testing.assert_allclose(portrait.crop.image, 127 / 255, atol=1e-6)
  r = 200 / 64  # crop -> whole image; crop pixel centres land on the image's (pixel centres at integers)
  np.testing.assert_allclose(portrait.crop.matrix[:2], [[r, 0, r / 2 - 0.5], [0, r, r / 2 - 0.5]])
  with pytest.raises(UserError, match="No human face was found in .*blank.png"):
    anim.find_portrait(str(inputs / "blank.png"))


def test_per_frame_programs_have_one_shape_for_any_length():
  """The per-frame motion arithmetic gives the whole-array result for any length, from one compiled shape."""
  import jax
  rng = np.random.default_rng(0)
  rotation = jax.jit(lambda p, y, r: motion.rotation_matrix(p, y, r))   # a fresh cache to count shapes in
  for n in (1, 7, anim.PER_FRAME_CHUNK, anim.PER_FRAME_CHUNK + 1, 2 * anim.PER_FRAME_CHUNK + 13):
    angles = [rng.uniform(-40, 40, n).astype(np.float32) for _ in range(3)]
    out = anim._per_frame(rotation, *angles)
    assert out.shape == (n, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(motion.rotation_matrix(*angles)), atol=1e-6)
  assert rotation._cache_size() == 1
  tree = anim._per_frame(lambda d: {"twice": d["a"] * 2, "sum": d["a"] + d["b"]},
                         {"a": np.arange(5.0), "b": np.ones(5)})
  np.testing.assert_array_equal(tree["twice"], np.arange(5.0) * 2)
  np.testing.assert_array_equal(tree["sum"], np.arange(5.0) + 1)


def test_render_batch_is_chosen_from_free_memory(caplog):
  """--batch-size left out: the largest of 16, 8, 4, 2, 1 whose W+G program (its compiled memory analysis) fits the
  device's free memory less the reserve; on a CPU, which does not report its memory, 16."""
  import logging

  from playmate_jax.animate.job import Animator
  from playmate_jax.renderer.api import Renderer
  renderer = Renderer.from_spec("random:tiny")
  one, four = renderer.warp_decode_bytes(1), renderer.warp_decode_bytes(4)
  assert 0 < one < four < 5 * one          # the temporary buffers and images grow with the frames per call

  class Sized:                             # a renderer whose program needs 1 GiB a frame
    def warp_decode_bytes(self, batch):
      return batch * 2**30
  gib = 2**30
  assert anim.auto_render_batch(Sized(), free_bytes=anim.RESERVE_BYTES + 16 * gib)[0] == 16
  assert anim.auto_render_batch(Sized(), free_bytes=anim.RESERVE_BYTES + 15 * gib)[0] == 8
  assert anim.auto_render_batch(Sized(), free_bytes=anim.RESERVE_BYTES + 5 * gib)[0] == 4
  assert anim.auto_render_batch(Sized(), free_bytes=anim.RESERVE_BYTES)[0] == 1     # nothing fits: the smallest
  assert anim.auto_render_batch(Sized(), largest=4, free_bytes=anim.RESERVE_BYTES + 16 * gib)[0] == 4
  assert anim.device_free_bytes() is None  # the CPU
  with caplog.at_level(logging.INFO):
    animator = Animator(renderer, model=None)
    assert animator.batch_size == 16
  assert "Rendering 16 frames per call (auto: the device does not report its memory)." in caplog.text
  assert Animator(renderer, model=None, batch_size=3).batch_size == 3


def test_random_checkpoint_runs_the_whole_command(inputs, tmp_path):
  """--checkpoint random:CONFIG: the config's model with random weights, no training run needed (for trying or
  timing the pipeline); a config that does not exist is one sentence."""
  cli, args = args_for(inputs, "random:configs/stage1.py:tiny", tmp_path / "r.mp4")
  result = cli.animate(args)
  assert result["frames"] == int(np.ceil(1.9 * 25)) and video.probe(result["out"]).has_audio
  cli, args = args_for(inputs, "random:configs/nope.py", tmp_path / "n.mp4")
  with pytest.raises(UserError, match=r"configs/nope.py .*random:configs/stage1.py:live"):
    cli.animate(args)


def test_models_for_other_step_counts_are_kept_for_the_recent_few():
  """A service may be asked for any DDIM step count: the Animator keeps the models (and their compiled samplers) of
  the last MAX_STEP_MODELS counts, reusing one while it is kept."""
  from playmate_jax.animate import job as job_lib
  animator = job_lib.Animator(None, anim.MotionModel.load("random:configs/stage1.py:tiny"))
  first = animator.motion_model(13)
  assert animator.motion_model(13) is first and animator.motion_model(None) is animator.model
  for steps in (14, 15, 16):
    animator.motion_model(steps)
  assert animator.motion_model(13) is first           # used again: still kept, now the most recent
  animator.motion_model(17)                            # a fifth count: the least recent (14) goes
  assert sorted(animator._models) == [13, 15, 16, 17]
  assert animator.motion_model(14) is not None and 15 not in animator._models
