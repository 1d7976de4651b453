"""DDIM sampling with classifier-free guidance on audio (stage 1) or on audio and emotion (stage 2), and
window-by-window sampling of long audio."""

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm
from flax import nnx

from playmate_jax.generator.diffusion import Diffusion
from playmate_jax.generator.dit import MOTION_DIM, NULL_EMOTION

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]   # (x_t [B,...], t [B] int32, step index) -> eps


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` timesteps T/steps apart, descending to 0 (int32): DDIM's original "leading" spacing.

  It starts at (steps - 1) * T / steps rather than at T - 1: at the very last timestep alpha_bar is ~0 and an
  eps-prediction model's x0 estimate there is all error. 1 <= steps <= num_timesteps (configlib.validate checks
  config.sample.ddim_steps).
  """
  return (np.arange(steps)[::-1] * num_timesteps // steps).astype(np.int32)


def ddim_sample(eps_fn: EpsFn, diffusion: Diffusion, x_T: jax.Array, key: jax.Array, timesteps: np.ndarray,
                eta: float, clip_x0: float = 0.0) -> jax.Array:
  """DDIM (Song et al. 2021) from x_T through `timesteps` (descending) to the predicted x0; eta=0 deterministic.

  eps_fn(x, t, i) predicts the noise at step i (an int32 scalar), whose timestep t = timesteps[i] it also gets as a
  [B] vector: the index lets it look up what it computed for every step before the loop.

  The last step goes to alpha_bar = 1, so it returns the model's x0 estimate there. With clip_x0 > 0 each step's x0
  estimate is clipped to [-clip_x0, clip_x0] and eps re-derived from it. This matters at the noisiest steps: there
  alpha_bar is tiny (about 2e-9 at the cosine schedule's last step), x0 = (x - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
  multiplies the model's eps error by 1/sqrt(alpha_bar), and the unclipped error carries into every later step.
  """
  ts = jnp.asarray(timesteps, jnp.int32)
  ts_next = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
  ab = diffusion.alphas_cumprod
  batch = x_T.shape[0]

  def step(i, x):
    a_t = ab[ts[i]]
    a_next = jnp.where(ts_next[i] >= 0, ab[jnp.maximum(ts_next[i], 0)], 1.0)
    eps = eps_fn(x, jnp.full((batch,), ts[i], jnp.int32), i).astype(jnp.float32)
    x0 = (x - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    if clip_x0 > 0:
      x0 = jnp.clip(x0, -clip_x0, clip_x0)
      eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    sigma = eta * jnp.sqrt((1.0 - a_next) / (1.0 - a_t) * (1.0 - a_t / a_next))
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
    direction = jnp.sqrt(jnp.maximum(1.0 - a_next - sigma ** 2, 0.0)) * eps
    return jnp.sqrt(a_next) * x0 + direction + sigma * noise

  return jax.lax.fori_loop(0, len(timesteps), step, x_T.astype(jnp.float32))


def _guidance_batch(b: int, n: int, emotion: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
  """The stacked batch's audio_keep [n b] and emotions [n b] (None without emotion): n = 3 terms (a, e), (a, 0),
  (0, 0); n = 2: (a), (0); n = 1: the conditional model alone."""
  keep = jnp.repeat(jnp.arange(n) < max(n - 1, 1), b)    # audio kept in every term but the last (n > 1)
  if emotion is None:
    return keep, None
  emotion = emotion.astype(jnp.int32)
  null = jnp.full((b,), NULL_EMOTION, jnp.int32)
  return keep, jnp.concatenate([emotion] + [null] * (n - 1)) if n > 1 else emotion


def _combine(eps: jax.Array, w_audio: jax.Array | None, w_emotion: jax.Array | None) -> jax.Array:
  """The guided eps from the n stacked terms eps [n, B, ...] (see _guidance_batch)."""
  if eps.shape[0] == 1:
    return eps[0]
  guided = eps[-1] + w_audio * (eps[-2] - eps[-1])
  return guided if eps.shape[0] == 2 else guided + w_emotion * (eps[0] - eps[1])


def guided_eps(model: Any, x: jax.Array, t: jax.Array, audio: jax.Array, prev: jax.Array, identity: jax.Array,
               w_audio: jax.Array, emotion: jax.Array | None = None, w_emotion: jax.Array | None = None) -> jax.Array:
  """Classifier-free guidance, all terms from one model call on the stacked batch.

  Without emotion: eps(0) + w_a [eps(a) - eps(0)] (doubled batch). With emotion [B] int (stage 2):
  eps(0,0) + w_a [eps(a,0) - eps(0,0)] + w_e [eps(a,e) - eps(a,0)] (tripled batch), 0 the null condition.
  """
  n = 2 if emotion is None else 3
  stack = lambda a: jnp.concatenate([a] * n, axis=0)
  keep, emotions = _guidance_batch(x.shape[0], n, emotion)
  eps = model(stack(x), stack(t), stack(audio), keep, stack(prev), stack(identity), emotions).reshape(n, *x.shape)
  return _combine(eps, w_audio, w_emotion)


def window_eps_fn(model: Any, audio: jax.Array, prev: jax.Array, identity: jax.Array, timesteps: np.ndarray,
                  w_audio: jax.Array | None, emotion: jax.Array | None = None,
                  w_emotion: jax.Array | None = None) -> EpsFn:
  """ddim_sample's eps_fn for one window: guided_eps (w_audio None: the conditional model alone) at each of
  `timesteps`, with what does not depend on x computed here, once: the window's audio and previous-motion tokens,
  and the adaLN modulations of every step (they depend on the timestep and identity alone). The DDIM loop then runs
  only the blocks themselves (MotionDiT.predict).
  """
  b, steps = audio.shape[0], len(timesteps)
  n = 1 if w_audio is None else 2 if emotion is None else 3
  stack = lambda a: jnp.concatenate([a] * n, axis=0)
  keep, emotions = _guidance_batch(b, n, emotion)
  tokens = model.condition_tokens(stack(audio), keep, stack(prev))
  t_all = jnp.repeat(jnp.asarray(timesteps, jnp.int32), b)                       # [steps * B], step-major
  mods = [m.reshape(steps, b, -1) for m in model.modulations(model.condition(t_all, jnp.tile(identity, (steps, 1))))]

  def eps_fn(x, t, i):
    del t   # mods[.][i] holds it
    eps = model.predict(stack(x), tokens, tuple(stack(m[i]) for m in mods), emotions).reshape(n, *x.shape)
    return _combine(eps, w_audio, w_emotion)

  return eps_fn


def sample_window(model: Any, diffusion: Diffusion, audio: jax.Array, prev: jax.Array, identity: jax.Array,
                  key: jax.Array, w_audio: jax.Array | None, timesteps: np.ndarray, eta: float,
                  clip_x0: float = 0.0, emotion: jax.Array | None = None,
                  w_emotion: jax.Array | None = None) -> jax.Array:
  """x0 [B, L, 69] for one window by DDIM; w_audio None samples the conditional model alone (no CFG).

  emotion [B] int (NULL_EMOTION: none) conditions a stage-2 model, guided with w_emotion; None: no emotion.
  """
  b, l = audio.shape[0], audio.shape[1] - 2 * model.audio_context
  k_init, k_steps = jax.random.split(key)
  x_T = jax.random.normal(k_init, (b, l, MOTION_DIM), jnp.float32)
  eps_fn = window_eps_fn(model, audio, prev, identity, timesteps, w_audio, emotion, w_emotion)
  return ddim_sample(eps_fn, diffusion, x_T, k_steps, timesteps, eta, clip_x0)


def compute_dtype_weights(model: nnx.Module) -> nnx.Module:
  """`model` (merged inside a traced function) with the kernel and bias of every nnx.Linear / nnx.Conv that computes
  in its own dtype (bfloat16) stored in that dtype. The layers cast them on every call anyway, so the numbers are
  the same; cast here, before the DDIM loop, they are cast once per call instead of at every step (XLA left those
  casts inside the loop: about a sixth of the paper-scale sampling time on an H200, `benchmark.py sample --profile`).
  """
  for _, module in nnx.iter_modules(model):
    if isinstance(module, (nnx.Linear, nnx.Conv)) and module.dtype is not None:
      for name in ("kernel", "bias"):
        param = getattr(module, name, None)
        if param is not None and param[...].dtype != module.dtype:
          param.value = param[...].astype(module.dtype)
  return model


class WindowSampler:
  """Windows of motion by DDIM + CFG, jitted once for fixed shapes; params are an argument.

  __call__(params, audio [B,L+2c,D], prev [B,K,69], identity [B,132], key, w_audio, emotion=None, w_emotion=0.0)
  -> x0 [B,L,69] float32: one window; emotion [B] int guides a stage-2 model (three-way guidance), None does not
  (two-way). `windows(...)` runs up to `max_windows` consecutive windows in one call, each conditioned on the last
  K frames of the one before, without returning to the host in between (what `sample_sequence` uses).
  `num_traces` counts the traces (compilations) of the jitted functions: one per shape, and per emotion or not.
  `config` is one that configlib.validate passed (ddim_steps, eta and windows_per_call in range).
  """

  def __init__(self, graphdef: Any, diffusion: Diffusion, config: Any):
    self.graphdef = graphdef
    self.diffusion = diffusion
    self.timesteps = ddim_timesteps(diffusion.num_timesteps, config.sample.ddim_steps)
    self.eta = float(config.sample.eta)
    self.clip_x0 = float(config.sample.clip_x0)
    self.window, self.prev_frames = int(config.data.window), int(config.data.prev_frames)
    self.max_windows = int(config.sample.windows_per_call)
    self.num_traces = 0
    self._jitted = jax.jit(self._sample)
    self._jitted_windows = jax.jit(self._sample_windows)

  def _window(self, model, audio, prev, identity, key, w_audio, emotion, w_emotion):
    return sample_window(model, self.diffusion, audio, prev, identity, key, w_audio, self.timesteps, self.eta,
                         self.clip_x0, emotion, w_emotion)

  def _sample(self, params, audio, prev, identity, key, w_audio, emotion, w_emotion):
    self.num_traces += 1
    model = compute_dtype_weights(nnx.merge(self.graphdef, params))
    return self._window(model, audio, prev, identity, key, w_audio, emotion, w_emotion)

  def _sample_windows(self, params, audio, prev, identity, key, first, count, w_audio, emotion, w_emotion):
    self.num_traces += 1
    model = compute_dtype_weights(nnx.merge(self.graphdef, params))
    l, k, c = self.window, self.prev_frames, model.audio_context
    out = jnp.zeros((audio.shape[0], self.max_windows * l, MOTION_DIM), jnp.float32)

    def body(j, carry):
      prev, out = carry
      window_audio = jax.lax.dynamic_slice_in_dim(audio, j * l, l + 2 * c, axis=1)
      x0 = self._window(model, window_audio, prev, identity, jax.random.fold_in(key, first + j), w_audio,
                        emotion, w_emotion)
      history = jnp.concatenate([prev, x0], axis=1)
      return history[:, history.shape[1] - k:], jax.lax.dynamic_update_slice_in_dim(out, x0, j * l, axis=1)

    prev, out = jax.lax.fori_loop(0, count, body, (prev, out))
    return out, prev

  def __call__(self, params: Any, audio: Any, prev: Any, identity: Any, key: jax.Array, w_audio: float | jax.Array,
               emotion: Any = None, w_emotion: float | jax.Array = 0.0) -> jax.Array:
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    emotion = None if emotion is None else jnp.asarray(emotion, jnp.int32)
    return self._jitted(params, f32(audio), f32(prev), f32(identity), key, f32(w_audio), emotion, f32(w_emotion))

  def windows(self, params: Any, audio: Any, prev: Any, identity: Any, key: jax.Array, first: int, count: int,
              w_audio: float | jax.Array, emotion: Any = None,
              w_emotion: float | jax.Array = 0.0) -> tuple[jax.Array, jax.Array]:
    """Windows first .. first+count-1 of a sequence (count <= max_windows), in one device call.

    audio [B, max_windows*L + 2c, D] holds those windows' audio with c frames of context on each side (zeros past
    the end); prev [B, K, 69] is the motion before window `first`. Window j uses key fold_in(key, first + j), as
    the one-window call would. Returns (x0 [B, max_windows*L, 69], of which the first count*L frames are real,
    and the last K frames generated, the next call's prev); both stay on the device.
    """
    if not 1 <= count <= self.max_windows:
      raise ValueError(f"count={count} must be between 1 and max_windows={self.max_windows}")
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    emotion = None if emotion is None else jnp.asarray(emotion, jnp.int32)
    return self._jitted_windows(params, f32(audio), f32(prev), f32(identity), key, jnp.int32(first),
                                jnp.int32(count), f32(w_audio), emotion, f32(w_emotion))


def sample_sequence(window_sampler: WindowSampler, params: Any, audio_features: Any, identity: Any, key: jax.Array,
                    config: Any, *, w_audio: float | None = None, emotion: Any = None,
                    w_emotion: float | None = None, progress: bool = False) -> np.ndarray:
  """Normalized motion for a whole clip, window by window; memory stays flat for any length.

  audio_features: normalized features [T, D] (or [B, T, D] for B independent sequences); identity: [132]
  (or [B, 132]); emotion: None, or for a stage-2 model an int (or [B] ints; NULL_EMOTION: none) guided with
  w_emotion (default config.sample.w_emotion). Window i covers frames [iL, iL+L) with audio of frames
  [iL-c, iL+L+c), zeros outside the clip; its previous motion is the last K frames generated before it, the source
  motion (identity[:69]) repeated K times for the first window. Returns numpy float32 [T, 69] (or [B, T, 69]).
  """
  l, k, c = config.data.window, config.data.prev_frames, config.data.audio_context
  w = config.sample.w_audio if w_audio is None else w_audio
  w_e = 0.0 if emotion is None else config.sample.w_emotion if w_emotion is None else w_emotion
  audio = np.asarray(audio_features, np.float32)
  ident = np.asarray(identity, np.float32)
  single = audio.ndim == 2
  if single:
    audio, ident = audio[None], ident[None]
  if audio.ndim != 3 or ident.shape != (audio.shape[0], ident.shape[-1]) or ident.shape[-1] < MOTION_DIM:
    raise ValueError(f"audio_features {np.shape(audio_features)} and identity {np.shape(identity)} must be "
                     "[T, D] and [132], or [B, T, D] and [B, 132].")
  b, t, d = audio.shape
  if emotion is not None:
    emotion = np.broadcast_to(np.asarray(emotion, np.int32), (b,))
  n = math.ceil(t / l)
  per_call = window_sampler.max_windows  # windows generated per device call, with no host round trip between
  padded = np.zeros((b, math.ceil(n / per_call) * per_call * l + 2 * c, d), np.float32)
  padded[:, c:c + t] = audio
  prev = np.repeat(ident[:, None, :MOTION_DIM], k, axis=1)
  parts = []
  bar = None
  if progress:
    bar = tqdm(total=n, desc="sampling windows", unit="window")
  for first in range(0, n, per_call):
    count = min(per_call, n - first)
    s = first * l
    x0, prev = window_sampler.windows(params, padded[:, s:s + per_call * l + 2 * c], prev, ident, key, first, count,
                                      w, emotion, w_e)
    parts.append((x0, count))   # a windows() call's x0 holds max_windows * L frames: cut to count * L on the host
                                # below (a device slice per count would be a program of its own)
    if bar is not None:
      jax.block_until_ready(x0)
      bar.update(count)
  if bar is not None:
    bar.close()
  out = np.concatenate([np.asarray(jax.device_get(x0), np.float32)[:, :count * l] for x0, count in parts],
                       axis=1)[:, :t]
  return out[0] if single else out
