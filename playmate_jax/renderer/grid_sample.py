"""Trilinear sampling of a channels-last 3-D volume, with PyTorch's `F.grid_sample` semantics.

LivePortrait warps its feature volume with `F.grid_sample(volume, grid, align_corners=False)` on 5-D input
(mode 'bilinear', which is trilinear in 3-D, and padding_mode 'zeros'). To reproduce its numbers we follow
the same formula: a normalized coordinate c in [-1, 1] maps to the pixel position ((c + 1) * size - 1) / 2,
so -1 and 1 are the outer *edges* of the first and last voxel, not their centres. The eight voxels around
that position are mixed with trilinear weights; a corner outside the volume contributes zero (so a point
half a voxel beyond the border still gets half of the border voxel's value, and points further out get 0).

Coordinates, indices and weights are always float32 (a bf16 position would be off by up to a quarter voxel
at 64 voxels); the voxel values keep the volume's dtype and are mixed in float32. Each of the eight corners
is one gather of C-vectors from the volume flattened to [B, D*H*W, C], accumulated in turn: XLA fuses the
index arithmetic, the eight gathers and the weighting into one kernel (on an H100, 6 to 14x faster than
stacking the corners into one [B, N, 8, C] gather, and 1.6 to 5x faster than PyTorch's CUDA grid_sample at
LivePortrait's full sizes). No Python loop over the batch; the corner loop is unrolled at trace time.
"""

import jax
import jax.numpy as jnp


def _source_index(coord: jax.Array, size: int) -> jax.Array:
  """Normalized coordinate -> continuous voxel position (align_corners=False)."""
  return ((coord + 1.0) * size - 1.0) / 2.0


def grid_sample_3d(volume: jax.Array, grid: jax.Array) -> jax.Array:
  """Sample `volume` [B, D, H, W, C] at `grid` [B, *S, 3] -> [B, *S, C] in the volume's dtype.

  The grid's last axis is (x, y, z) as in PyTorch: x indexes W, y indexes H, z indexes D, each normalized to
  [-1, 1]. Points outside (including inf/nan) read zeros for the corners that fall outside.
  """
  b, d, h, w, c = volume.shape
  if grid.shape[0] != b or grid.shape[-1] != 3:
    raise ValueError(f"grid must be [B={b}, ..., 3], got {grid.shape}")
  out_shape = grid.shape[1:-1]
  g = grid.astype(jnp.float32).reshape(b, -1, 3)
  pos = [_source_index(g[..., 0], w), _source_index(g[..., 1], h), _source_index(g[..., 2], d)]
  low = [jnp.floor(p) for p in pos]
  # PyTorch's weights: the far corner's offset (low + 1 - p) for the low corner, (p - low) for the high one.
  weights = [((lo + 1.0) - p, p - lo) for p, lo in zip(pos, low)]
  sizes = (w, h, d)

  flat = volume.reshape(b, d * h * w, c)
  # Indices are clipped below, so the gather may skip its own bounds handling.
  gather = jax.vmap(lambda v, i: v.at[i].get(mode="promise_in_bounds"))
  out = jnp.zeros((b, g.shape[1], c), jnp.float32)
  for dz in (0, 1):
    for dy in (0, 1):
      for dx in (0, 1):
        corner = (low[0] + dx, low[1] + dy, low[2] + dz)
        valid = jnp.ones(g.shape[:-1], bool)
        for k, s in zip(corner, sizes):
          valid &= (k >= 0) & (k <= s - 1)
        # Clip in float before the cast, so huge or non-finite positions never overflow int32.
        xi, yi, zi = (jnp.clip(k, 0, s - 1).astype(jnp.int32) for k, s in zip(corner, sizes))
        weight = jnp.where(valid, weights[0][dx] * weights[1][dy] * weights[2][dz], 0.0)
        out = out + gather(flat, (zi * h + yi) * w + xi).astype(jnp.float32) * weight[..., None]
  return out.astype(volume.dtype).reshape(b, *out_shape, c)
