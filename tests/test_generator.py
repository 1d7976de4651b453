"""Tests of the motion DiT, the diffusion schedule and loss, and the samplers (tiny config, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.stage1 import get_config
from playmate_jax import configlib
from playmate_jax.errors import UserError
from playmate_jax.generator import (Diffusion, MotionDiT, WindowSampler, count_params, ddim_sample, ddim_timesteps,
                                    guided_eps, sample_sequence, sample_window, training_loss, window_eps_fn)

D = 12                 # audio feature dim used in the tests
CFG = get_config("tiny")
L, K, C = CFG.data.window, CFG.data.prev_frames, CFG.data.audio_context


def tiny_config(**model_overrides):
  cfg = get_config("tiny")
  for name, value in model_overrides.items():
    setattr(cfg.model, name, value)
  return cfg


def make_model(cfg=CFG, seed=0) -> MotionDiT:
  return MotionDiT(cfg.model, audio_dim=D, audio_context=C, rngs=nnx.Rngs(seed))


def perturb(model: nnx.Module, seed: int = 1) -> nnx.Module:
  """Adds noise to every parameter, so that zero-initialized layers no longer hide any input."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), state))
  return model


def inputs(seed: int = 0, b: int = 2) -> dict:
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return dict(x_t=normal(b, L, 69), t=jnp.asarray(rng.integers(0, CFG.diffusion.num_timesteps, b), jnp.int32),
              audio=normal(b, L + 2 * C, D), audio_keep=jnp.ones((b,), bool), prev=normal(b, K, 69),
              identity=normal(b, 132))


@nnx.jit
def _forward(model, kwargs):
  return model(**kwargs)


def run(model, inp, **changes):
  return _forward(model, {**inp, **changes})


# ---------------------------------------------------------------- model

def test_shapes_dtypes_and_state():
  model = make_model()
  inp = inputs(b=3)
  eps = run(model, inp)
  assert eps.shape == (3, L, 69) and eps.dtype == jnp.float32
  h, cond = nnx.jit(lambda m, kw: m.trunk(**kw))(model, inp)
  assert h.shape == (3, L, CFG.model.dim) and cond.shape == (3, CFG.model.dim)
  variables = jax.tree.leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert variables and all(type(v) is nnx.Param for v in variables)   # parameters only: no RNG, no statistics
  assert all(v[...].dtype == jnp.float32 for v in variables)
  assert count_params(model) == count_params(nnx.state(model)) == sum(v[...].size for v in variables)


def test_blocks_and_output_start_at_identity_and_zero():
  model = make_model()
  x = jax.random.normal(jax.random.key(0), (2, K + L, CFG.model.dim))
  c = jax.random.normal(jax.random.key(1), (2, CFG.model.dim))
  apply = nnx.jit(lambda block, x, c: block(x, c))
  for block in model.blocks:
    np.testing.assert_array_equal(apply(block, x, c), x)             # adaLN-Zero: each block starts as the identity
  np.testing.assert_array_equal(run(model, inputs()), 0.0)   # zero-initialized output layers
  perturb(model)
  assert not np.allclose(apply(model.blocks[0], x, c), x)


def test_heads_order_exp_then_pose():
  model = perturb(make_model())
  inp = inputs()
  base = run(model, inp)
  model.pose_head.fc2.bias[...] = model.pose_head.fc2.bias[...] + 1.0
  moved = run(model, inp) - base
  np.testing.assert_array_equal(moved[..., :63], 0.0)
  np.testing.assert_allclose(moved[..., 63:], 1.0, atol=1e-5)
  model.exp_head.fc2.bias[...] = model.exp_head.fc2.bias[...] + 1.0
  moved = run(model, inp) - base
  np.testing.assert_allclose(moved, 1.0, atol=1e-5)


def test_dropped_audio_is_ignored_exactly():
  model = perturb(make_model())
  inp = inputs()
  keep = jnp.array([False, True])
  a = run(model, inp, audio_keep=keep)
  b = run(model, inp, audio_keep=keep, audio=inp["audio"] * -3.0 + 1.0)
  np.testing.assert_array_equal(a[0], b[0])          # dropped: bit-identical whatever the audio
  assert np.abs(a[1] - b[1]).max() > 1e-3            # kept: audio matters


@pytest.mark.parametrize("name", ["x_t", "t", "audio", "prev", "identity"])
def test_each_input_changes_output(name):
  model = perturb(make_model())
  inp = inputs()
  other = inputs(seed=7)
  a, b = run(model, inp), run(model, inp, **{name: other[name]})
  assert np.abs(a - b).max() > 1e-3


def test_bf16_matches_fp32():
  model32 = perturb(make_model())
  model16 = make_model(tiny_config(dtype="bfloat16"))
  nnx.update(model16, nnx.state(model32, nnx.Param))
  inp = inputs()
  out32, out16 = run(model32, inp), run(model16, inp)
  assert out16.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model16)))
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < rel < 0.05, rel


def test_dropout_only_with_key():
  model = perturb(make_model(tiny_config(dropout=0.3)))
  inp = inputs()
  k1, k2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(run(model, inp), run(model, inp))
  np.testing.assert_array_equal(run(model, inp, dropout_key=k1), run(model, inp, dropout_key=k1))
  assert not np.allclose(run(model, inp, dropout_key=k1), run(model, inp, dropout_key=k2))
  assert not np.allclose(run(model, inp, dropout_key=k1), run(model, inp))


def test_bf16_residual_stream_matches_fp32():
  """model.residual_dtype=bfloat16 stores the stream between sub-layers in bf16 (halving its bytes) and changes the
  output only by bf16 rounding; the stage-2 controller's stream too."""
  model32 = perturb(MotionDiT(tiny_config().model, audio_dim=D, audio_context=C, emotion_depth=1, rngs=nnx.Rngs(0)))
  model16 = MotionDiT(tiny_config(residual_dtype="bfloat16").model, audio_dim=D, audio_context=C, emotion_depth=1,
                      rngs=nnx.Rngs(0))
  nnx.update(model16, nnx.state(model32, nnx.Param))
  inp = dict(inputs(), emotion=jnp.asarray([1, 3]))
  out32, out16 = run(model32, inp), run(model16, inp)
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < rel < 0.03, rel
  stream = f"bf16[2,{K + L},{CFG.model.dim}]"          # the trunk's stream really is stored in bf16
  assert stream in str(jax.make_jaxpr(lambda i: model16(**i))(inp))
  assert stream not in str(jax.make_jaxpr(lambda i: model32(**i))(inp))


@pytest.mark.parametrize("d", [512, 30])
def test_dropout_8_bit_masks(d):
  """dropout_bits=8: four mask elements per 32-bit draw; the kept share is round(0.9 * 256) / 256 and the kept values
  are scaled so that the mean is unchanged; a key gives one mask, another key another."""
  from playmate_jax.generator.dit import dropout
  x = jnp.ones((16, 90, d), jnp.bfloat16)
  y = np.asarray(dropout(x, 0.1, jax.random.key(0), bits=8), np.float32)
  kept = y != 0
  assert abs(kept.mean() - 230 / 256) < 0.01
  np.testing.assert_allclose(y[kept], 256 / 230, rtol=1e-2)            # bf16 rounding of the scale
  assert abs(y.mean() - 1.0) < 0.02
  np.testing.assert_array_equal(y, np.asarray(dropout(x, 0.1, jax.random.key(0), bits=8), np.float32))
  assert (y != np.asarray(dropout(x, 0.1, jax.random.key(1), bits=8), np.float32)).mean() > 0.1
  assert kept[..., :4].mean() > 0.8 and kept[..., -4:].mean() > 0.8    # every lane of the packed bytes is used
  y32 = np.asarray(dropout(x, 0.1, jax.random.key(0), bits=32), np.float32)
  assert abs((y32 != 0).mean() - 0.9) < 0.01


def test_remat_same_loss_and_gradients():
  """model.remat recomputes each block in the backward pass: the same loss and gradients as keeping activations."""
  def loss_and_grads(remat: bool):
    model = perturb(make_model(tiny_config(remat=remat, dropout=0.2)))
    inp = inputs()
    params = nnx.state(model, nnx.Param)
    graphdef = nnx.graphdef(model)

    def loss(p):
      return jnp.mean(jnp.square(nnx.merge(graphdef, p)(**inp, dropout_key=jax.random.key(3))))
    return jax.jit(jax.value_and_grad(loss))(params)

  (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)
  assert float(l0) > 0


def test_config_errors():
  """The model's settings are checked by configlib.validate, before any model is built."""
  with pytest.raises(UserError, match="num_heads"):
    configlib.validate(tiny_config(num_heads=3))
  with pytest.raises(UserError, match="dtype"):
    configlib.validate(tiny_config(dtype="int8"))
  with pytest.raises(UserError, match="residual_dtype"):
    configlib.validate(tiny_config(residual_dtype="float16"))
  with pytest.raises(UserError, match="dropout_bits"):
    configlib.validate(tiny_config(dropout_bits=16))


def test_paper_scale_parameter_count():
  cfg = get_config()
  model = nnx.eval_shape(lambda: MotionDiT(cfg.model, audio_dim=cfg.audio.n_mels,
                                           audio_context=cfg.data.audio_context, rngs=nnx.Rngs(0)))
  assert 60e6 < count_params(model) < 100e6


# ---------------------------------------------------------------- diffusion

@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_properties(schedule):
  dcfg = get_config().diffusion
  dcfg.schedule = schedule
  d = Diffusion.from_config(dcfg)
  ab = np.asarray(d.alphas_cumprod)
  assert d.num_timesteps == 1000 and ab.dtype == np.float32
  assert np.all(np.diff(ab) < 0) and ab[0] < 1 and ab[-1] > 0
  np.testing.assert_allclose(d.sqrt_alphas_cumprod ** 2 + d.sqrt_one_minus_alphas_cumprod ** 2, 1.0, atol=1e-6)
  np.testing.assert_allclose(ab, np.cumprod(1 - np.asarray(d.betas, np.float64)), rtol=1e-5, atol=1e-12)
  if schedule == "cosine":
    assert ab[-1] < 1e-6 and ab[0] > 0.999
  else:
    np.testing.assert_allclose(np.asarray(d.betas)[[0, -1]], [dcfg.beta_start, dcfg.beta_end], rtol=1e-6)


def test_schedule_errors():
  """The schedule and the DDIM steps are checked by configlib.validate."""
  cfg = get_config()
  cfg.diffusion.schedule = "quadratic"
  with pytest.raises(UserError, match="schedule"):
    configlib.validate(cfg)
  cfg = get_config()
  cfg.diffusion.num_timesteps, cfg.sample.ddim_steps = 100, 101
  with pytest.raises(UserError, match="ddim_steps"):
    configlib.validate(cfg)


def test_q_sample_statistics():
  d = Diffusion.from_config(CFG.diffusion)
  n, t = 40000, 60
  x0 = jnp.full((n, 3), 2.0)
  xt = d.q_sample(x0, jnp.full((n,), t), jax.random.normal(jax.random.key(0), (n, 3)))
  a = float(d.alphas_cumprod[t])
  np.testing.assert_allclose(xt.mean(0), 2.0 * np.sqrt(a), atol=0.02)
  np.testing.assert_allclose(xt.std(0), np.sqrt(1 - a), atol=0.02)


def make_batch(seed: int, b: int = 4) -> dict:
  inp = inputs(seed, b)
  return dict(motion=inp["x_t"], prev_motion=inp["prev"], audio=inp["audio"], identity=inp["identity"],
              emotion=jnp.full((b,), -1, jnp.int32))


def test_training_loss_pure_and_consistent():
  cfg = CFG
  model = make_model()
  graphdef, params = nnx.split(model)
  d = Diffusion.from_config(cfg.diffusion)
  loss_fn = jax.jit(lambda p, batch, key: training_loss(nnx.merge(graphdef, p), batch, key, d, cfg.model))
  batch = make_batch(0)
  loss, aux = loss_fn(params, batch, jax.random.key(3))
  loss2, _ = loss_fn(params, batch, jax.random.key(3))
  loss3, _ = loss_fn(params, batch, jax.random.key(4))
  assert float(loss) == float(loss2) and float(loss) != float(loss3)
  np.testing.assert_allclose(loss, (63 * aux["loss_exp"] + 6 * aux["loss_pose"]) / 69, rtol=1e-6)
  assert 0.5 < float(loss) < 1.5    # zero-initialized output: the loss is E[noise^2] = 1 at start


def test_training_loss_audio_drop():
  model = perturb(make_model())
  d = Diffusion.from_config(CFG.diffusion)
  batch = make_batch(0)
  other = dict(batch, audio=batch["audio"] + 5.0)
  graphdef, params = nnx.split(model)
  for prob, same in ((1.0, True), (0.0, False)):
    mcfg = tiny_config(audio_drop_prob=prob).model
    loss_fn = jax.jit(lambda p, batch: training_loss(nnx.merge(graphdef, p), batch, jax.random.key(0), d, mcfg)[0])
    assert (float(loss_fn(params, batch)) == float(loss_fn(params, other))) == same


# ---------------------------------------------------------------- sampling

def test_ddim_oracle_recovers_fixed_data():
  d = Diffusion.from_config(CFG.diffusion)
  x_star = jax.random.normal(jax.random.key(0), (3, 5, 69))
  ab = d.alphas_cumprod

  def oracle(x, t, i):
    a = ab[t][:, None, None]
    return (x - jnp.sqrt(a) * x_star) / jnp.sqrt(1 - a)

  for eta in (0.0, 1.0):
    x0 = ddim_sample(oracle, d, jax.random.normal(jax.random.key(1), x_star.shape), jax.random.key(2),
                     ddim_timesteps(d.num_timesteps, 5), eta)
    np.testing.assert_allclose(x0, x_star, atol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_samples_gaussian_data(eta):
  """With the exact eps of N(mu, s^2) data, DDIM over all steps reproduces that distribution."""
  d = Diffusion.from_config(CFG.diffusion)
  mu, s = 1.5, 0.5

  def exact_eps(x, t, i):
    a = d.alphas_cumprod[t][:, None]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s * s + 1 - a)

  x = ddim_sample(exact_eps, d, jax.random.normal(jax.random.key(0), (20000, 1)), jax.random.key(1),
                  ddim_timesteps(d.num_timesteps, d.num_timesteps), eta)
  assert abs(float(x.mean()) - mu) < 0.02
  assert abs(float(x.std()) - s) < 0.03


def test_guidance_weights():
  model = perturb(make_model())
  d = Diffusion.from_config(CFG.diffusion)
  inp = inputs()
  args = (inp["audio"], inp["prev"], inp["identity"])
  eps1 = guided_eps(model, inp["x_t"], inp["t"], *args, 1.0)
  np.testing.assert_allclose(eps1, run(model, inp), atol=1e-5)
  eps0 = guided_eps(model, inp["x_t"], inp["t"], *args, 0.0)
  np.testing.assert_allclose(eps0, run(model, inp, audio_keep=jnp.zeros((2,), bool)), atol=1e-5)

  graphdef, params = nnx.split(model)
  sampler = WindowSampler(graphdef, d, CFG)
  key = jax.random.key(5)
  cond = sample_window(model, d, *args, key, None, sampler.timesteps, sampler.eta, sampler.clip_x0)
  np.testing.assert_allclose(sampler(params, *args, key, 1.0), cond, rtol=2e-3, atol=1e-3)
  w0 = sampler(params, *args, key, 0.0)
  np.testing.assert_array_equal(w0, sampler(params, inp["audio"] * 2 - 1, *args[1:], key, 0.0))
  assert not np.allclose(w0, sampler(params, *args, key, 1.5))
  assert sampler.num_traces == 1     # w_audio is an argument: changing it does not recompile


@pytest.mark.parametrize("w_audio", [None, 1.5])
def test_window_eps_fn_equals_the_model_at_every_step(w_audio):
  """The sampler's per-step eps, with the window's tokens and every step's adaLN modulations computed before the
  loop, is the model's (or guided_eps's) at that step's timestep."""
  model = perturb(make_model())
  inp = inputs()
  args = (inp["audio"], inp["prev"], inp["identity"])
  timesteps = ddim_timesteps(CFG.diffusion.num_timesteps, CFG.sample.ddim_steps)
  eps_fn = nnx.jit(lambda m, x, i: window_eps_fn(m, *args, timesteps, w_audio)(x, None, i))
  for i in (0, 3):
    t = jnp.full((2,), timesteps[i], jnp.int32)
    want = run(model, dict(inp, t=t)) if w_audio is None else guided_eps(model, inp["x_t"], t, *args, w_audio)
    np.testing.assert_allclose(eps_fn(model, inp["x_t"], jnp.int32(i)), want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(eps_fn(model, inp["x_t"], jnp.int32(0)), eps_fn(model, inp["x_t"], jnp.int32(3)))


class RecordingSampler:
  """A stand-in window sampler (WindowSampler's `windows` protocol, one window per call) that records its inputs
  and returns distinct frames."""
  max_windows = 1

  def __init__(self):
    self.calls = []

  def windows(self, params, audio, prev, identity, key, first, count, w_audio, emotion=None, w_emotion=0.0):
    audio, prev = np.asarray(audio), np.asarray(prev)
    self.calls.append((audio, prev))
    b, l = audio.shape[0], audio.shape[1] - 2 * C
    x0 = np.full((b, l, 69), len(self.calls), np.float32) + np.arange(l, dtype=np.float32)[None, :, None]
    history = np.concatenate([prev, x0], axis=1)
    return x0, history[:, history.shape[1] - prev.shape[1]:]


@pytest.mark.parametrize("prev_frames", [K, 20])
def test_sample_sequence_windows(prev_frames):
  cfg = get_config("tiny")
  cfg.data.prev_frames = prev_frames
  t = 2 * L + 5
  audio = np.random.default_rng(0).normal(size=(t, D)).astype(np.float32) + 3.0
  identity = np.random.default_rng(1).normal(size=(132,)).astype(np.float32)
  rec = RecordingSampler()
  out = sample_sequence(rec, None, audio, identity, jax.random.key(0), cfg, progress=prev_frames > L)
  assert out.shape == (t, 69) and len(rec.calls) == 3
  padded = np.concatenate([np.zeros((C, D)), audio, np.zeros((3 * L - t + C, D))])
  history = np.repeat(identity[None, :69], prev_frames, 0)     # first window: the source motion, K times
  for i, (a, p) in enumerate(rec.calls):
    np.testing.assert_array_equal(a[0], padded[i * L:i * L + L + 2 * C])
    np.testing.assert_array_equal(p[0], history[-prev_frames:])
    history = np.concatenate([history, np.full((L, 69), i + 1.0) + np.arange(L)[:, None]])
  np.testing.assert_array_equal(out, history[prev_frames:prev_frames + t])


def test_sample_sequence_real_model_one_compile():
  model = perturb(make_model())
  graphdef, params = nnx.split(model)
  sampler = WindowSampler(graphdef, Diffusion.from_config(CFG.diffusion), CFG)
  rng = np.random.default_rng(0)
  identity = rng.normal(size=(132,)).astype(np.float32)
  key = jax.random.key(0)
  out = sample_sequence(sampler, params, rng.normal(size=(3 * L + 1, D)), identity, key, CFG)
  again = sample_sequence(sampler, params, rng.normal(size=(2 * L - 3, D)), identity, key, CFG, w_audio=2.0)
  assert out.shape == (3 * L + 1, 69) and again.shape == (2 * L - 3, 69)
  assert np.isfinite(out).all() and out.dtype == np.float32
  assert sampler.num_traces == 1     # 6 windows, two lengths, two guidance weights: one compilation
  one_by_one = get_config("tiny")
  one_by_one.sample.windows_per_call = 1
  slow = WindowSampler(graphdef, Diffusion.from_config(CFG.diffusion), one_by_one)
  for length in (3 * L + 1, 2 * L):  # device-side windows (3 and 2 in one call) == one call per window
    audio = rng.normal(size=(length, D))
    np.testing.assert_allclose(sample_sequence(sampler, params, audio, identity, key, CFG),
                               sample_sequence(slow, params, audio, identity, key, one_by_one), atol=2e-5)
  batched = sample_sequence(sampler, params, rng.normal(size=(2, L + 3, D)), np.stack([identity] * 2), key, CFG)
  assert batched.shape == (2, L + 3, 69) and not np.allclose(batched[0], batched[1])


# ---------------------------------------------------------------- learning

def test_tiny_model_learns_audio_to_motion():
  """One exp and one pose coordinate follow the audio of their frame, the rest is zero: the loss must fall far
  below its initial value, and the trained model must use the audio."""
  cfg = tiny_config(dim=96, head_hidden=96)    # tiny's dim 32 < 69 cannot carry 69 noise dims per token
  d = Diffusion.from_config(cfg.diffusion)
  graphdef, params = nnx.split(make_model(cfg))
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)
  b = 8

  def synthetic(key):
    audio = jax.random.normal(key, (b, L + 2 * C, D))
    motion = jnp.zeros((b, L, 69))
    motion = motion.at[..., 0].set(2.0 * audio[:, C:C + L, 0]).at[..., 64].set(-audio[:, C:C + L, 1])
    return dict(motion=motion, prev_motion=jnp.zeros((b, K, 69)), audio=audio, identity=jnp.zeros((b, 132)))

  @jax.jit
  def step(params, opt_state, key):
    k_data, k_loss = jax.random.split(key)
    loss_fn = lambda p: training_loss(nnx.merge(graphdef, p), synthetic(k_data), k_loss, d, cfg.model)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(200):
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(jax.random.key(0), i))
    losses.append(float(loss))
  assert np.mean(losses[:5]) > 0.8
  assert np.mean(losses[-25:]) < 0.15 * np.mean(losses[:5]), (losses[:5], losses[-25:])

  # The audio-driven coordinates are far better denoised with the audio than with the null embedding.
  data = synthetic(jax.random.key(99))
  t = jnp.full((b,), int(0.3 * cfg.diffusion.num_timesteps))
  noise = jax.random.normal(jax.random.key(98), data["motion"].shape)
  inp = dict(x_t=d.q_sample(data["motion"], t, noise), t=t, audio=data["audio"], prev=data["prev_motion"],
             identity=data["identity"])
  model = nnx.merge(graphdef, params)
  errs = [float(jnp.mean(jnp.square(run(model, inp, audio_keep=jnp.full((b,), keep)) - noise)[..., [0, 64]]))
          for keep in (True, False)]
  assert errs[0] < 0.6 * errs[1], errs


def test_ddim_clip_bounds_a_poor_eps_model():
  """A model whose eps is off at near-zero SNR: unclipped, the error is amplified by 1/sqrt(alpha_bar); clipped, not."""
  d = Diffusion.from_config(CFG.diffusion)
  x_T = jax.random.normal(jax.random.key(0), (2, 8, 69))
  bad_eps = lambda x, t, i: 0.5 * x  # half the noise: error ~ 0.5 |x| / sqrt(alpha_bar) at the first step
  timesteps = np.array([d.num_timesteps - 1, d.num_timesteps // 2, 0], np.int32)
  wild = ddim_sample(bad_eps, d, x_T, jax.random.key(1), timesteps, 0.0)
  tame = ddim_sample(bad_eps, d, x_T, jax.random.key(1), timesteps, 0.0, clip_x0=3.0)
  assert np.abs(wild).max() > 30.0
  assert np.abs(tame).max() <= 3.0 + 1e-5


@pytest.mark.parametrize("taps", [1, 3, 4, 7])
def test_depthwise_conv_by_taps_equals_grouped_conv(taps):
  """The Conformer's depthwise temporal conv, as shifted multiply-adds, computes nnx.Conv's grouped "SAME" conv
  with the same parameters (so checkpoints keep their layout), in float32 and in bfloat16."""
  from playmate_jax.generator.dit import depthwise_conv1d
  conv = nnx.Conv(16, 16, (taps,), padding="SAME", feature_group_count=16, rngs=nnx.Rngs(taps))
  conv.bias.value = jax.random.normal(jax.random.key(9), (16,))
  x = jax.random.normal(jax.random.key(1), (2, 11, 16))
  np.testing.assert_allclose(depthwise_conv1d(x, conv.kernel[...], conv.bias[...]), conv(x), atol=1e-6)
  bf16 = nnx.Conv(16, 16, (taps,), padding="SAME", feature_group_count=16, dtype=jnp.bfloat16, rngs=nnx.Rngs(taps))
  got = depthwise_conv1d(x.astype(jnp.bfloat16), bf16.kernel[...], bf16.bias[...])
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), bf16(x).astype(jnp.float32), atol=0.05)


def test_attention_kernel_setting(monkeypatch):
  """config.model.attention: "auto" is XLA's einsums off a GPU; an unknown name is one clear error; and the cuDNN
  branch's call (layout [B, N, heads, head_dim], default scale) computes what the einsum branch does; checked
  here through jax.nn.dot_product_attention's XLA implementation, the same function cuDNN's kernel computes."""
  from playmate_jax.generator import dit
  config = get_config("tiny")
  cfg = config.model
  assert jax.default_backend() != "gpu" and dit.attention_kernel(cfg) == "xla"
  cfg.attention = "flash"
  with pytest.raises(UserError, match="config.model.attention='flash'"):
    configlib.validate(config)
  attn = dit.SelfAttention(32, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 9, 32))
  want = attn(x)
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda q, k, v, implementation: real(q, k, v, implementation="xla"))
  attn.kernel = "cudnn"
  np.testing.assert_allclose(attn(x), want, atol=1e-5)
  np.testing.assert_allclose(attn(x[:, ::-1]), want[:, ::-1], atol=1e-5)  # no mask: order-equivariant


@pytest.mark.parametrize("lookahead", [0, 2])
def test_a_live_model_sees_the_audio_only_its_lookahead_ahead(lookahead):
  """audio_lookahead = A: frame j's output depends on audio up to frame j + A and on the noisy motion up to frame j,
  never later (causal attention, causal temporal convolutions, the audio convolution's right context A); stage 2's
  controller too. The offline model's frame j does change with later audio."""
  cfg = get_config("tiny_live")
  l, k, c = cfg.data.window, cfg.data.prev_frames, cfg.data.audio_context
  cfg.model.audio_lookahead = lookahead
  model = perturb(MotionDiT(cfg.model, audio_dim=D, audio_context=c, emotion_depth=1, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  inp = dict(x_t=normal(1, l, 69), t=jnp.array([37], jnp.int32), audio=normal(1, l + 2 * c, D),
             audio_keep=jnp.ones((1,), bool), prev=normal(1, k, 69), identity=normal(1, 132),
             emotion=jnp.array([3], jnp.int32))
  base = np.asarray(run(model, inp))
  j = 3
  later_audio = inp["audio"].at[:, c + j + lookahead + 1:].add(5.0)   # audio frames after j + A
  later_motion = inp["x_t"].at[:, j + 1:].add(5.0)
  for changed in (run(model, inp, audio=later_audio), run(model, inp, x_t=later_motion)):
    changed = np.asarray(changed)
    np.testing.assert_allclose(changed[:, :j + 1], base[:, :j + 1], atol=1e-5)
    assert np.abs(changed[:, j + 1:] - base[:, j + 1:]).max() > 1e-3
  at_lookahead = np.asarray(run(model, inp, audio=inp["audio"].at[:, c + j + lookahead].add(5.0)))
  assert np.abs(at_lookahead[:, j] - base[:, j]).max() > 1e-3   # frame j + A itself is seen
  offline = get_config("tiny_live")
  offline.model.audio_lookahead = -1
  model = perturb(MotionDiT(offline.model, audio_dim=D, audio_context=c, rngs=nnx.Rngs(0)))
  inp.pop("emotion")
  base = np.asarray(run(model, inp))
  assert np.abs(np.asarray(run(model, inp, audio=later_audio))[:, :j + 1] - base[:, :j + 1]).max() > 1e-3
