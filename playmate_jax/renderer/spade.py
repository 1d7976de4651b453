"""LivePortrait's SPADE decoder G: the warped feature map -> the output image.

G (LivePortrait's `SPADEDecoder`): a 3x3 conv `fc` doubles the channels of the warped feature (C_in =
min(max_features, block_expansion * 2**num_down_blocks)), six SPADE residual blocks `G_middle`, then nearest 2x
upsampling + block `up_0` (-> C_in channels) and again + block `up_1` (-> out_channels, 64), LeakyReLU(0.2),
`conv_img` (to 3 channels; with upscale > 1 to 12 channels + PixelShuffle(2)) and a sigmoid. Every SPADE block
is conditioned on the decoder's own input feature (the "segmentation map"), resized by nearest neighbour.

SPADE(x, seg) = InstanceNorm(x) * (1 + gamma(seg)) + beta(seg), where gamma/beta are 3x3 convs over a shared
ReLU(conv3x3(seg)) with 128 channels; the norm is parameter-free InstanceNorm2d (eps 1e-5, biased variance, per
sample and channel; the released checkpoints hold no statistics for it). The residual blocks' convs are
spectral-normalized in PyTorch; at inference that is a fixed rescaling of the weight, which the converter
applies once (weight_orig / sigma, sigma = u . W v from the stored u, v), so here they are plain convs.

GPU notes: all convs are single lax convolutions over the whole batch. Within a residual block the three (or
two) SPADE `mlp_shared` convs read the same resized seg map, so they run as one conv with their kernels
concatenated on the output axis; each SPADE's gamma and beta convs run as one conv too; and the instance norm
of x is computed once for `norm_0` and `norm_s`. Convs run in the compute dtype; the residual stream, the outputs
of the convs that feed an instance norm (fc, conv_0, conv_1, conv_s), the norm statistics and the sigmoid are
float32 (rounded to bf16, a channel whose mean is large against its spread loses its deviations in the norm).
The image is returned as float32.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax.errors import UserError
from playmate_jax.renderer.layers import precision_for, upsample_hw

SPADE_HIDDEN = 128
INSTANCE_NORM_EPS = 1e-5
LEAKY_SLOPE = 0.2
NUM_MIDDLE_BLOCKS = 6
PIXEL_SHUFFLE = 2
_DIMS = ("NHWC", "HWIO", "NHWC")


def decoder_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
  """(input channels, out_channels) of SPADEDecoder(**cfg), as LivePortrait derives them."""
  num_down = int(cfg.get("num_down_blocks", 2))
  if num_down < 1:
    raise UserError(f"spade_generator_params.num_down_blocks={num_down} must be at least 1; fix models.yaml.")
  cin = min(int(cfg.get("max_features", 256)), int(cfg.get("block_expansion", 64)) * 2 ** num_down)
  return cin, int(cfg.get("out_channels", 64))


def uses_pixel_shuffle(cfg: Mapping[str, Any]) -> bool:
  upscale = cfg.get("upscale", 1)
  return upscale is not None and upscale > 1


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, dtype: Any,
           out_dtype: Any = None) -> jax.Array:
  """Stride-1 'same' conv (odd kernel, zero padding), NHWC x HWIO, computed in `dtype`; the result in
  `out_dtype` (default `dtype`), accumulated in float32 on GPUs either way."""
  pad = kernel.shape[0] // 2
  out_dtype = dtype if out_dtype is None else out_dtype
  y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (1, 1), ((pad, pad), (pad, pad)),
                                   dimension_numbers=_DIMS, precision=precision_for(dtype),
                                   preferred_element_type=out_dtype)
  return y if bias is None else y + bias.astype(out_dtype)


def apply_conv(conv: nnx.Conv, x: jax.Array, *, dtype: Any, out_dtype: Any = None) -> jax.Array:
  """`conv` (a stride-1 'same' nnx.Conv) applied with `conv2d`."""
  bias = conv.bias[...] if conv.bias is not None else None
  return conv2d(x, conv.kernel[...], bias, dtype=dtype, out_dtype=out_dtype)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """F.interpolate(mode='nearest') of [B, h, w, C] to `size`, an integer multiple of (h, w) (always so in G)."""
  b, h, w, c = x.shape
  oh, ow = size
  if oh % h or ow % w:
    raise ValueError(f"resize_nearest: {size} is not an integer multiple of {(h, w)}.")
  if (oh, ow) == (h, w):
    return x
  fh, fw = oh // h, ow // w
  return jnp.broadcast_to(x[:, :, None, :, None], (b, h, fh, w, fw, c)).reshape(b, oh, ow, c)


def instance_norm(x: jax.Array) -> jax.Array:
  """Parameter-free InstanceNorm2d over H, W per sample and channel, float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + INSTANCE_NORM_EPS)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """torch.nn.PixelShuffle(r) in NHWC: channel c*r*r + i*r + j -> pixel (h*r + i, w*r + j), channel c."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c)


def leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _conv(cin: int, cout: int, k: int, dtype: Any, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Conv:
  return nnx.Conv(cin, cout, (k, k), padding=((k // 2, k // 2), (k // 2, k // 2)), use_bias=use_bias,
                  dtype=dtype, precision=precision_for(dtype), rngs=rngs)


class SPADE(nnx.Module):
  """One SPADE norm's parameters and its gamma/beta step; SPADEResnetBlock runs the rest, fused (see above)."""

  def __init__(self, norm_nc: int, label_nc: int, *, dtype: Any, rngs: nnx.Rngs):
    self.mlp_shared = _conv(label_nc, SPADE_HIDDEN, 3, dtype, rngs)
    self.mlp_gamma = _conv(SPADE_HIDDEN, norm_nc, 3, dtype, rngs)
    self.mlp_beta = _conv(SPADE_HIDDEN, norm_nc, 3, dtype, rngs)

  def modulation(self, actv: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """(gamma, beta) from this SPADE's hidden activation, as one conv."""
    kernel = jnp.concatenate([self.mlp_gamma.kernel[...], self.mlp_beta.kernel[...]], axis=-1)
    bias = jnp.concatenate([self.mlp_gamma.bias[...], self.mlp_beta.bias[...]], axis=-1)
    gamma, beta = jnp.split(conv2d(actv, kernel, bias, dtype=dtype), 2, axis=-1)
    return gamma, beta


class SPADEResnetBlock(nnx.Module):
  """x_s + conv_1(lrelu(SPADE_1(conv_0(lrelu(SPADE_0(x, seg))), seg))), x_s = conv_s(SPADE_s(x)) or x."""

  def __init__(self, fin: int, fout: int, label_nc: int, *, dtype: Any, rngs: nnx.Rngs):
    self.dtype = dtype
    self.learned_shortcut = fin != fout
    fmiddle = min(fin, fout)
    self.conv_0 = _conv(fin, fmiddle, 3, dtype, rngs)
    self.conv_1 = _conv(fmiddle, fout, 3, dtype, rngs)
    self.norm_0 = SPADE(fin, label_nc, dtype=dtype, rngs=rngs)
    self.norm_1 = SPADE(fmiddle, label_nc, dtype=dtype, rngs=rngs)
    if self.learned_shortcut:
      self.conv_s = _conv(fin, fout, 1, dtype, rngs, use_bias=False)
      self.norm_s = SPADE(fin, label_nc, dtype=dtype, rngs=rngs)

  def _norms(self) -> list[SPADE]:
    return [self.norm_0, self.norm_1] + ([self.norm_s] if self.learned_shortcut else [])

  def __call__(self, x: jax.Array, seg: jax.Array) -> jax.Array:
    """x [B, H, W, fin] float32 (the residual stream), seg [B, h, w, label_nc] -> [B, H, W, fout] float32."""
    dtype, f32 = self.dtype, jnp.float32
    norms = self._norms()
    seg = resize_nearest(seg, x.shape[1:3])
    kernel = jnp.concatenate([n.mlp_shared.kernel[...] for n in norms], axis=-1)
    bias = jnp.concatenate([n.mlp_shared.bias[...] for n in norms], axis=-1)
    actvs = jnp.split(jax.nn.relu(conv2d(seg, kernel, bias, dtype=dtype)), len(norms), axis=-1)
    x_norm = instance_norm(x)

    def spade(i: int, normalized: jax.Array) -> jax.Array:
      gamma, beta = norms[i].modulation(actvs[i], dtype)
      return normalized * (1.0 + gamma) + beta

    if self.learned_shortcut:
      x_s = apply_conv(self.conv_s, spade(2, x_norm), dtype=dtype, out_dtype=f32)
    else:
      x_s = x.astype(f32)
    dx = apply_conv(self.conv_0, leaky_relu(spade(0, x_norm)), dtype=dtype, out_dtype=f32)
    dx = apply_conv(self.conv_1, leaky_relu(spade(1, instance_norm(dx))), dtype=dtype, out_dtype=f32)
    return x_s + dx


class SPADEDecoder(nnx.Module):
  """G: feature [B, h, w, C_in] -> image [B, 4h*s, 4w*s, 3] in [0, 1] (s = 2 with upscale > 1, else 1)."""

  def __init__(self, cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    cin, cout = decoder_sizes(cfg)
    self.dtype = dtype
    self.pixel_shuffle = uses_pixel_shuffle(cfg)
    self.fc = _conv(cin, 2 * cin, 3, dtype, rngs)
    self.G_middle = nnx.List([SPADEResnetBlock(2 * cin, 2 * cin, cin, dtype=dtype, rngs=rngs)
                              for _ in range(NUM_MIDDLE_BLOCKS)])
    self.up_0 = SPADEResnetBlock(2 * cin, cin, cin, dtype=dtype, rngs=rngs)
    self.up_1 = SPADEResnetBlock(cin, cout, cin, dtype=dtype, rngs=rngs)
    out = 3 * PIXEL_SHUFFLE ** 2 if self.pixel_shuffle else 3
    self.conv_img = _conv(cout, out, 3, dtype, rngs)

  def __call__(self, feature: jax.Array) -> jax.Array:
    seg = feature.astype(self.dtype)
    x = apply_conv(self.fc, seg, dtype=self.dtype, out_dtype=jnp.float32)
    for block in self.G_middle:
      x = block(x, seg)
    x = self.up_0(upsample_hw(x), seg)
    x = self.up_1(upsample_hw(x), seg)
    x = apply_conv(self.conv_img, leaky_relu(x), dtype=self.dtype, out_dtype=jnp.float32)
    if self.pixel_shuffle:
      x = pixel_shuffle(x, PIXEL_SHUFFLE)
    return jax.nn.sigmoid(x.astype(jnp.float32))
