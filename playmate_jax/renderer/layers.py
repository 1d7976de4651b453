"""Convolution blocks of LivePortrait's appearance extractor F and warping module W, channels-last.

These mirror LivePortrait's `util.py` blocks (SameBlock2d, DownBlock2d/3d, UpBlock3d, ResBlock3d and the
UNet-like 3-D Hourglass of the dense motion network) at inference: every BatchNorm runs in eval mode, so the
converter folds it into the convolution before it, and the one BatchNorm that has no convolution before it
(ResBlock3d's pre-activation norm1) becomes an `Affine` scale/shift pair. Attribute names follow the PyTorch
modules so that a checkpoint key maps to a parameter path by eye.

Arrays are [B, H, W, C] (2-D) or [B, D, H, W, C] (3-D). Pooling and upsampling act on H and W only, as in
LivePortrait (its 3-D blocks keep the depth). Parameters are float32; `dtype` sets the compute dtype.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def precision_for(dtype: Any) -> jax.lax.Precision | None:
  """Full float32 precision for float32 compute (GPUs otherwise use TF32 for float32 convolutions, which is
  too coarse for parity with PyTorch); the backend default for bf16, which must stay fast."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def conv(in_features: int, out_features: int, kernel: int, ndim: int, *, dtype: Any,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A stride-1 convolution with PyTorch's symmetric zero padding of kernel // 2 (odd kernels)."""
  pad = kernel // 2
  return nnx.Conv(in_features, out_features, (kernel,) * ndim, padding=[(pad, pad)] * ndim, dtype=dtype,
                  precision=precision_for(dtype), rngs=rngs)


def avg_pool_hw(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 over H and W of [..., H, W, C] (odd sizes drop the last row/column,
  like PyTorch's AvgPool)."""
  *lead, h, w, c = x.shape
  x = x[..., : h // 2 * 2, : w // 2 * 2, :]
  return x.reshape(*lead, h // 2, 2, w // 2, 2, c).mean(axis=(-4, -2)).astype(x.dtype)


def upsample_hw(x: jax.Array) -> jax.Array:
  """Nearest-neighbour upsampling by 2 over H and W of [..., H, W, C] (F.interpolate, scale 2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)


def leaky_relu(x: jax.Array) -> jax.Array:
  """nn.LeakyReLU() with PyTorch's default slope 0.01."""
  return jax.nn.leaky_relu(x, 0.01)


class Affine(nnx.Module):
  """Per-channel y = x * scale + shift: an eval-mode BatchNorm with no convolution to fold into."""

  def __init__(self, features: int):
    self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
    self.shift = nnx.Param(jnp.zeros((features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.scale[...].astype(x.dtype) + self.shift[...].astype(x.dtype)


class SameBlock2d(nnx.Module):
  """conv (+ folded BatchNorm) and ReLU, or LeakyReLU when `lrelu`; resolution kept."""

  def __init__(self, in_features: int, out_features: int, *, kernel: int = 3, lrelu: bool = False,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, kernel, 2, dtype=dtype, rngs=rngs)
    self.activation: Callable[[jax.Array], jax.Array] = leaky_relu if lrelu else jax.nn.relu

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.activation(self.conv(x))


class DownBlock2d(nnx.Module):
  """conv (+ folded BatchNorm), ReLU, 2x2 average pooling."""

  def __init__(self, in_features: int, out_features: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, 3, 2, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return avg_pool_hw(jax.nn.relu(self.conv(x)))


class DownBlock3d(nnx.Module):
  """3-D conv (+ folded BatchNorm), ReLU, (1, 2, 2) average pooling."""

  def __init__(self, in_features: int, out_features: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, 3, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return avg_pool_hw(jax.nn.relu(self.conv(x)))


class UpBlock3d(nnx.Module):
  """(1, 2, 2) nearest upsampling, 3-D conv (+ folded BatchNorm), ReLU."""

  def __init__(self, in_features: int, out_features: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.conv = conv(in_features, out_features, 3, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.conv(upsample_hw(x)))


class ResBlock3d(nnx.Module):
  """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x)))))), norm2 folded into conv1."""

  def __init__(self, features: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.norm1 = Affine(features)
    self.conv1 = conv(features, features, 3, 3, dtype=dtype, rngs=rngs)
    self.conv2 = conv(features, features, 3, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = self.conv1(jax.nn.relu(self.norm1(x)))
    return x + self.conv2(jax.nn.relu(out))


def hourglass_channels(block_expansion: int, in_features: int, num_blocks: int,
                       max_features: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
  """(encoder [(in, out)], decoder [(in, out)], output channels) of LivePortrait's Hourglass."""
  def width(i: int) -> int:
    return min(max_features, block_expansion * 2 ** i)

  down = [(in_features if i == 0 else width(i), width(i + 1)) for i in range(num_blocks)]
  up = [((1 if i == num_blocks - 1 else 2) * width(i + 1), width(i)) for i in reversed(range(num_blocks))]
  return down, up, block_expansion + in_features


class Encoder(nnx.Module):
  """The hourglass's down path; returns the input and every block's output (the skips)."""

  def __init__(self, channels: Sequence[tuple[int, int]], *, dtype: Any, rngs: nnx.Rngs):
    self.down_blocks = nnx.List([DownBlock3d(i, o, dtype=dtype, rngs=rngs) for i, o in channels])

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outs = [x]
    for block in self.down_blocks:
      outs.append(block(outs[-1]))
    return outs


class Decoder(nnx.Module):
  """The hourglass's up path: each block's output is concatenated with the matching skip (block first)."""

  def __init__(self, channels: Sequence[tuple[int, int]], out_features: int, *, dtype: Any, rngs: nnx.Rngs):
    self.up_blocks = nnx.List([UpBlock3d(i, o, dtype=dtype, rngs=rngs) for i, o in channels])
    self.conv = conv(out_features, out_features, 3, 3, dtype=dtype, rngs=rngs)

  def __call__(self, skips: list[jax.Array]) -> jax.Array:
    skips = list(skips)
    out = skips.pop()
    for block in self.up_blocks:
      out = jnp.concatenate([block(out), skips.pop()], axis=-1)
    return jax.nn.relu(self.conv(out))


class Hourglass(nnx.Module):
  """LivePortrait's 3-D UNet-like hourglass; output has `block_expansion + in_features` channels."""

  def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int, *,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    down, up, self.out_features = hourglass_channels(block_expansion, in_features, num_blocks, max_features)
    self.num_blocks = num_blocks
    self.encoder = Encoder(down, dtype=dtype, rngs=rngs)
    self.decoder = Decoder(up, self.out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decoder(self.encoder(x))


def conv3d_by_depth_taps(x: jax.Array, conv_module: nnx.Conv, dtype: Any) -> jax.Array:
  """A stride-1 'same' 3-D convolution computed as ONE 2-D convolution plus a shift-and-add over depth.

  out[d] = sum_i conv2d(x[d + i - p], kernel[i]): the 2-D convolution applies all depth taps at once (its output
  channels are (tap, out), in the compute dtype), and the taps' results are summed at their depth offsets in
  float32. Same numbers
  as the 3-D convolution up to summation order, about twice as fast on an H100 for the dense motion network's
  7x7x7 mask convolution (few output channels, large kernel), where cuDNN's 3-D kernels are slow.
  """
  kernel, bias = conv_module.kernel[...], conv_module.bias[...]
  kd, kh, kw, cin, cout = kernel.shape
  b, d, h, w, _ = x.shape
  per_tap = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(kh, kw, cin, kd * cout)
  y = jax.lax.conv_general_dilated(
      x.reshape(b * d, h, w, cin).astype(dtype), per_tap.astype(dtype), (1, 1),
      [(kh // 2, kh // 2), (kw // 2, kw // 2)], dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=precision_for(dtype))  # per-tap results in `dtype`: an fp32 output slows the conv down
  y = jnp.pad(y.astype(jnp.float32).reshape(b, d, h, w, kd, cout), [(0, 0), (kd // 2, kd // 2)] + [(0, 0)] * 4)
  out = sum(y[:, i:i + d, :, :, i] for i in range(kd))
  return (out + bias.astype(jnp.float32)).astype(dtype)


def conv2d_by_spatial_taps(x: jax.Array, conv_module: nnx.Conv, dtype: Any) -> jax.Array:
  """A stride-1 'same' 2-D convolution with very few output channels, as one matmul plus a shift-and-add.

  The matmul maps every pixel's channels to each (tap, out) pair; the taps' results are then summed at their
  spatial offsets in float32. For the occlusion convolution (thousands of input channels, one output) this is
  about 8x faster on an H100 than a convolution kernel, which cannot use the tensor cores for one output.
  """
  kernel, bias = conv_module.kernel[...], conv_module.bias[...]
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  taps = jnp.einsum("bhwc,cto->bhwto", x.astype(dtype),
                    jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin, kh * kw, cout).astype(dtype),
                    precision=precision_for(dtype), preferred_element_type=jnp.float32)
  taps = jnp.pad(taps, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0), (0, 0)])
  out = sum(taps[:, i:i + h, j:j + w, i * kw + j] for i in range(kh) for j in range(kw))
  return (out + bias.astype(jnp.float32)).astype(dtype)
