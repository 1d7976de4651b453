"""Convert LivePortrait's warping_module.pth into WarpingNetwork parameters.

BatchNorms fold into the convolutions before them (hourglass blocks, the hourglass's final conv, `compress`,
`third`); where depth is folded into channels (the inputs of `third` and of the occlusion conv) the input
channels are permuted to our depth-major order (see playmate_jax/renderer/warping.py).
"""

from typing import Any, Mapping

from playmate_jax.convert.common import SourceDict, take_conv, take_conv_bn
from playmate_jax.convert.liveportrait.appearance import depth_major
from playmate_jax.renderer.layers import hourglass_channels


def _convert_dense_motion(source: SourceDict, dense: Mapping[str, Any], num_kp: int, feature_channel: int,
                          estimate_occlusion_map: bool) -> dict[str, Any]:
  prefix = "dense_motion_network"
  compress, depth = int(dense["compress"]), int(dense["reshape_depth"])
  down, up, out = hourglass_channels(int(dense["block_expansion"]), (num_kp + 1) * (compress + 1),
                                     int(dense["num_blocks"]), int(dense["max_features"]))
  hg = f"{prefix}.hourglass"
  encoder = {i: {"conv": take_conv_bn(source, f"{hg}.encoder.down_blocks.{i}.conv",
                                      f"{hg}.encoder.down_blocks.{i}.norm", c_in, c_out, 3, 3)}
             for i, (c_in, c_out) in enumerate(down)}
  decoder = {"up_blocks": {i: {"conv": take_conv_bn(source, f"{hg}.decoder.up_blocks.{i}.conv",
                                                    f"{hg}.decoder.up_blocks.{i}.norm", c_in, c_out, 3, 3)}
                           for i, (c_in, c_out) in enumerate(up)},
             "conv": take_conv_bn(source, f"{hg}.decoder.conv", f"{hg}.decoder.norm", out, out, 3, 3)}
  params = {
      "hourglass": {"encoder": {"down_blocks": encoder}, "decoder": decoder},
      "mask": take_conv(source, f"{prefix}.mask", out, num_kp + 1, 7, 3),
      "compress": take_conv_bn(source, f"{prefix}.compress", f"{prefix}.norm", feature_channel, compress, 1, 3),
  }
  if estimate_occlusion_map:
    occlusion = take_conv(source, f"{prefix}.occlusion", out * depth, 1, 7, 2)
    occlusion["kernel"] = depth_major(occlusion["kernel"], -2, out, depth)
    params["occlusion"] = occlusion
  return params


def convert(source: SourceDict, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """warping_module.pth (as a SourceDict) -> WarpingNetwork's pure-dict params."""
  dense = cfg["dense_motion_params"]
  channel, depth = int(cfg["reshape_channel"]), int(dense["reshape_depth"])
  max_features = int(cfg["max_features"])
  out_features = int(cfg["block_expansion"]) * 2 ** int(cfg["num_down_blocks"])
  params: dict[str, Any] = {
      "dense_motion_network": _convert_dense_motion(source, dense, int(cfg["num_kp"]), channel,
                                                    bool(cfg.get("estimate_occlusion_map", False))),
  }
  third = take_conv_bn(source, "third.conv", "third.norm", max_features, out_features, 3, 2)
  third["kernel"] = depth_major(third["kernel"], -2, channel, depth)
  params["third"] = {"conv": third}
  params["fourth"] = take_conv(source, "fourth", out_features, out_features, 1, 2)
  source.finish()
  return params
