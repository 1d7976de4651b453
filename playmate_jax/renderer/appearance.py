"""LivePortrait's appearance feature extractor F: a source portrait -> a 3-D appearance feature volume.

2-D convolutions bring the [B, H, W, 3] image to [B, H/4, W/4, max_features] (for two down blocks); the
channels are then read as reshape_depth x reshape_channel, giving the volume [B, D, H/4, W/4, C] that the
warping module W deforms, and 3-D residual blocks refine it.

Layout note: PyTorch views its 512 channels as (C, D), channel index c * D + d. Here the order is depth-major,
d * C + c, so that the reshape to channels-last NDHWC is one cheap transpose moving whole C-vectors; the
converter permutes the output channels of `second` accordingly, which gives the same numbers.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax.errors import UserError
from playmate_jax.renderer.layers import DownBlock2d, ResBlock3d, SameBlock2d, conv


def appearance_channels(cfg: Mapping[str, Any]) -> list[tuple[int, int]]:
  """(in, out) channels of F's down blocks."""
  be, mf = cfg["block_expansion"], cfg["max_features"]
  return [(min(mf, be * 2 ** i), min(mf, be * 2 ** (i + 1))) for i in range(cfg["num_down_blocks"])]


class AppearanceFeatureExtractor(nnx.Module):
  """image [B, H, W, 3] in [0, 1] -> feature_3d [B, reshape_depth, H', W', reshape_channel]."""

  def __init__(self, cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.reshape_channel = int(cfg["reshape_channel"])
    self.reshape_depth = int(cfg["reshape_depth"])
    max_features = int(cfg["max_features"])
    if self.reshape_channel * self.reshape_depth != max_features:
      raise UserError(f"appearance_feature_extractor_params: reshape_channel ({self.reshape_channel}) x "
                      f"reshape_depth ({self.reshape_depth}) must equal max_features ({max_features}); fix "
                      "models.yaml.")
    self.dtype = dtype
    be = int(cfg["block_expansion"])
    down = appearance_channels(cfg)
    self.first = SameBlock2d(int(cfg.get("image_channel", 3)), be, dtype=dtype, rngs=rngs)
    self.down_blocks = nnx.List([DownBlock2d(i, o, dtype=dtype, rngs=rngs) for i, o in down])
    self.second = conv(down[-1][1] if down else be, max_features, 1, 2, dtype=dtype, rngs=rngs)
    self.resblocks_3d = nnx.List([ResBlock3d(self.reshape_channel, dtype=dtype, rngs=rngs)
                                  for _ in range(int(cfg["num_resblocks"]))])

  def __call__(self, image: jax.Array) -> jax.Array:
    out = self.first(image.astype(self.dtype))
    for block in self.down_blocks:
      out = block(out)
    out = self.second(out)                                          # [B, h, w, D*C], depth-major
    b, h, w, _ = out.shape
    out = out.reshape(b, h, w, self.reshape_depth, self.reshape_channel).transpose(0, 3, 1, 2, 4)
    for block in self.resblocks_3d:
      out = block(out)
    return out
