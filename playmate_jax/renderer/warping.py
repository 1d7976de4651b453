"""LivePortrait's warping module W: warp the source feature volume from source to driving keypoints.

The dense motion network turns the two keypoint sets into a dense backward flow: for each of the K keypoints
a "sparse motion" translates every voxel by (kp_source - kp_driving), plus one identity motion for the
background; the compressed source feature is sampled under each of the K+1 motions and, together with the
difference of Gaussian heatmaps around the keypoints, goes through a 3-D hourglass whose softmax mask mixes
the K+1 motions into one deformation [B, D, h, w, 3] (normalized (x, y, z) sampling positions, PyTorch's
grid_sample order). The hourglass output, read as 2-D, also predicts an occlusion map. W samples the full
feature volume with the deformation, folds depth into channels, applies `third` (conv + LeakyReLU) and
`fourth` (1x1 conv) and multiplies by the occlusion map, exactly as LivePortrait's forward does.

Geometry (coordinate grids, motions, heatmaps, the softmax mask and the deformation) is float32 whatever the
compute dtype: sampling positions in bf16 would be off by a fraction of a voxel. Convolutions run in `dtype`.

Speed: the two convolutions that cuDNN runs slowly at these shapes are computed differently with the same
weights: the 7x7x7 mask convolution as one 2-D convolution over all depth taps plus a depth shift-and-add, the
7x7 occlusion convolution (one output channel) as a matmul plus a spatial shift-and-add (see layers.py).

Layout note: where PyTorch folds depth into channels (`view(b, c * d, h, w)`, channel index c * D + d) this
module folds depth-major (d * C + c), a cheaper transpose in channels-last; the converter permutes the input
channels of `third` and of the occlusion conv to match.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax.errors import UserError
from playmate_jax.renderer.grid_sample import grid_sample_3d
from playmate_jax.renderer.layers import (Hourglass, SameBlock2d, conv, conv2d_by_spatial_taps,
                                         conv3d_by_depth_taps)

KP_VARIANCE = 0.01   # LivePortrait's Gaussian heatmap variance, in normalized coordinates


def make_coordinate_grid(depth: int, height: int, width: int) -> jax.Array:
  """[D, H, W, 3] float32 identity grid of normalized (x, y, z) voxel centres spanning [-1, 1] inclusive
  (LivePortrait's make_coordinate_grid: x = 2 * (i / (W - 1)) - 1, x to the right, y down, z inwards)."""
  z, y, x = jnp.meshgrid(*[2.0 * (jnp.arange(n, dtype=jnp.float32) / (n - 1)) - 1.0 for n in (depth, height, width)],
                         indexing="ij")
  return jnp.stack([x, y, z], axis=-1)


def keypoint_gaussians(kp: jax.Array, grid: jax.Array, variance: float = KP_VARIANCE) -> jax.Array:
  """kp [B, K, 3], grid [D, H, W, 3] -> [B, D, H, W, K] unnormalized Gaussians exp(-|p - kp|^2 / (2 var))."""
  diff = grid[None, :, :, :, None, :] - kp[:, None, None, None, :, :]
  return jnp.exp(-0.5 * jnp.sum(diff ** 2, axis=-1) / variance)


def sparse_motions(grid: jax.Array, kp_source: jax.Array, kp_driving: jax.Array) -> jax.Array:
  """[B, D, H, W, K+1, 3]: the identity motion, then per keypoint p - kp_driving + kp_source."""
  kd = kp_driving[:, None, None, None, :, :]
  ks = kp_source[:, None, None, None, :, :]
  per_kp = (grid[None, :, :, :, None, :] - kd) + ks
  identity = jnp.broadcast_to(grid[None, :, :, :, None, :], (per_kp.shape[0], *grid.shape[:3], 1, 3))
  return jnp.concatenate([identity, per_kp], axis=-2)


def fold_depth(x: jax.Array) -> jax.Array:
  """[B, D, H, W, C] -> [B, H, W, D*C] (depth-major channels)."""
  b, d, h, w, c = x.shape
  return x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, d * c)


class DenseMotionNetwork(nnx.Module):
  """feature [B, D, h, w, C] and keypoints -> dict(mask, deformation, occlusion_map)."""

  def __init__(self, cfg: Mapping[str, Any], *, num_kp: int, feature_channel: int,
               estimate_occlusion_map: bool = True, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.num_kp = num_kp
    self.dtype = dtype
    self.reshape_depth = int(cfg["reshape_depth"])
    compress = int(cfg["compress"])
    self.hourglass = Hourglass(int(cfg["block_expansion"]), (num_kp + 1) * (compress + 1),
                               int(cfg["num_blocks"]), int(cfg["max_features"]), dtype=dtype, rngs=rngs)
    out = self.hourglass.out_features
    self.mask = conv(out, num_kp + 1, 7, 3, dtype=dtype, rngs=rngs)
    self.compress = conv(feature_channel, compress, 1, 3, dtype=dtype, rngs=rngs)   # + folded BatchNorm
    self.occlusion = (conv(out * self.reshape_depth, 1, 7, 2, dtype=dtype, rngs=rngs)
                      if estimate_occlusion_map else None)

  def hourglass_inputs(self, feature: jax.Array, kp_source: jax.Array,
                       kp_driving: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(hourglass input [B, d, h, w, (K+1)(compress+1)], sparse motions [B, d, h, w, K+1, 3])."""
    b, d, h, w, _ = feature.shape
    step = 2 ** self.hourglass.num_blocks
    if h % step or w % step:
      raise UserError(f"warping module: feature size {h}x{w} must be divisible by {step} (2 ** "
                      "dense_motion_params.num_blocks); use an input image size that is a multiple of "
                      f"{4 * step}.")
    feature = jax.nn.relu(self.compress(feature.astype(self.dtype)))
    grid = make_coordinate_grid(d, h, w)
    kp_source = kp_source.astype(jnp.float32)
    kp_driving = kp_driving.astype(jnp.float32)
    motions = sparse_motions(grid, kp_source, kp_driving)                       # [B, d, h, w, K+1, 3]
    deformed = grid_sample_3d(feature, motions)                                 # [B, d, h, w, K+1, c]
    heatmap = keypoint_gaussians(kp_driving, grid) - keypoint_gaussians(kp_source, grid)
    heatmap = jnp.concatenate([jnp.zeros_like(heatmap[..., :1]), heatmap], axis=-1)
    inputs = jnp.concatenate([heatmap[..., None].astype(self.dtype), deformed], axis=-1)
    return inputs.reshape(b, d, h, w, -1), motions

  def mask_logits(self, prediction: jax.Array) -> jax.Array:
    """The 7x7x7 mask convolution of the hourglass output: [B, d, h, w, K+1]."""
    return conv3d_by_depth_taps(prediction, self.mask, self.dtype)

  def occlusion_logits(self, prediction: jax.Array) -> jax.Array:
    """The occlusion convolution of the hourglass output read as 2-D: [B, h, w, 1]."""
    return conv2d_by_spatial_taps(fold_depth(prediction), self.occlusion, self.dtype)

  def __call__(self, feature: jax.Array, kp_source: jax.Array, kp_driving: jax.Array) -> dict[str, jax.Array]:
    inputs, motions = self.hourglass_inputs(feature, kp_source, kp_driving)
    prediction = self.hourglass(inputs)
    mask = jax.nn.softmax(self.mask_logits(prediction).astype(jnp.float32), axis=-1)   # [B, d, h, w, K+1]
    result = {"mask": mask, "deformation": jnp.sum(motions * mask[..., None], axis=-2)}
    if self.occlusion is not None:
      result["occlusion_map"] = jax.nn.sigmoid(self.occlusion_logits(prediction).astype(jnp.float32))
    return result


class WarpingNetwork(nnx.Module):
  """(feature_3d [B, D, h, w, C], kp_source [B, K, 3], kp_driving [B, K, 3]) ->
  dict(occlusion_map [B, h, w, 1] or None, deformation [B, D, h, w, 3], out [B, h, w, C_out])."""

  def __init__(self, cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    dense = cfg.get("dense_motion_params")
    if dense is None:
      raise UserError("warping_module_params has no dense_motion_params, which LivePortrait's warping module "
                      "needs; use the released models.yaml.")
    reshape_channel, depth = int(cfg["reshape_channel"]), int(dense["reshape_depth"])
    max_features = int(cfg["max_features"])
    if reshape_channel * depth != max_features:
      raise UserError(f"warping_module_params: reshape_channel ({reshape_channel}) x dense_motion_params."
                      f"reshape_depth ({depth}) must equal max_features ({max_features}); fix models.yaml.")
    self.dtype = dtype
    self.use_occlusion_map = bool(cfg.get("flag_use_occlusion_map", True))
    self.dense_motion_network = DenseMotionNetwork(
        dense, num_kp=int(cfg["num_kp"]), feature_channel=reshape_channel,
        estimate_occlusion_map=bool(cfg.get("estimate_occlusion_map", False)), dtype=dtype, rngs=rngs)
    out_features = int(cfg["block_expansion"]) * 2 ** int(cfg["num_down_blocks"])
    self.third = SameBlock2d(max_features, out_features, lrelu=True, dtype=dtype, rngs=rngs)
    self.fourth = conv(out_features, out_features, 1, 2, dtype=dtype, rngs=rngs)

  def __call__(self, feature_3d: jax.Array, kp_source: jax.Array,
               kp_driving: jax.Array) -> dict[str, jax.Array | None]:
    feature_3d = feature_3d.astype(self.dtype)
    motion = self.dense_motion_network(feature_3d, kp_source, kp_driving)
    deformation = motion["deformation"]
    occlusion_map = motion.get("occlusion_map")
    out = fold_depth(grid_sample_3d(feature_3d, deformation))
    out = self.fourth(self.third(out))
    if self.use_occlusion_map and occlusion_map is not None:
      out = out * occlusion_map.astype(out.dtype)
    return {"occlusion_map": occlusion_map, "deformation": deformation, "out": out}
