"""LivePortrait's motion extractor M: a ConvNeXt-V2 backbone with seven linear heads.

From one 256x256 crop M predicts the canonical keypoints `kp` (3*num_kp), the head pose as 66-bin logits for
`pitch`, `yaw` and `roll`, the translation `t` (3), the expression deformation `exp` (3*num_kp) and the
`scale` (1): the raw head outputs, exactly as LivePortrait's `ConvNeXtV2.forward` returns them (turning bins
into degrees and keypoints into [K, 3] is playmate_jax.motion's job).

The backbone, channels-last: a 4x4/4 stem conv + LayerNorm, three LayerNorm + 2x2/2 conv downsamplers, four
stages of ConvNeXt-V2 blocks (7x7 depthwise conv, LayerNorm, 4x MLP with exact GELU and Global Response
Normalization, residual), then global average pooling and a final LayerNorm. PyTorch's channels-first and
channels-last LayerNorm variants are the same LayerNorm over the channel axis here. Stochastic depth is an
identity at inference and has no parameters, so it is left out. Statistics (LayerNorm, GRN, pooling) run in
float32 whatever the compute dtype; the heads are returned as float32.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax.errors import UserError
from playmate_jax.renderer.layers import precision_for

NUM_BINS = 66
LN_EPS = 1e-6
GRN_EPS = 1e-6
HEADS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
BACKBONES = {"convnextv2_tiny": {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)}}


def backbone_sizes(cfg: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(depths, dims) of the backbone: given explicitly in cfg, else the named backbone's defaults."""
  name = cfg.get("backbone", "convnextv2_tiny")
  if name not in BACKBONES:
    raise UserError(f"motion_extractor_params.backbone={name!r} is not supported; use one of {sorted(BACKBONES)} "
                    "in models.yaml.")
  depths = tuple(int(d) for d in cfg.get("depths", BACKBONES[name]["depths"]))
  dims = tuple(int(d) for d in cfg.get("dims", BACKBONES[name]["dims"]))
  if len(depths) != 4 or len(dims) != 4:
    raise UserError(f"motion_extractor_params depths={list(depths)} / dims={list(dims)} must have 4 entries each "
                    "(one per ConvNeXt-V2 stage); fix models.yaml.")
  return depths, dims


def head_sizes(cfg: Mapping[str, Any]) -> dict[str, int]:
  """Output size of each head, in HEADS order (LivePortrait's defaults: 66 bins, 24 keypoints)."""
  bins, kp = int(cfg.get("num_bins", NUM_BINS)), int(cfg.get("num_kp", 24))
  return {"pitch": bins, "yaw": bins, "roll": bins, "t": 3, "exp": 3 * kp, "scale": 1, "kp": 3 * kp}


def layer_norm(num_features: int, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the channel axis with PyTorch's two-pass variance (stats in float32)."""
  return nnx.LayerNorm(num_features, epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, rngs=rngs)


class GRN(nnx.Module):
  """Global Response Normalization: x + gamma * (x * N(x)) + beta, N from per-channel spatial L2 norms."""

  def __init__(self, dim: int, *, dtype: Any = jnp.float32):
    self.dtype = dtype
    self.gamma = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.beta = nnx.Param(jnp.zeros((dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    gx = jnp.sqrt(jnp.sum(jnp.square(xf), axis=(1, 2), keepdims=True))          # [B, 1, 1, C]
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + GRN_EPS)
    return (self.gamma[...] * (xf * nx) + self.beta[...] + xf).astype(self.dtype)


class Block(nnx.Module):
  """ConvNeXt-V2 block: depthwise 7x7, LayerNorm, Linear 4x, GELU, GRN, Linear back, residual."""

  def __init__(self, dim: int, *, dtype: Any, rngs: nnx.Rngs):
    prec = precision_for(dtype)
    self.dwconv = nnx.Conv(dim, dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=dim, dtype=dtype,
                           precision=prec, rngs=rngs)
    self.norm = layer_norm(dim, dtype, rngs)
    self.pwconv1 = nnx.Linear(dim, 4 * dim, dtype=dtype, precision=prec, rngs=rngs)
    self.grn = GRN(4 * dim, dtype=dtype)
    self.pwconv2 = nnx.Linear(4 * dim, dim, dtype=dtype, precision=prec, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.norm(self.dwconv(x))
    y = self.grn(jax.nn.gelu(self.pwconv1(y), approximate=False))
    return x + self.pwconv2(y)


class Downsample(nnx.Module):
  """The stem (conv 4x4/4 then LayerNorm) or a downsampler (LayerNorm then conv 2x2/2)."""

  def __init__(self, cin: int, cout: int, *, stem: bool, dtype: Any, rngs: nnx.Rngs):
    self.stem = stem
    k = 4 if stem else 2
    self.conv = nnx.Conv(cin, cout, (k, k), strides=(k, k), padding="VALID", dtype=dtype,
                         precision=precision_for(dtype), rngs=rngs)
    self.norm = layer_norm(cout if stem else cin, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x)) if self.stem else self.conv(self.norm(x))


class MotionExtractor(nnx.Module):
  """M: image [B, H, W, 3] in [0, 1] -> dict of raw heads (see the module docstring)."""

  def __init__(self, cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    depths, dims = backbone_sizes(cfg)
    self.dtype = dtype
    in_chans = int(cfg.get("in_chans", 3))
    self.downsample_layers = nnx.List(
        [Downsample(in_chans, dims[0], stem=True, dtype=dtype, rngs=rngs)]
        + [Downsample(dims[i], dims[i + 1], stem=False, dtype=dtype, rngs=rngs) for i in range(3)])
    self.stages = nnx.List([nnx.List([Block(dims[i], dtype=dtype, rngs=rngs) for _ in range(depths[i])])
                            for i in range(4)])
    self.norm = layer_norm(dims[-1], jnp.float32, rngs)
    prec = precision_for(dtype)
    for name, size in head_sizes(cfg).items():
      setattr(self, f"fc_{name}", nnx.Linear(dims[-1], size, dtype=dtype, precision=prec, rngs=rngs))

  def features(self, image: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> pooled, normalized features [B, dims[-1]] float32."""
    x = image.astype(self.dtype)
    for down, stage in zip(self.downsample_layers, self.stages, strict=True):
      x = down(x)
      for block in stage:
        x = block(x)
    return self.norm(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))

  def __call__(self, image: jax.Array) -> dict[str, jax.Array]:
    feats = self.features(image)
    return {name: getattr(self, f"fc_{name}")(feats).astype(jnp.float32) for name in HEADS}
