"""Convert LivePortrait's appearance_feature_extractor.pth into AppearanceFeatureExtractor parameters.

Also holds the permutation the warping converter shares, from PyTorch's channel-major (c * D + d) to our
depth-major (d * C + c) order where depth is folded into channels. Every expected shape comes from the model
config, so a checkpoint of other sizes fails on the first tensor that disagrees.
"""

from typing import Any, Mapping

import numpy as np

from playmate_jax.convert.common import SourceDict, take_batchnorm, take_conv, take_conv_bn
from playmate_jax.renderer.appearance import appearance_channels

def depth_major(array: np.ndarray, axis: int, channels: int, depth: int) -> np.ndarray:
  """Reorder `axis` (size channels * depth) from PyTorch's index c * depth + d to d * channels + c."""
  axis = axis % array.ndim
  shape = array.shape
  split = array.reshape(shape[:axis] + (channels, depth) + shape[axis + 1:])
  return np.ascontiguousarray(np.swapaxes(split, axis, axis + 1).reshape(shape))


def convert(source: SourceDict, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """appearance_feature_extractor.pth (as a SourceDict) -> AppearanceFeatureExtractor's pure-dict params."""
  be, max_features = int(cfg["block_expansion"]), int(cfg["max_features"])
  channel, depth = int(cfg["reshape_channel"]), int(cfg["reshape_depth"])
  down = appearance_channels(cfg)
  params: dict[str, Any] = {
      "first": {"conv": take_conv_bn(source, "first.conv", "first.norm", int(cfg.get("image_channel", 3)), be,
                                     3, 2)},
      "down_blocks": {i: {"conv": take_conv_bn(source, f"down_blocks.{i}.conv", f"down_blocks.{i}.norm",
                                               c_in, c_out, 3, 2)}
                      for i, (c_in, c_out) in enumerate(down)},
  }
  second = take_conv(source, "second", down[-1][1] if down else be, max_features, 1, 2)
  params["second"] = {"kernel": depth_major(second["kernel"], -1, channel, depth),
                      "bias": depth_major(second["bias"], 0, channel, depth)}
  params["resblocks_3d"] = {}
  for i in range(int(cfg["num_resblocks"])):
    prefix = f"resblocks_3d.3dr{i}"
    scale, shift = take_batchnorm(source, f"{prefix}.norm1", channel)
    params["resblocks_3d"][i] = {
        "norm1": {"scale": scale, "shift": shift},
        "conv1": take_conv_bn(source, f"{prefix}.conv1", f"{prefix}.norm2", channel, channel, 3, 3),
        "conv2": take_conv(source, f"{prefix}.conv2", channel, channel, 3, 3),
    }
  source.finish()
  return params
