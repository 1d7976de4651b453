"""LivePortrait's motion_extractor.pth (keys `detector.*`) -> params of renderer.motion_extractor.MotionExtractor.

Convs go from OIHW to HWIO (the depthwise 7x7 convs to [7, 7, 1, C]), Linear weights are transposed, GRN's
[1, 1, 1, C] gamma/beta become [C], LayerNorm weight/bias become scale/bias.
"""

from typing import Any, Mapping

from playmate_jax.convert.common import SourceDict, take_conv, take_layer_norm, take_linear
from playmate_jax.renderer.motion_extractor import backbone_sizes, head_sizes

PREFIX = "detector."


def _block(source: SourceDict, key: str, dim: int) -> dict[str, Any]:
  return {
      "dwconv": take_conv(source, f"{key}.dwconv", 1, dim, 7),
      "norm": take_layer_norm(source, f"{key}.norm", dim),
      "pwconv1": take_linear(source, f"{key}.pwconv1", dim, 4 * dim),
      "grn": {"gamma": source.take(f"{key}.grn.gamma", (1, 1, 1, 4 * dim)).reshape(4 * dim),
              "beta": source.take(f"{key}.grn.beta", (1, 1, 1, 4 * dim)).reshape(4 * dim)},
      "pwconv2": take_linear(source, f"{key}.pwconv2", 4 * dim, dim),
  }


def convert(source: SourceDict, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Params of MotionExtractor(cfg) from the state dict in `source`; every key is used exactly once."""
  depths, dims = backbone_sizes(cfg)
  in_chans = int(cfg.get("in_chans", 3))
  p = PREFIX
  down = {0: {"conv": take_conv(source, f"{p}downsample_layers.0.0", in_chans, dims[0], 4),
              "norm": take_layer_norm(source, f"{p}downsample_layers.0.1", dims[0])}}
  for i in range(1, 4):
    down[i] = {"norm": take_layer_norm(source, f"{p}downsample_layers.{i}.0", dims[i - 1]),
               "conv": take_conv(source, f"{p}downsample_layers.{i}.1", dims[i - 1], dims[i], 2)}
  stages = {i: {j: _block(source, f"{p}stages.{i}.{j}", dims[i]) for j in range(depths[i])} for i in range(4)}
  params = {"downsample_layers": down, "stages": stages, "norm": take_layer_norm(source, f"{p}norm", dims[-1])}
  for name, size in head_sizes(cfg).items():
    params[f"fc_{name}"] = take_linear(source, f"{p}fc_{name}", dims[-1], size)
  source.finish()
  return params
