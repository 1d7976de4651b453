"""Motion generator: the motion DiT and its emotion controller, the diffusion schedule and loss, and the samplers."""

from playmate_jax.generator.diffusion import Diffusion, training_loss
from playmate_jax.generator.dit import (EMOTION_PARAMS, NULL_EMOTION, EmotionController, MotionDiT, count_params,
                                        sinusoidal_embedding)
from playmate_jax.generator.sampling import (WindowSampler, ddim_sample, ddim_timesteps, guided_eps, sample_sequence,
                                             sample_window, window_eps_fn)

__all__ = [
    "Diffusion", "EMOTION_PARAMS", "EmotionController", "MotionDiT", "NULL_EMOTION", "WindowSampler", "count_params",
    "ddim_sample", "ddim_timesteps", "guided_eps", "sample_sequence", "sample_window",
    "sinusoidal_embedding", "training_loss", "window_eps_fn",
]
