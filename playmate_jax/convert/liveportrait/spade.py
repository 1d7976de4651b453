"""LivePortrait's spade_generator.pth -> params of renderer.spade.SPADEDecoder.

The residual blocks' convs are stored spectral-normalized (`weight_orig`, `weight_u`, `weight_v`); in eval mode
PyTorch uses W = weight_orig / sigma with sigma = u . (W_mat v) from the stored vectors (no power iteration),
which is folded here into a plain kernel. Convs go from OIHW to HWIO.
"""

from typing import Any, Mapping

import numpy as np

from playmate_jax.convert.common import SourceDict, conv_kernel, spectral_normalized, take_conv
from playmate_jax.renderer.spade import (NUM_MIDDLE_BLOCKS, PIXEL_SHUFFLE, SPADE_HIDDEN, decoder_sizes,
                                         uses_pixel_shuffle)


def spectral_conv_kernel(source: SourceDict, key: str, cout: int, cin: int, k: int) -> np.ndarray:
  """The eval-mode weight of a spectral-normalized conv `key`, as an HWIO kernel."""
  weight = source.take(f"{key}.weight_orig", (cout, cin, k, k))
  u = source.take(f"{key}.weight_u", (cout,))
  v = source.take(f"{key}.weight_v", (cin * k * k,))
  return conv_kernel(spectral_normalized(weight, u, v))


def _spectral_conv(source: SourceDict, key: str, cout: int, cin: int, k: int, bias: bool = True) -> dict:
  out = {"kernel": spectral_conv_kernel(source, key, cout, cin, k)}
  if bias:
    out["bias"] = source.take(f"{key}.bias", (cout,))
  return out


def _spade(source: SourceDict, key: str, norm_nc: int, label_nc: int) -> dict[str, Any]:
  return {"mlp_shared": take_conv(source, f"{key}.mlp_shared.0", label_nc, SPADE_HIDDEN, 3),
          "mlp_gamma": take_conv(source, f"{key}.mlp_gamma", SPADE_HIDDEN, norm_nc, 3),
          "mlp_beta": take_conv(source, f"{key}.mlp_beta", SPADE_HIDDEN, norm_nc, 3)}


def _block(source: SourceDict, key: str, fin: int, fout: int, label_nc: int) -> dict[str, Any]:
  fmiddle = min(fin, fout)
  params = {"conv_0": _spectral_conv(source, f"{key}.conv_0", fmiddle, fin, 3),
            "conv_1": _spectral_conv(source, f"{key}.conv_1", fout, fmiddle, 3),
            "norm_0": _spade(source, f"{key}.norm_0", fin, label_nc),
            "norm_1": _spade(source, f"{key}.norm_1", fmiddle, label_nc)}
  if fin != fout:
    params["conv_s"] = _spectral_conv(source, f"{key}.conv_s", fout, fin, 1, bias=False)
    params["norm_s"] = _spade(source, f"{key}.norm_s", fin, label_nc)
  return params


def convert(source: SourceDict, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Params of SPADEDecoder(cfg) from the state dict in `source`; every key is used exactly once."""
  cin, cout = decoder_sizes(cfg)
  params = {"fc": take_conv(source, "fc", cin, 2 * cin, 3),
            "G_middle": {i: _block(source, f"G_middle_{i}", 2 * cin, 2 * cin, cin) for i in range(NUM_MIDDLE_BLOCKS)},
            "up_0": _block(source, "up_0", 2 * cin, cin, cin),
            "up_1": _block(source, "up_1", cin, cout, cin)}
  if uses_pixel_shuffle(cfg):
    params["conv_img"] = take_conv(source, "conv_img.0", cout, 3 * PIXEL_SHUFFLE ** 2, 3)
  else:
    params["conv_img"] = take_conv(source, "conv_img", cout, 3, 3)
  source.finish()
  return params
