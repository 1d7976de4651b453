"""DDPM noise schedule and the training loss (noise prediction MSE) of both stages."""

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from playmate_jax.generator.dit import NULL_EMOTION
from playmate_jax.motion import EXP_DIM


def _cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)."""
  f = np.cos((np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


@flax.struct.dataclass
class Diffusion:
  """Schedule arrays (float32, [num_timesteps]); index t = 0 is the least noisy step."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  @classmethod
  def from_config(cls, diffusion_cfg: Any) -> "Diffusion":
    """The schedule of config.diffusion, as `configlib.validate` passed it (not checked again here)."""
    n = diffusion_cfg.num_timesteps
    if diffusion_cfg.schedule == "cosine":
      betas = _cosine_betas(n)
    else:  # "linear", the one other schedule configlib.SCHEDULES holds
      betas = np.linspace(diffusion_cfg.beta_start, diffusion_cfg.beta_end, n, dtype=np.float64)
    ab = np.cumprod(1.0 - betas)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(betas=f32(betas), alphas_cumprod=f32(ab), sqrt_alphas_cumprod=f32(np.sqrt(ab)),
               sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ab)))

  def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; t [B] int, x0 [B, ...]."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return (self.sqrt_alphas_cumprod[t].reshape(shape) * x0
            + self.sqrt_one_minus_alphas_cumprod[t].reshape(shape) * noise)


def training_loss(model: Any, batch: dict, key: jax.Array, diffusion: Diffusion, model_cfg: Any,
                  emotion_drop_prob: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Noise-prediction MSE over frames and the 69 dims; also the expression and pose parts separately.

  batch: 'motion' [B,L,69], 'prev_motion' [B,K,69], 'audio' [B,L+2c,D], 'identity' [B,132], and for a model with
  an emotion controller 'emotion' [B] int (-1: unknown); extra keys are ignored. Pure over (model, batch, key):
  audio is dropped per sample with model_cfg.audio_drop_prob, the emotion (to the null embedding) with
  emotion_drop_prob, and the previous motion is noised with model_cfg.prev_noise_std.
  """
  x0 = batch["motion"].astype(jnp.float32)
  b = x0.shape[0]
  k_t, k_noise, k_drop, k_prev, k_dropout, k_emotion = jax.random.split(key, 6)
  t = jax.random.randint(k_t, (b,), 0, diffusion.num_timesteps)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  audio_keep = jax.random.uniform(k_drop, (b,)) >= model_cfg.audio_drop_prob
  prev = batch["prev_motion"].astype(jnp.float32)
  prev = prev + model_cfg.prev_noise_std * jax.random.normal(k_prev, prev.shape, jnp.float32)
  emotion = None
  if model.emotion is not None:
    emotion_keep = jax.random.uniform(k_emotion, (b,)) >= emotion_drop_prob
    emotion = jnp.where(emotion_keep, batch["emotion"].astype(jnp.int32), NULL_EMOTION)
  eps = model(diffusion.q_sample(x0, t, noise), t, batch["audio"], audio_keep, prev, batch["identity"], emotion,
              dropout_key=k_dropout if model_cfg.dropout > 0 else None)
  err = jnp.square(eps - noise)
  loss_exp = err[..., :EXP_DIM].mean()
  loss_pose = err[..., EXP_DIM:].mean()
  return err.mean(), {"loss_exp": loss_exp, "loss_pose": loss_pose}
