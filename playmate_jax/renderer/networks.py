"""All of LivePortrait's networks in one NNX module, with the converted-weights layout as its state.

The attribute names are the converted params' top-level keys (and LivePortrait's config names), so
`nnx.to_pure_dict(nnx.state(LivePortraitNetworks(...), nnx.Param))` has exactly the layout that
`playmate_jax.convert.liveportrait` writes.
"""

from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from playmate_jax import shapes
from playmate_jax.renderer.appearance import AppearanceFeatureExtractor
from playmate_jax.renderer.motion_extractor import MotionExtractor
from playmate_jax.renderer.spade import SPADEDecoder
from playmate_jax.renderer.stitching import StitchingRetargeting
from playmate_jax.renderer.warping import WarpingNetwork
from playmate_jax.shapes import abstract_module


class LivePortraitNetworks(nnx.Module):
  """F, M, W, G and the stitching/retargeting MLPs, sized by `model_params` (models.yaml's layout)."""

  def __init__(self, model_params: Mapping[str, Any], *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    p = model_params
    self.appearance_feature_extractor = AppearanceFeatureExtractor(
        p["appearance_feature_extractor_params"], dtype=dtype, rngs=rngs)
    self.motion_extractor = MotionExtractor(p["motion_extractor_params"], dtype=dtype, rngs=rngs)
    self.warping_module = WarpingNetwork(p["warping_module_params"], dtype=dtype, rngs=rngs)
    self.spade_generator = SPADEDecoder(p["spade_generator_params"], dtype=dtype, rngs=rngs)
    self.stitching_retargeting_module = StitchingRetargeting(
        p["stitching_retargeting_module_params"], dtype=dtype, rngs=rngs)


def abstract_networks(model_params: Mapping[str, Any], dtype: Any = jnp.float32) -> LivePortraitNetworks:
  """The networks with shapes only (nothing allocated or initialized)."""
  return abstract_module(lambda rngs: LivePortraitNetworks(model_params, dtype=dtype, rngs=rngs))


def abstract_params(model_params: Mapping[str, Any]) -> dict[str, Any]:
  """The parameter tree (pure dict of ShapeDtypeStructs) the converted weights must cover exactly."""
  return shapes.abstract_params(abstract_networks(model_params))


def networks_with_params(model_params: Mapping[str, Any], params: Mapping[str, Any],
                         dtype: Any = jnp.float32) -> LivePortraitNetworks:
  """The networks holding `params` (converted or random weights), built without a wasted initialization."""
  return shapes.with_params(abstract_networks(model_params, dtype), params)
