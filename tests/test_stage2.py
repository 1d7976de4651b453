"""Stage 2: the emotion controller on a frozen stage-1 model, three-way guidance, and sampling with an emotion.

Model-level tests use random weights; the rest share one tiny stage-1 run (configs/stage1.py:tiny) and one tiny
stage-2 run from it through launch.py (configs/stage2.py:tiny).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.stage2 import get_config as stage2_config
from playmate_jax import configlib, motion
from playmate_jax.data import demo, loader
from playmate_jax.data import stats as stats_lib
from playmate_jax.errors import UserError
from playmate_jax.generator import (EMOTION_PARAMS, NULL_EMOTION, Diffusion, MotionDiT, count_params, ddim_timesteps,
                                    guided_eps, training_loss, window_eps_fn)
from playmate_jax import run as run_lib
from playmate_jax.train import mesh as mesh_lib
from playmate_jax.generator.factory import model_factory, model_graphdef
from playmate_jax.train.trainer import Trainer
from tests import videos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE1, STAGE2 = (os.path.join(ROOT, "configs", f"stage{i}.py") + ":tiny" for i in (1, 2))
CFG = stage2_config("tiny")
D, L, K, C = 12, CFG.data.window, CFG.data.prev_frames, CFG.data.audio_context


def make_model(emotion_depth: int, seed: int = 0) -> MotionDiT:
  return MotionDiT(CFG.model, audio_dim=D, audio_context=C, emotion_depth=emotion_depth, rngs=nnx.Rngs(seed))


def perturbed_params(model: nnx.Module, seed: int = 1) -> dict:
  """Every parameter plus noise, so that zero-initialized layers (the controller's output among them) act."""
  rng = np.random.default_rng(seed)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)


def inputs(b: int = 3, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return dict(x_t=normal(b, L, 69), t=jnp.asarray(rng.integers(0, CFG.diffusion.num_timesteps, b), jnp.int32),
              audio=normal(b, L + 2 * C, D), audio_keep=jnp.ones((b,), bool), prev=normal(b, K, 69),
              identity=normal(b, 132))


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, inp, emotion=None):
  return nnx.merge(graphdef, params)(**inp, emotion=emotion)


@functools.partial(jax.jit, static_argnums=0)
def guided(graphdef, params, inp, w_audio, emotion=None, w_emotion=None):
  return guided_eps(nnx.merge(graphdef, params), inp["x_t"], inp["t"], inp["audio"], inp["prev"], inp["identity"],
                    w_audio, emotion, w_emotion)


# ---------------------------------------------------------------- model and guidance

def test_emotion_names_are_mead_order_as_in_the_demo():
  assert motion.EMOTIONS == ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
  assert demo.EMOTIONS == len(motion.EMOTIONS)
  offsets = demo.emotion_offsets(0)
  assert [i for i in range(len(offsets)) if not offsets[i].any()] == [motion.EMOTIONS.index("neutral")]


def test_pose_never_sees_the_emotion():
  model = make_model(2)
  graphdef, params = nnx.graphdef(model), perturbed_params(model)
  inp = inputs()
  outs = [forward(graphdef, params, inp, jnp.full((3,), e, jnp.int32)) for e in (NULL_EMOTION, 0, 4, 7)]
  for out in outs[1:]:
    np.testing.assert_array_equal(out[..., 63:], outs[0][..., 63:])     # pose: bit-identical whatever the emotion
    assert np.abs(out[..., :63] - outs[0][..., :63]).max() > 1e-3        # expression: moved by it
  np.testing.assert_array_equal(forward(graphdef, params, inp, None), outs[0])   # None is the null emotion


class CountingModel:
  """Delegates to a model and records the batch size of every call."""

  def __init__(self, model):
    self.model, self.batches = model, []

  def __call__(self, x, *args):
    self.batches.append(x.shape[0])
    return self.model(x, *args)


def test_three_way_guidance_in_one_call():
  model = make_model(2)
  graphdef, params = nnx.graphdef(model), perturbed_params(model)
  inp = inputs()
  b, emotion, null = 3, jnp.array([4, 0, 6]), jnp.full((3,), NULL_EMOTION)
  eps = lambda keep, e: forward(graphdef, params, dict(inp, audio_keep=jnp.full((b,), keep)), e)
  e00, ea0, eae = eps(False, null), eps(True, null), eps(True, emotion)
  assert np.abs(eae - ea0).max() > 1e-3
  np.testing.assert_allclose(guided(graphdef, params, inp, 1.5, emotion, 2.0),
                             e00 + 1.5 * (ea0 - e00) + 2.0 * (eae - ea0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(guided(graphdef, params, inp, 1.5, emotion, 0.0), e00 + 1.5 * (ea0 - e00),
                             rtol=1e-4, atol=1e-4)
  counting = CountingModel(nnx.merge(graphdef, params))
  jax.eval_shape(lambda: guided_eps(counting, inp["x_t"], inp["t"], inp["audio"], inp["prev"], inp["identity"], 1.5,
                                    emotion, 2.0))
  assert counting.batches == [3 * b]      # one model call on the tripled batch


def test_window_eps_fn_three_way_equals_guided_eps():
  """The sampler's per-step eps with everything but the blocks computed before the DDIM loop is guided_eps's."""
  model = nnx.merge(nnx.graphdef(make_model(2)), perturbed_params(make_model(2)))
  inp = inputs()
  args, emotion = (inp["audio"], inp["prev"], inp["identity"]), jnp.array([4, 0, 6])
  timesteps = ddim_timesteps(CFG.diffusion.num_timesteps, CFG.sample.ddim_steps)
  eps_fn = nnx.jit(lambda m, x, i: window_eps_fn(m, *args, timesteps, 1.5, emotion, 2.0)(x, None, i))
  for i in (0, 2):
    t = jnp.full((3,), timesteps[i], jnp.int32)
    np.testing.assert_allclose(eps_fn(model, inp["x_t"], jnp.int32(i)),
                               guided_eps(model, inp["x_t"], t, *args, 1.5, emotion, 2.0), rtol=1e-5, atol=1e-5)


def test_training_loss_drops_emotion_to_null():
  model = make_model(2)
  graphdef, params = nnx.graphdef(model), perturbed_params(model)
  d = Diffusion.from_config(CFG.diffusion)
  inp = inputs(b=4)
  batch = dict(motion=inp["x_t"], prev_motion=inp["prev"], audio=inp["audio"], identity=inp["identity"])
  loss = jax.jit(lambda p, batch, drop: training_loss(nnx.merge(graphdef, p), batch, jax.random.key(0), d,
                                                       CFG.model, drop)[0])
  labelled, unknown = (dict(batch, emotion=jnp.array(e, jnp.int32)) for e in ([0, 3, 4, 7], [-1] * 4))
  assert float(loss(params, labelled, 0.0)) != float(loss(params, unknown, 0.0))   # the label is used
  assert float(loss(params, labelled, 1.0)) == float(loss(params, unknown, 0.0))   # dropped = unknown = null


# ---------------------------------------------------------------- the source: the speaker's reference expression

def test_reference_expression_is_the_speakers_neutral_mean(tmp_path):
  rng = np.random.default_rng(0)
  clip = lambda n, level: dict(exp=np.full((n, 21, 3), level, np.float32) + 0.01 * rng.normal(size=(n, 21, 3)),
                               pitch=np.zeros(n), yaw=np.zeros(n), roll=np.zeros(n), t=np.zeros((n, 3)),
                               scale=np.ones(n), kp=np.zeros((n, 21, 3)))
  clips = [("a", clip(30, 1.0), 5), ("a", clip(10, 3.0), 0), ("b", clip(20, 2.0), -1), ("b", clip(20, 4.0), 4)]
  labelled, unlabelled = stats_lib.StatsAccumulator(), stats_lib.StatsAccumulator()
  for speaker, motion_, emotion in clips:
    labelled.add(speaker, motion_, np.zeros((len(motion_["exp"]), 2)), emotion)
    unlabelled.add(speaker, motion_, np.zeros((len(motion_["exp"]), 2)))
  st = labelled.finalize()
  mean = lambda *ms: np.concatenate([m["exp"].reshape(-1, 63) for m in ms]).mean(0)
  np.testing.assert_allclose(st.reference_expression("a"), mean(clips[0][1]), rtol=1e-5)   # its neutral clip
  np.testing.assert_allclose(st.reference_expression("b"), mean(clips[2][1], clips[3][1]), rtol=1e-5)  # none
  np.testing.assert_allclose(unlabelled.finalize().reference_expression("a"), mean(clips[0][1], clips[1][1]),
                             rtol=1e-5)                                                   # no labels given
  np.testing.assert_allclose(st.reference_expression("unseen"), (st.exp_reference["a"] + st.exp_reference["b"]) / 2,
                             rtol=1e-5)
  stats_lib.save_stats(st, tmp_path / "stats.json")
  again = stats_lib.read_stats(tmp_path / "stats.json")
  np.testing.assert_array_equal(again.exp_reference["a"], st.exp_reference["a"])
  record = json.load(open(tmp_path / "stats.json"))
  del record["exp_reference"]                                  # statistics written before references existed
  json.dump(record, open(tmp_path / "old.json", "w"))
  np.testing.assert_array_equal(stats_lib.read_stats(tmp_path / "old.json").reference_expression("a"), st.exp_mean)


@pytest.fixture(scope="module")
def demo_records():
  ds = loader.open_dataset(CFG, "train")
  return ds, [ds.source("train")[i] for i in range(12)]


def test_training_windows_take_the_reference_and_start_like_the_sampler(demo_records):
  ds, records = demo_records
  assert (CFG.data.source_expression, CFG.data.start_prob) == ("reference", 0.0)
  windows = lambda mode, p: loader.RandomWindow(ds.stats, L, K, C, mode, p)
  rng = np.random.default_rng(0)
  starts = 0
  for ex in records * 4:
    speaker = ex["speaker_id"].decode()
    raw = stats_lib.motion_vector({k: ex["motion"][k] for k in ("exp", "pitch", "yaw", "roll", "t", "scale")})
    norm = ds.stats.normalize_motion(raw, speaker)
    w = windows("reference", 0.5).random_map(ex, rng)
    reference = ds.stats.normalize_motion(np.concatenate([ds.stats.reference_expression(speaker), raw[0, 63:]]),
                                          speaker)[:63]
    np.testing.assert_allclose(w["identity"][:63], reference, atol=1e-5)    # the expression: the speaker's
    src = int(np.argmin(np.abs(norm[:, 63:] - w["identity"][63:69]).sum(-1)))
    np.testing.assert_allclose(w["identity"][63:69], norm[src, 63:], atol=1e-5)   # the pose: a frame of the clip
    start = int(np.argmin(np.abs(norm[:len(norm) - L + 1] - w["motion"][0]).sum(-1)))
    np.testing.assert_allclose(w["motion"], norm[start:start + L], atol=1e-5)
    as_start = np.allclose(w["prev_motion"], w["identity"][None, :69], atol=1e-6)
    if not as_start:   # the previous motion is the clip's frames before the window (the source before its start)
      want = np.stack([norm[f] if f >= 0 else w["identity"][:69] for f in range(start - K, start)])
      np.testing.assert_allclose(w["prev_motion"], want, atol=1e-5)
    starts += as_start
  assert 0.3 < starts / (4 * len(records)) < 0.75         # start_prob 0.5 (plus the windows at a clip's start)
  # Stage 1's settings: the source frame's own expression, no extra starts.
  ex = records[0]
  w = windows("clip", 0.0).random_map(ex, np.random.default_rng(1))
  raw = stats_lib.motion_vector({k: ex["motion"][k] for k in ("exp", "pitch", "yaw", "roll", "t", "scale")})
  norm = ds.stats.normalize_motion(raw, ex["speaker_id"].decode())
  assert np.abs(norm - w["identity"][:69]).sum(-1).min() < 1e-4


def test_eval_clips_and_settings_follow_the_config(demo_records):
  ds, _ = demo_records
  clip = loader.load_eval_clips(CFG, "test", 1, 30)[0]
  raw = motion.denormalize_motion(clip["identity"][:69], clip["stats"])
  np.testing.assert_allclose(raw[:63], ds.stats.reference_expression(clip["speaker_id"]), atol=1e-6)
  np.testing.assert_allclose(clip["identity"][63:69], clip["motion"][0, 63:], atol=1e-6)
  stage1 = configlib.load_config(STAGE1)
  assert loader.source_settings(stage1) == ("clip", 0.0)
  np.testing.assert_allclose(loader.load_eval_clips(stage1, "test", 1, 30)[0]["identity"][:69], clip["motion"][0],
                             atol=1e-6)
  for key, value, message in (("data.source_expression", "mean", "source_expression='mean'"),
                              ("data.start_prob", "1.5", "start_prob=1.5")):
    with pytest.raises(UserError, match=message):
      configlib.validate(tiny(STAGE2, **{key: value}))


# ---------------------------------------------------------------- training

def tiny(path: str, **overrides):
  return configlib.apply_overrides(configlib.load_config(path), {k: str(v) for k, v in overrides.items()})


QUICK_EVAL = {"eval.num_clips": 1, "eval.max_frames": L, "eval.plot": False}   # the final evaluation, cheap


def launch(workdir, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={STAGE2}", f"--workdir={workdir}", *map(str, args),
         *(f"--config.{k}={v}" for k, v in QUICK_EVAL.items())]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def stage2_launched(stage1_run, tmp_path_factory):
  """A tiny stage-2 workdir trained by launch.py from stage1_run: 20 steps, checkpoints at 10 and 20."""
  workdir = tmp_path_factory.mktemp("stage2")
  result = launch(workdir, f"--config.init_from={stage1_run}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_initial_state_is_stage1_plus_a_zero_controller(stage1_run, tmp_path):
  trainer = Trainer(tiny(STAGE2, init_from=stage1_run), str(tmp_path), mesh=mesh_lib.make_mesh(jax.devices()[:1]))
  state = trainer.initial_state()
  stage1 = run_lib.restore_run(str(stage1_run))
  assert set(state["params"]) == set(state["ema_params"]) == {EMOTION_PARAMS}
  # The optimizer state holds the controller's weights only: Adam's two moments of exactly those.
  adam = [s for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1
  for moment in (adam[0].mu, adam[0].nu):
    assert jax.tree.structure(moment) == jax.tree.structure(state["params"])
  assert count_params(state["opt_state"]) == 2 * count_params(state["params"]) + 2   # + Adam's, schedule's counts
  # At step 0 the stage-2 model computes exactly what the stage-1 model (its EMA weights) computes, any emotion.
  audio_dim = state["frozen"]["audio_conv"]["kernel"].shape[1]
  graph1 = model_graphdef(model_factory(stage1.config, audio_dim))
  rng = np.random.default_rng(0)
  inp = dict(inputs(), audio=jnp.asarray(rng.normal(size=(3, L + 2 * C, audio_dim)), jnp.float32))
  reference = forward(graph1, stage1.params, inp)
  assert np.abs(reference).max() > 1e-3                 # trained output layers (zero at initialization)
  np.testing.assert_array_equal(forward(trainer.graphdef, run_lib.model_params(state), inp, jnp.array([0, 5, -1])),
                                reference)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_launch_freezes_stage1_and_resumes_exactly(stage1_run, stage2_launched, tmp_path):
  """launch.py with configs/stage2.py:tiny after a stage-1 run: the stage-1 weights in the stage-2 checkpoint are
  the stage-1 EMA weights bit for bit, the controller trained; a run resumed from step 10 ends where the
  uninterrupted one did."""
  stage1 = run_lib.restore_run(str(stage1_run))
  trained = run_lib.restore_run(str(stage2_launched), ema=False)
  assert trained.step == 20 and trained.config.stage == 2
  assert set(trained.params) == set(stage1.params) | {EMOTION_PARAMS}
  for key in stage1.params:
    assert_trees_equal(trained.params[key], stage1.params[key])
  assert np.abs(trained.params[EMOTION_PARAMS]["out"]["kernel"]).max() > 0     # zero-initialized, now trained
  evals = [json.loads(line) for line in open(stage2_launched / "eval_metrics.jsonl")]
  assert evals[-1]["step"] == 20 and np.isfinite(evals[-1]["exp_l1_no_emotion"])

  resumed = tmp_path / "resumed"
  shutil.copytree(stage2_launched, resumed)
  shutil.rmtree(resumed / "checkpoints" / "20")
  result = launch(resumed, f"--config.init_from={tmp_path / 'nowhere'}")   # a resume does not read stage 1 again
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resuming from" in result.stderr
  again = run_lib.restore_run(str(resumed), ema=False)
  assert again.step == 20
  assert_trees_equal(again.params, trained.params)


def test_stage2_user_errors(stage1_run, stage2_launched, tmp_path):
  cases = [({}, "config.init_from is empty"),
           ({"init_from": stage1_run, "model.dim": 64}, "model.dim=32"),
           ({"init_from": stage2_launched}, "stage-2 checkpoint"),
           ({"init_from": tmp_path / "nowhere"}, "does not exist")]
  for i, (overrides, message) in enumerate(cases):   # some stop when the Trainer is made, the others at the start
    with pytest.raises(UserError, match=message):
      Trainer(tiny(STAGE2, **overrides), str(tmp_path / str(i)), mesh=mesh_lib.make_mesh(jax.devices()[:1])
              ).initial_state()
  with pytest.raises(UserError, match="holds a stage-1 run"):   # its checkpoints would be mixed with stage 2's
    Trainer(tiny(STAGE2, init_from=stage1_run), str(stage1_run))


# ---------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def sample_module():
  spec = importlib.util.spec_from_file_location("sample_pipeline", os.path.join(ROOT, "pipelines", "sample.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_sample_with_an_emotion(stage1_run, stage2_launched, sample_module, tmp_path):
  import soundfile as sf
  wav = tmp_path / "speech.wav"
  sf.write(wav, videos.tone_bursts(2.0, 16000, bursts=4), 16000)
  with pytest.raises(UserError, match="'joyful'.*angry, contempt, disgusted, fear, happy, neutral, sad, surprised"):
    sample_module.generate(str(stage2_launched), str(wav), emotion="joyful")
  with pytest.raises(UserError, match="stage-1"):
    sample_module.generate(str(stage1_run), str(wav), emotion="happy")
  happy, sad = (sample_module.generate(str(stage2_launched), str(wav), emotion=e, w_emotion=3.0, progress=False)
                for e in ("happy", "Sad"))
  assert happy["exp"].shape == (50, 21, 3) and all(np.isfinite(v).all() for v in happy.values())
  assert np.abs(happy["exp"] - sad["exp"]).max() > 1e-6
