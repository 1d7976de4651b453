"""wav2vec2 / HuBERT speech encoders in Flax NNX, and their features at one row per 25 fps video frame.

The model computes what Hugging Face's `Wav2Vec2Model` / `HubertModel` compute in eval mode, for both released
layouts: a group-norm feature extractor (GroupNorm on the first conv only, no conv bias) with a post-layer-norm
encoder (wav2vec2-base, HuBERT-base), and a layer-norm feature extractor (LayerNorm after every conv, conv bias)
with a pre-layer-norm ("stable") encoder (wav2vec2-large-lv60, HuBERT-large). The model returns HF's
`hidden_states` and `last_hidden_state`: hidden state 0 is the encoder input (after the positional convolution,
and its layer norm in post-LN models), i the output of transformer layer i; stable models apply a final layer
norm to the last one to give `last_hidden_state` (HF 5 keeps it out of `hidden_states`). Feature layer N (or
-1) means `last_hidden_state`. A padded batch takes a frame mask as HF builds it from `attention_mask`
(`hf_frame_mask`): masked frames are zeroed before the positional convolution and are never attended to, while
GroupNorm statistics span the whole padded input, exactly as in HF.

Frames and video rows. The conv stack has total stride S (320 samples, 20 ms at 16 kHz) and receptive field R
(400 samples). The waveform is padded with P = (R - S) // 2 zeros on the left (40 samples), so 50 Hz frame j
sees samples [S j - P, S j - P + R) = [320 j - 40, 320 j + 360) and is centred on the middle of the 20 ms slot
[S j, S (j + 1)); it is padded with zeros on the right to S (k T - 1) + R samples in all, where
T = num_frames(len(wave)) and k = (sample_rate / fps) / S frames make one video frame (2 at 25 fps), so the
model gives exactly k T frames. Row i is the mean of frames k i .. k i + k - 1: it covers exactly video frame
i's span [i hop, (i + 1) hop) (hop = 640 samples), sees samples [640 i - 40, 640 i + 680) through the conv stack,
is centred on the frame, and there are exactly T rows, like the log-mel encoder's. Checkpoints whose
preprocessor_config.json sets do_normalize get HF's input normalization (zero mean, unit variance over the file).

Long audio. Frames are computed in windows of `chunk + 2 * overlap` rows (one compiled shape, several windows
per call), each keeping its central `chunk` rows; the first and last windows are shifted inwards so that every
window is full of audio, and audio shorter than one window is padded and masked (exactly equal to running the
whole clip at once). Interior rows see `overlap` rows of context on each side; self-attention is global, so
a window sees less context than the whole file would give, which is the only difference from unchunked
features. GroupNorm statistics (and the input normalization of `do_normalize` checkpoints) are computed over
the whole file in a cheap first pass, so they do not depend on the chunking. Memory stays flat: nothing of
the size of the audio is allocated besides the input waveform and the output rows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from playmate_jax.audio.io import num_frames
from playmate_jax.convert import common
from playmate_jax.errors import UserError
from playmate_jax.shapes import abstract_module

KIND = "wav2vec2"                 # converted-weights kind (manifest.json)
SAMPLE_RATE = 16000               # every released wav2vec2 / HuBERT checkpoint is trained on 16 kHz audio
NORM_EPS = 1e-5                   # torch's default eps of the conv stack's GroupNorm / LayerNorm
INPUT_NORM_EPS = 1e-7             # HF Wav2Vec2FeatureExtractor: (x - mean) / sqrt(var + 1e-7)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu, "swish": jax.nn.silu, "silu": jax.nn.silu,
}


# --- configuration -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """The architecture, in HF's config.json names (defaults: wav2vec2-base)."""
  model_type: str = "wav2vec2"
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  feat_extract_norm: str = "group"
  feat_extract_activation: str = "gelu"
  feat_proj_layer_norm: bool = True
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  conv_pos_batch_norm: bool = False
  do_stable_layer_norm: bool = False

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], source: str) -> "Wav2Vec2Config":
    """From HF's config.json (or our manifest); unsupported variants are a UserError naming `source`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {k: d[k] for k in fields if k in d and d[k] is not None}
    for k in ("conv_dim", "conv_kernel", "conv_stride"):
      if k in kw:
        kw[k] = tuple(int(v) for v in kw[k])
    cfg = cls(**kw)
    cfg._check(d, source)
    return cfg

  def _check(self, d: Mapping[str, Any], source: str) -> None:
    def need(ok, what):
      if not ok:
        raise UserError(f"{source}: {what}; only wav2vec2 and HuBERT encoders of the released layouts are "
                        "supported.")
    need(self.model_type in ("wav2vec2", "hubert"), f"model_type is {self.model_type!r}, not wav2vec2 or hubert")
    need(self.feat_extract_norm in ("group", "layer"), f"feat_extract_norm is {self.feat_extract_norm!r}")
    n = len(self.conv_dim)
    need(n > 0 and len(self.conv_kernel) == n and len(self.conv_stride) == n
         and int(d.get("num_feat_extract_layers", n)) == n, "conv_dim, conv_kernel and conv_stride disagree")
    need(self.hidden_size % self.num_attention_heads == 0, "hidden_size is not divisible by num_attention_heads")
    need(self.hidden_size % self.num_conv_pos_embedding_groups == 0,
         "hidden_size is not divisible by num_conv_pos_embedding_groups")
    for act in (self.hidden_act, self.feat_extract_activation):
      need(act in _ACTIVATIONS, f"activation {act!r} is not one of {sorted(_ACTIVATIONS)}")
    need(not d.get("add_adapter"), "add_adapter is set (an adapter after the encoder)")
    need(d.get("adapter_attn_dim") is None, "adapter_attn_dim is set (attention adapters)")

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

  @property
  def total_stride(self) -> int:
    return math.prod(self.conv_stride)

  @property
  def receptive_field(self) -> int:
    field, jump = 1, 1
    for k, s in zip(self.conv_kernel, self.conv_stride):
      field += (k - 1) * jump
      jump *= s
    return field

  def num_frames(self, num_samples):
    """Frames the conv stack makes from num_samples samples (int or int array), HF's formula."""
    n = num_samples
    for k, s in zip(self.conv_kernel, self.conv_stride):
      n = (n - k) // s + 1
    return n


def base_config(**overrides) -> Wav2Vec2Config:
  """wav2vec2-base / HuBERT-base sizes (95 M parameters), with any field overridden."""
  return dataclasses.replace(Wav2Vec2Config(), **overrides)


def hf_frame_mask(cfg: Wav2Vec2Config, attention_mask, frames: int) -> jax.Array:
  """HF's feature-vector mask: [B, frames] bool, frame j valid iff j < num_frames(attention_mask.sum(-1))."""
  lengths = cfg.num_frames(jnp.asarray(attention_mask).astype(jnp.int32).sum(-1))
  return jnp.arange(frames)[None, :] < lengths[:, None]


# --- modules -------------------------------------------------------------------------------------------------

class TimeNorm(nnx.Module):
  """HF's GroupNorm with one group per channel: each channel normalized over time (per example), in float32.

  `stats` = (mean, var) [B, C] replaces the statistics of x (used to normalize chunks with whole-file ones).
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x: jax.Array, stats: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    x = x.astype(jnp.float32)
    if stats is None:
      mean = x.mean(1, keepdims=True)
      var = jnp.square(x - mean).mean(1, keepdims=True)
    else:
      mean, var = stats[0][:, None, :], stats[1][:, None, :]
    return (x - mean) * jax.lax.rsqrt(var + NORM_EPS) * self.scale[...] + self.bias[...]


class ConvLayer(nnx.Module):
  """conv (valid, strided) -> [GroupNorm | LayerNorm | nothing] -> activation."""

  def __init__(self, cfg: Wav2Vec2Config, index: int, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    c_in = cfg.conv_dim[index - 1] if index else 1
    c_out = cfg.conv_dim[index]
    self.dtype = dtype
    self.activation = cfg.feat_extract_activation
    self.conv = nnx.Conv(c_in, c_out, (cfg.conv_kernel[index],), strides=(cfg.conv_stride[index],),
                         padding="VALID", use_bias=cfg.conv_bias, dtype=dtype, precision=precision, rngs=rngs)
    if cfg.feat_extract_norm == "layer":
      self.norm = nnx.LayerNorm(c_out, epsilon=NORM_EPS, dtype=jnp.float32, rngs=rngs)
    elif index == 0:
      self.norm = TimeNorm(c_out, rngs=rngs)
    else:
      self.norm = None

  def __call__(self, x: jax.Array, stats=None) -> jax.Array:
    x = self.conv(x)
    if isinstance(self.norm, TimeNorm):
      x = self.norm(x, stats)
    elif self.norm is not None:
      x = self.norm(x.astype(jnp.float32))
    return _ACTIVATIONS[self.activation](x).astype(self.dtype)


class FeatureEncoder(nnx.Module):
  """Raw waveform [B, N] -> conv features [B, F, conv_dim[-1]] (compute dtype)."""

  def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    self.dtype = dtype
    self.conv_layers = nnx.List([ConvLayer(cfg, i, dtype=dtype, precision=precision, rngs=rngs)
                                 for i in range(len(cfg.conv_dim))])

  def __call__(self, wave: jax.Array, norm_stats=None) -> jax.Array:
    x = wave.astype(self.dtype)[..., None]
    for i, layer in enumerate(self.conv_layers):
      x = layer(x, norm_stats if i == 0 else None)
    return x


class FeatureProjection(nnx.Module):
  """[LayerNorm] -> Linear to hidden_size; output float32 (the residual stream)."""

  def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    c = cfg.conv_dim[-1]
    self.dtype = dtype
    self.norm = (nnx.LayerNorm(c, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, rngs=rngs)
                 if cfg.feat_proj_layer_norm else None)
    self.projection = nnx.Linear(c, cfg.hidden_size, dtype=dtype, precision=precision, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm is not None:
      x = self.norm(x.astype(jnp.float32))
    return self.projection(x.astype(self.dtype)).astype(jnp.float32)


class PositionalConv(nnx.Module):
  """Grouped 'same' convolution over time (last output dropped for an even kernel, as HF's SamePad) + activation.

  Weight norm is folded into the kernel at conversion. HuBERT's `conv_pos_batch_norm` variant normalizes the
  input first with eval-mode BatchNorm, kept as a per-channel scale/shift (zero padding stays after it).
  """

  def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    d, k = cfg.hidden_size, cfg.num_conv_pos_embeddings
    self.dtype = dtype
    self.activation = cfg.feat_extract_activation
    self.conv = nnx.Conv(d, d, (k,), padding=((k // 2, k // 2 - (1 - k % 2)),),
                         feature_group_count=cfg.num_conv_pos_embedding_groups, dtype=dtype, precision=precision,
                         rngs=rngs)
    if cfg.conv_pos_batch_norm:
      self.in_scale = nnx.Param(jnp.ones((d,), jnp.float32))
      self.in_shift = nnx.Param(jnp.zeros((d,), jnp.float32))
    else:
      self.in_scale = self.in_shift = None

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.in_scale is not None:
      x = x * self.in_scale[...] + self.in_shift[...]
    return _ACTIVATIONS[self.activation](self.conv(x.astype(self.dtype))).astype(jnp.float32)


class Attention(nnx.Module):
  """Multi-head self-attention (q, k, v fused); logits and softmax in float32; masked keys get finfo.min."""

  def __init__(self, dim: int, heads: int, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    self.heads = heads
    self.dtype = dtype
    self.precision = precision
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, precision=precision, rngs=rngs)
    self.out = nnx.Linear(dim, dim, dtype=dtype, precision=precision, rngs=rngs)

  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x.astype(self.dtype)).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32, precision=self.precision)
    logits = logits * (d // self.heads) ** -0.5
    if key_mask is not None:
      logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=self.precision).reshape(b, t, d)
    return self.out(out).astype(jnp.float32)


class EncoderLayer(nnx.Module):
  """Post-LN: x = LN(x + attn(x)); x = LN(x + ff(x)). Stable (pre-LN): x += attn(LN(x)); x += ff(LN(x))."""

  def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.dtype = dtype
    self.stable = cfg.do_stable_layer_norm
    self.activation = cfg.hidden_act
    self.attention = Attention(d, cfg.num_attention_heads, dtype=dtype, precision=precision, rngs=rngs)
    self.norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, rngs=rngs)
    self.intermediate = nnx.Linear(d, cfg.intermediate_size, dtype=dtype, precision=precision, rngs=rngs)
    self.output = nnx.Linear(cfg.intermediate_size, d, dtype=dtype, precision=precision, rngs=rngs)
    self.final_norm = nnx.LayerNorm(d, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, rngs=rngs)

  def _ff(self, x: jax.Array) -> jax.Array:
    h = _ACTIVATIONS[self.activation](self.intermediate(x.astype(self.dtype)))
    return self.output(h).astype(jnp.float32)

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    if self.stable:
      x = x + self.attention(self.norm(x), mask)
      return x + self._ff(self.final_norm(x))
    x = self.norm(x + self.attention(x, mask))
    return self.final_norm(x + self._ff(x))


class Encoder(nnx.Module):

  def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any, precision: Any, rngs: nnx.Rngs):
    self.stable = cfg.do_stable_layer_norm
    self.pos_conv = PositionalConv(cfg, dtype=dtype, precision=precision, rngs=rngs)
    self.norm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=jnp.float32, rngs=rngs)
    self.layers = nnx.List([EncoderLayer(cfg, dtype=dtype, precision=precision, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[list[jax.Array], jax.Array]:
    if mask is not None:
      x = jnp.where(mask[..., None], x, 0.0)
    x = x + self.pos_conv(x)
    if not self.stable:
      x = self.norm(x)
    hidden = [x]
    for layer in self.layers:
      x = layer(x, mask)
      hidden.append(x)
    return hidden, self.norm(x) if self.stable else x


class Wav2Vec2Model(nnx.Module):
  """waveform [B, N] -> (hidden_states, last_hidden_state) as HF returns them, float32 [B, F, hidden_size].

  hidden_states has num_hidden_layers + 1 entries; in stable models last_hidden_state is the final layer norm
  of hidden_states[-1], elsewhere it is hidden_states[-1].

  frame_mask [B, F] bool marks real frames (HF semantics, see `hf_frame_mask`); norm_stats (mean, var) [B, C]
  replaces the GroupNorm statistics of group-norm models.
  """

  def __init__(self, cfg: Wav2Vec2Config, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    self.feature_extractor = FeatureEncoder(cfg, dtype=dtype, precision=precision, rngs=rngs)
    self.feature_projection = FeatureProjection(cfg, dtype=dtype, precision=precision, rngs=rngs)
    self.encoder = Encoder(cfg, dtype=dtype, precision=precision, rngs=rngs)

  def __call__(self, wave: jax.Array, frame_mask: jax.Array | None = None,
               norm_stats=None) -> tuple[list[jax.Array], jax.Array]:
    x = self.feature_projection(self.feature_extractor(wave, norm_stats))
    return self.encoder(x, frame_mask)


def abstract_model(cfg: Wav2Vec2Config, dtype: Any = jnp.float32) -> Wav2Vec2Model:
  """The model with shapes only (no memory): the target layout of converted parameters."""
  return abstract_module(lambda rngs: Wav2Vec2Model(cfg, dtype=dtype, rngs=rngs))


def expected_params(cfg: Wav2Vec2Config) -> dict[str, Any]:
  """The parameter tree of the model as ShapeDtypeStructs (for common.check_covers and random weights)."""
  return common.abstract_params(abstract_model(cfg))


def model_from_params(cfg: Wav2Vec2Config, params: Mapping[str, Any], dtype: Any = jnp.float32) -> Wav2Vec2Model:
  """The model holding `params` (the nested dict layout of nnx.to_pure_dict(nnx.state(model, nnx.Param)))."""
  return common.with_params(abstract_model(cfg, dtype), params)


def random_params(cfg: Wav2Vec2Config, seed: int = 0) -> dict[str, Any]:
  """Random parameters in numpy (fast, no compilation): kernels N(0, 1 / fan_in), norms identity, biases 0.1 N."""
  return common.random_params(expected_params(cfg), seed, bias_std=0.1)


def random_model(cfg: Wav2Vec2Config | None = None, *, seed: int = 0, dtype: Any = jnp.float32) -> Wav2Vec2Model:
  """Random weights (`random_params`): wav2vec2-base sizes unless `cfg` is given."""
  cfg = cfg or base_config()
  return model_from_params(cfg, random_params(cfg, seed), dtype)


def params_digest(cfg_record: Mapping[str, Any], params: Mapping[str, Any]) -> str:
  """sha256 over a JSON record (model config and preprocessing) and every parameter's path, shape and bytes."""
  h = hashlib.sha256(json.dumps(cfg_record, sort_keys=True).encode())
  for path, value in sorted(common.flatten(params).items()):
    value = np.ascontiguousarray(value, np.float32)
    h.update(f"{path}:{value.shape}".encode())
    h.update(value.tobytes())
  return h.hexdigest()


# --- converted weights ---------------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> tuple[Wav2Vec2Config, dict[str, Any]]:
  """(model config, manifest config record) of a converted folder, without reading its parameters."""
  path = os.fspath(path)
  manifest = os.path.join(path, common.MANIFEST_FILE)
  if not os.path.isfile(manifest):
    raise UserError(f"{path} is not a converted wav2vec2/HuBERT folder (no {common.MANIFEST_FILE}); convert the "
                    f"HF model folder first with `python pipelines/convert.py wav2vec2 --src HF_DIR --dst {path}`.")
  try:
    with open(manifest) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{manifest} could not be read ({type(e).__name__}); convert the weights again.") from None
  if not isinstance(record, dict) or record.get("kind") != KIND:
    kind = record.get("kind") if isinstance(record, dict) else None
    raise UserError(f"{path} holds {kind!r} weights, not wav2vec2/HuBERT ones; point config.audio.weights to a "
                    "folder written by `python pipelines/convert.py wav2vec2`.")
  config = record.get("config")
  if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "digest" not in config:
    raise UserError(f"{manifest} lacks the model config or digest; convert the weights again with "
                    "`python pipelines/convert.py wav2vec2`.")
  return Wav2Vec2Config.from_dict(config["model"], manifest), config


def load_model(path: str | os.PathLike, dtype: Any = jnp.float32) -> tuple[Wav2Vec2Config, Wav2Vec2Model]:
  """(config, model) from a converted folder (pipelines/convert.py wav2vec2)."""
  cfg, _ = read_manifest(path)
  _, params = common.load_converted(path, KIND)
  common.check_covers(expected_params(cfg), params, os.fspath(path))
  return cfg, model_from_params(cfg, params, dtype)


# --- 25 fps features -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureSettings:
  """What, besides the weights, decides the features (all of it goes into the encoder's name)."""
  layers: tuple[int, ...] = (-1,)
  layer_reduce: str = "single"      # "single" (one hidden state) or "mean" (plain average of several)
  chunk_rows: int = 500             # rows kept per window (20 s at 25 fps)
  overlap_rows: int = 50            # context rows on each side of a window (2 s)
  chunk_batch: int = 8              # windows per compiled call (audio of fewer windows runs them one by one)
  dtype: str = "float32"
  sample_rate: int = SAMPLE_RATE
  fps: int = 25

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "FeatureSettings":
    """From config.audio (keys missing from older configs take the defaults above)."""
    d = cls()
    fps = int(c.get("fps", d.fps))
    layers = str(c.get("layers", "-1")).replace(" ", "")
    if not re.fullmatch(r"-?\d+(,-?\d+)*", layers):
      raise UserError(f"config.audio.layers = {layers!r} is not a comma-separated list of hidden-state indices; "
                      "use e.g. '-1' (the last) or '6,7,8'.")
    return cls(layers=tuple(int(v) for v in layers.split(",")), layer_reduce=str(c.get("layer_reduce", "single")),
               chunk_rows=int(round(float(c.get("chunk_seconds", d.chunk_rows / fps)) * fps)),
               overlap_rows=int(round(float(c.get("overlap_seconds", d.overlap_rows / fps)) * fps)),
               chunk_batch=int(c.get("chunk_batch", d.chunk_batch)), dtype=str(c.get("dtype", d.dtype)),
               sample_rate=int(c.get("sample_rate", d.sample_rate)), fps=fps)

  def check(self, cfg: Wav2Vec2Config) -> tuple[int, ...]:
    """Validated settings for this model: the layer indices, made non-negative."""
    n = cfg.num_hidden_layers + 1
    bad = [i for i in self.layers if not -n <= i < n]
    if bad:
      raise UserError(f"config.audio.layers has index {bad[0]} but this model has hidden states 0..{n - 1} "
                      f"(or -{n}..-1); pick indices in that range.")
    if self.layer_reduce not in ("single", "mean"):
      raise UserError(f"config.audio.layer_reduce = {self.layer_reduce!r}; use 'single' or 'mean'.")
    if self.layer_reduce == "single" and len(self.layers) != 1:
      raise UserError(f"config.audio.layers names {len(self.layers)} hidden states but layer_reduce is 'single'; "
                      "give one index or set config.audio.layer_reduce=mean.")
    if self.dtype not in _DTYPES:
      raise UserError(f"config.audio.dtype = {self.dtype!r}; use one of {', '.join(_DTYPES)}.")
    if self.sample_rate != SAMPLE_RATE:
      raise UserError(f"config.audio.sample_rate = {self.sample_rate} but wav2vec2/HuBERT take {SAMPLE_RATE} Hz "
                      f"audio; set config.audio.sample_rate={SAMPLE_RATE} (files are resampled on loading).")
    hop = self.sample_rate / self.fps
    if hop % cfg.total_stride:
      raise UserError(f"config.audio.fps = {self.fps} gives {hop:g} samples per video frame, not a multiple of "
                      f"the encoder's {cfg.total_stride}-sample frame step; use fps 25 (or 50).")
    if self.chunk_rows < 1 or self.overlap_rows < 0 or self.chunk_batch < 1:
      raise UserError(f"config.audio.chunk_seconds must cover at least one video frame (1/{self.fps} s), "
                      "overlap_seconds must not be negative and chunk_batch must be at least 1.")
    return tuple(sorted({i % n for i in self.layers}))


@functools.lru_cache(maxsize=16)
def _jitted(graphdef, layers: tuple[int, ...], k: int, rows: int, dtype: str):
  """(chunk, moments, trace counts), shared by every encoder of the same model structure and settings.

  chunk(state, windows [B, window_samples], frame_len [B], stats) -> [B, rows, D] features of whole windows;
  moments(state, pieces [B, window_samples], valid [B]) -> per-piece mean and M2 of the first conv's channels.
  """
  counts = {"chunk": 0, "moments": 0}
  frames = rows * k

  def chunk(state, windows, frame_len, stats):
    counts["chunk"] += 1
    model = nnx.merge(graphdef, state)
    mask = jnp.arange(frames)[None, :] < frame_len[:, None]
    hidden, last = model(windows, mask, stats)
    hidden = hidden[:-1] + [last]
    x = sum(hidden[i] for i in layers) / len(layers)
    return x.reshape(windows.shape[0], rows, k, -1).mean(2)

  def moments(state, pieces, valid):
    counts["moments"] += 1
    conv = nnx.merge(graphdef, state).feature_extractor.conv_layers[0].conv
    y = conv(pieces.astype(_DTYPES[dtype])[..., None]).astype(jnp.float32)
    m = (jnp.arange(y.shape[1])[None, :] < valid[:, None])[..., None]
    n = jnp.maximum(valid, 1).astype(jnp.float32)[:, None]
    mean = jnp.where(m, y, 0.0).sum(1) / n
    return mean, jnp.where(m, jnp.square(y - mean[:, None]), 0.0).sum(1)

  return jax.jit(chunk), jax.jit(moments), counts


def _mean_var(wave: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
  """Mean and (biased) variance of a waveform in float64, one block at a time (no copy of the whole signal)."""
  n = len(wave)
  mean = sum(float(wave[i:i + block].sum(dtype=np.float64)) for i in range(0, n, block)) / n
  sq = sum(float(np.square(wave[i:i + block].astype(np.float64) - mean).sum()) for i in range(0, n, block))
  return mean, sq / n


class Wav2Vec2Encoder:
  """`AudioEncoder` over a converted wav2vec2/HuBERT folder: float32 [num_frames(len(wave)), hidden_size].

  Built from `config.audio` (encoder "wav2vec2", weights = the converted folder, layers, layer_reduce,
  chunk_seconds, overlap_seconds, chunk_batch, dtype). Only the manifest is read until the first `encode`, so
  `name` and `feature_dim` are cheap.
  """

  def __init__(self, audio_config: ml_collections.ConfigDict):
    weights = os.path.expanduser(str(audio_config.weights or ""))
    if not weights:
      raise UserError("config.audio.encoder is 'wav2vec2' but config.audio.weights is empty; convert a HF model "
                      "folder with `python pipelines/convert.py wav2vec2 --src HF_DIR --dst DIR` and pass "
                      "--config.audio.weights=DIR.")
    cfg, record = read_manifest(weights)
    settings = FeatureSettings.from_config(audio_config)
    self._setup(cfg, settings, weights_id=f"{os.path.basename(os.path.normpath(weights))}.{record['digest'][:8]}",
                do_normalize=bool(record.get("do_normalize", False)),
                loader=lambda dtype: load_model(weights, dtype)[1])

  @classmethod
  def from_model(cls, model: Wav2Vec2Model | None, cfg: Wav2Vec2Config,
                 settings: FeatureSettings = FeatureSettings(), *, weights_id: str = "random",
                 do_normalize: bool = False) -> "Wav2Vec2Encoder":
    """An encoder over an in-memory model (built with dtype settings.dtype)."""
    return cls.from_loader(lambda dtype: model, cfg, settings, weights_id=weights_id, do_normalize=do_normalize)

  @classmethod
  def from_loader(cls, loader, cfg: Wav2Vec2Config, settings: FeatureSettings, *, weights_id: str,
                  do_normalize: bool = False) -> "Wav2Vec2Encoder":
    """An encoder whose model is loader(compute dtype), called on the first encode."""
    self = cls.__new__(cls)
    self._setup(cfg, settings, weights_id=weights_id, do_normalize=do_normalize, loader=loader)
    return self

  def _setup(self, cfg, settings, *, weights_id, do_normalize, loader):
    self.cfg, self.settings = cfg, settings
    self.layers = settings.check(cfg)
    self.do_normalize = do_normalize
    self._loader = loader
    self._fns = None
    self.trace_counts = {"chunk": 0, "moments": 0}   # traces of its jitted functions (shared, see _jitted)
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "-", weights_id)
    s = settings
    self.name = (f"{cfg.model_type}-{safe_id}-{'norm' if do_normalize else 'raw'}"
                 f"-layers{'+'.join(str(i) for i in self.layers)}-{s.layer_reduce}"
                 f"-chunk{s.chunk_rows}ctx{s.overlap_rows}-{s.fps}fps-{s.dtype}")
    self.feature_dim = cfg.hidden_size
    self.rows_per_window = s.chunk_rows + 2 * s.overlap_rows
    self.frames_per_row = s.sample_rate // s.fps // cfg.total_stride
    self.left_pad = (cfg.receptive_field - cfg.total_stride) // 2
    frames = self.rows_per_window * self.frames_per_row
    self.window_samples = cfg.total_stride * (frames - 1) + cfg.receptive_field

  # -- compiled pieces --

  def _compiled(self):
    if self._fns is None:
      graphdef, state = nnx.split(self._loader(_DTYPES[self.settings.dtype]))
      chunk, moments, self.trace_counts = _jitted(graphdef, self.layers, self.frames_per_row,
                                                  self.rows_per_window, self.settings.dtype)
      self._fns = state, chunk, moments
    return self._fns

  # -- host side --

  def _window(self, wave: np.ndarray, start: int, norm: tuple[float, float]) -> np.ndarray:
    """window_samples samples of the normalized waveform from `start` (original coordinates), zeros outside."""
    out = np.zeros(self.window_samples, np.float32)
    lo, hi = max(start, 0), min(start + self.window_samples, len(wave))
    if hi > lo:
      out[lo - start:hi - start] = (wave[lo:hi] - norm[0]) * norm[1]
    return out

  def _batches(self, items: list) -> Iterator[list]:
    """Items in calls of chunk_batch (the last one padded with None) or, for fewer items, one at a time."""
    size = self.settings.chunk_batch if len(items) >= self.settings.chunk_batch else 1
    for i in range(0, len(items), size):
      group = items[i:i + size]
      yield group + [None] * (size - len(group))

  def _norm_stats(self, wave: np.ndarray, frames: int, norm) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every first-conv channel over the whole padded waveform (Chan's parallel merge)."""
    state, _, moments = self._compiled()
    k0, s0 = self.cfg.conv_kernel[0], self.cfg.conv_stride[0]
    padded = self.cfg.total_stride * (frames - 1) + self.cfg.receptive_field
    total = (padded - k0) // s0 + 1
    per_piece = (self.window_samples - k0) // s0 + 1
    pieces = [(p * per_piece, min(per_piece, total - p * per_piece)) for p in range(-(-total // per_piece))]
    count, mean, m2 = 0, 0.0, 0.0
    for group in self._batches(pieces):
      windows = np.stack([self._window(wave, s0 * g[0] - self.left_pad, norm) if g else
                          np.zeros(self.window_samples, np.float32) for g in group])
      valid = np.array([g[1] if g else 0 for g in group], np.int32)
      means, m2s = jax.device_get(moments(state, windows, valid))
      for n, mu, q in zip(valid.tolist(), means.astype(np.float64), m2s.astype(np.float64)):
        if n:
          new = count + n
          delta = mu - mean
          mean = mean + delta * (n / new)
          m2 = m2 + q + delta * delta * (count * n / new)
          count = new
    return np.asarray(mean, np.float32), np.asarray(m2 / count, np.float32)

  def _plan(self, rows: int) -> list[tuple[int, int, int, int]]:
    """(window's first row, first kept row, end of kept rows, valid rows in the window) for each window."""
    chunk, wr = self.settings.chunk_rows, self.rows_per_window
    if rows <= wr:
      return [(0, 0, rows, rows)]
    return [(min(max(s - self.settings.overlap_rows, 0), rows - wr), s, min(s + chunk, rows), wr)
            for s in range(0, rows, chunk)]

  def iter_rows(self, waveform: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) pieces of the features in order; one call is in flight while the last one is copied."""
    wave = np.asarray(waveform, np.float32).reshape(-1)
    rows = num_frames(len(wave), self.settings.sample_rate, self.settings.fps)
    if rows == 0:
      return
    norm = (np.float32(0.0), np.float32(1.0))
    if self.do_normalize:  # HF's processor: zero mean, unit variance over the whole utterance
      mean, var = _mean_var(wave)
      norm = (np.float32(mean), np.float32(1.0 / math.sqrt(var + INPUT_NORM_EPS)))
    k, step = self.frames_per_row, self.cfg.total_stride
    state, chunk, _ = self._compiled()
    stats = None
    if self.cfg.feat_extract_norm == "group":
      stats = self._norm_stats(wave, rows * k, norm)
    pending = None
    for group in self._batches(self._plan(rows)):
      windows = np.stack([self._window(wave, step * k * g[0] - self.left_pad, norm) if g else
                          np.zeros(self.window_samples, np.float32) for g in group])
      frame_len = np.array([g[3] * k if g else self.rows_per_window * k for g in group], np.int32)
      batch_stats = None if stats is None else tuple(np.broadcast_to(s, (len(group), len(s))) for s in stats)
      out = chunk(state, windows, frame_len, batch_stats)
      if pending is not None:
        yield from self._emit(*pending)
      pending = out, group
    yield from self._emit(*pending)

  @staticmethod
  def _emit(out, group):
    """The kept rows of each real window of a finished call."""
    host = np.asarray(jax.device_get(out))
    for j, g in enumerate(group):
      if g is not None:
        first, keep_from, keep_to, _ = g
        yield keep_from, host[j, keep_from - first:keep_to - first]

  def encode(self, waveform: np.ndarray) -> np.ndarray:
    """float32 [num_frames(len(waveform)), hidden_size] from a mono float32 waveform at 16 kHz."""
    wave = np.asarray(waveform, np.float32).reshape(-1)
    out = np.empty((num_frames(len(wave), self.settings.sample_rate, self.settings.fps), self.feature_dim),
                   np.float32)
    for start, rows in self.iter_rows(wave):
      out[start:start + len(rows)] = rows
    return out


def random_encoder(cfg: Wav2Vec2Config | None = None, *, seed: int = 0, dtype: str = "bfloat16",
                   **settings) -> Wav2Vec2Encoder:
  """An encoder over random weights (wav2vec2-base sizes unless `cfg` is given), for tests and benchmarks."""
  cfg = cfg or base_config()
  return Wav2Vec2Encoder.from_loader(lambda dt: random_model(cfg, seed=seed, dtype=dt), cfg,
                                     FeatureSettings(dtype=dtype, **settings), weights_id=f"random{seed}")


def throughput(encoder: Wav2Vec2Encoder, seconds: float = 3600.0, *, seed: int = 0) -> dict[str, Any]:
  """Times encoder.encode on `seconds` of random audio after a compiling warm-up of the same length.

  Real-time factor = seconds / wall time of the timed call (host work and transfers included).
  """
  rng = np.random.default_rng(seed)
  wave = (0.1 * rng.standard_normal(int(seconds * encoder.settings.sample_rate))).astype(np.float32)
  t0 = time.perf_counter()
  encoder.encode(wave)
  warm_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  feats = encoder.encode(wave)
  wall = time.perf_counter() - t0
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"device": jax.devices()[0].device_kind, "audio_seconds": seconds, "rows": int(feats.shape[0]),
          "feature_dim": int(feats.shape[1]), "dtype": encoder.settings.dtype, "encoder": encoder.name,
          "first_call_s": warm_s, "wall_s": wall, "realtime_factor": seconds / wall,
          "peak_device_bytes": stats.get("peak_bytes_in_use"), "traces": dict(encoder.trace_counts),
          "finite": bool(np.isfinite(feats).all())}
