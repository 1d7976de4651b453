"""LivePortrait's stitching and retargeting MLPs (S, and R for lips and eyes).

Each is a plain MLP: Linear layers with ReLU between them (none after the last), as LivePortrait's
`StitchingRetargetingNetwork`. Their sizes come from `stitching_retargeting_module_params`:
- stitching (released: 126 -> 65): source and driving keypoints -> a keypoint delta (63) plus a 2-D shift
  that pastes the animated crop back without seams;
- lip (65 -> 63) and eye (66 -> 63): source keypoints plus target open-ness ratios -> a keypoint delta.
Inputs are cast to the compute dtype; outputs are float32.
"""

import itertools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax.errors import UserError
from playmate_jax.renderer.layers import precision_for

PARTS = ("stitching", "lip", "eye")


def mlp_sizes(sub: Mapping[str, Any] | None, part: str) -> tuple[int, tuple[int, ...], int]:
  """(input_size, hidden_sizes, output_size) of the MLP `part` from its stitching_retargeting_module_params
  entry `sub`."""
  try:
    sizes = int(sub["input_size"]), tuple(int(h) for h in sub["hidden_sizes"]), int(sub["output_size"])
  except (TypeError, KeyError, ValueError):
    sizes = None
  if sizes is None or not sizes[1]:
    raise UserError(f"stitching_retargeting_module_params.{part} needs input_size, hidden_sizes (a non-empty "
                    "list) and output_size; fix models.yaml.")
  return sizes


class RetargetMLP(nnx.Module):
  """x [B, input_size] -> [B, output_size]: Linear, ReLU, ..., Linear."""

  def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int, *,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    sizes = [input_size, *hidden_sizes, output_size]
    self.dtype = dtype
    self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, precision=precision_for(dtype), rngs=rngs)
                            for a, b in itertools.pairwise(sizes)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    return x.astype(jnp.float32)


class StitchingRetargeting(nnx.Module):
  """The three MLPs as attributes .stitching, .lip and .eye."""

  def __init__(self, cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.stitching = RetargetMLP(*mlp_sizes(cfg.get("stitching"), "stitching"), dtype=dtype, rngs=rngs)
    self.lip = RetargetMLP(*mlp_sizes(cfg.get("lip"), "lip"), dtype=dtype, rngs=rngs)
    self.eye = RetargetMLP(*mlp_sizes(cfg.get("eye"), "eye"), dtype=dtype, rngs=rngs)
