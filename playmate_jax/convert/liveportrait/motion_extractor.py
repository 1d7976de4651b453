"""LivePortrait's motion_extractor.pth (keys `detector.*`) -> params of renderer.motion_extractor.MotionExtractor.

Convs go from OIHW to HWIO (the depthwise 7x7 convs to [7, 7, 1, C]), Linear weights are transposed, GRN's
[1, 1, 1, C] gamma/beta become [C], LayerNorm weight/bias become scale/bias.
"""

from typing import Any, Mapping

from playmate_jax.convert.common import SourceDict, conv_kernel, linear_kernel
from playmate_jax.renderer.motion_extractor import HEADS, NUM_BINS, backbone_sizes

PREFIX = "detector."


def _conv(source: SourceDict, key: str, cout: int, cin: int, k: int) -> dict[str, Any]:
  return {"kernel": conv_kernel(source.take(f"{key}.weight", (cout, cin, k, k))),
          "bias": source.take(f"{key}.bias", (cout,))}


def _linear(source: SourceDict, key: str, cout: int, cin: int) -> dict[str, Any]:
  return {"kernel": linear_kernel(source.take(f"{key}.weight", (cout, cin))),
          "bias": source.take(f"{key}.bias", (cout,))}


def _norm(source: SourceDict, key: str, dim: int) -> dict[str, Any]:
  return {"scale": source.take(f"{key}.weight", (dim,)), "bias": source.take(f"{key}.bias", (dim,))}


def _block(source: SourceDict, key: str, dim: int) -> dict[str, Any]:
  return {
      "dwconv": _conv(source, f"{key}.dwconv", dim, 1, 7),
      "norm": _norm(source, f"{key}.norm", dim),
      "pwconv1": _linear(source, f"{key}.pwconv1", 4 * dim, dim),
      "grn": {"gamma": source.take(f"{key}.grn.gamma", (1, 1, 1, 4 * dim)).reshape(4 * dim),
              "beta": source.take(f"{key}.grn.beta", (1, 1, 1, 4 * dim)).reshape(4 * dim)},
      "pwconv2": _linear(source, f"{key}.pwconv2", dim, 4 * dim),
  }


def convert(source: SourceDict, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Params of MotionExtractor(cfg) from the state dict in `source`; every key is used exactly once."""
  depths, dims = backbone_sizes(cfg)
  num_kp = int(cfg.get("num_kp", 24))
  num_bins = int(cfg.get("num_bins", NUM_BINS))
  in_chans = int(cfg.get("in_chans", 3))
  p = PREFIX
  down = {0: {"conv": _conv(source, f"{p}downsample_layers.0.0", dims[0], in_chans, 4),
              "norm": _norm(source, f"{p}downsample_layers.0.1", dims[0])}}
  for i in range(1, 4):
    down[i] = {"norm": _norm(source, f"{p}downsample_layers.{i}.0", dims[i - 1]),
               "conv": _conv(source, f"{p}downsample_layers.{i}.1", dims[i], dims[i - 1], 2)}
  stages = {i: {j: _block(source, f"{p}stages.{i}.{j}", dims[i]) for j in range(depths[i])} for i in range(4)}
  params = {"downsample_layers": down, "stages": stages, "norm": _norm(source, f"{p}norm", dims[-1])}
  sizes = {"pitch": num_bins, "yaw": num_bins, "roll": num_bins, "t": 3, "exp": 3 * num_kp, "scale": 1,
           "kp": 3 * num_kp}
  for name in HEADS:
    params[f"fc_{name}"] = _linear(source, f"{p}fc_{name}", sizes[name], dims[-1])
  source.finish()
  return params
