"""Motion generator: the motion DiT, its diffusion schedule and loss, and the samplers."""

from playmate_jax.generator.diffusion import Diffusion, training_loss
from playmate_jax.generator.dit import MotionDiT, count_params, sinusoidal_embedding
from playmate_jax.generator.sampling import (WindowSampler, ddim_sample, ddim_timesteps, guided_eps,
                                             make_window_sampler, sample_sequence, sample_window)

__all__ = [
    "Diffusion", "MotionDiT", "WindowSampler", "count_params", "ddim_sample", "ddim_timesteps", "guided_eps",
    "make_window_sampler", "sample_sequence", "sample_window", "sinusoidal_embedding", "training_loss",
]
