"""The motion model and its window sampler built from a run's config: what training, sampling, animation,
evaluation and the benchmarks share. Light to import (no data pipeline, no optimizer)."""

from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from playmate_jax.generator.diffusion import Diffusion
from playmate_jax.generator.dit import MotionDiT
from playmate_jax.generator.sampling import WindowSampler
from playmate_jax.shapes import abstract_module


def model_factory(config: ml_collections.ConfigDict, audio_dim: int) -> Callable[[nnx.Rngs], MotionDiT]:
  """rngs -> MotionDiT for this config and audio feature size (with the emotion controller in stage 2)."""
  depth = config.emotion.depth if config.stage == 2 else 0
  return lambda rngs: MotionDiT(config.model, audio_dim=audio_dim, audio_context=config.data.audio_context,
                                emotion_depth=depth, rngs=rngs)


def init_params(model_fn: Callable[[nnx.Rngs], nnx.Module], key: jax.Array) -> dict:
  """The module's initialized parameters as a pure dict of arrays (float32): what training starts from."""
  return nnx.to_pure_dict(nnx.state(model_fn(nnx.Rngs(params=key)), nnx.Param))


def model_graphdef(model_fn: Callable[[nnx.Rngs], nnx.Module]) -> Any:
  """The module's static structure (nnx.GraphDef), built without allocating parameters."""
  return nnx.graphdef(abstract_module(model_fn))


def window_sampler(config: ml_collections.ConfigDict, audio_dim: int) -> WindowSampler:
  """The jitted DDIM + guidance sampler of this config's model (params are an argument of each call): what
  sampling, animation, evaluation and the sample benchmark use."""
  graphdef = model_graphdef(model_factory(config, audio_dim))
  return WindowSampler(graphdef, Diffusion.from_config(config.diffusion), config)
