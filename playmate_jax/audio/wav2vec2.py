"""wav2vec2 / HuBERT speech encoders in Flax NNX, and their converted weights.

The model computes what Hugging Face's `Wav2Vec2Model` / `HubertModel` compute in eval mode, for both released
layouts: a group-norm feature extractor (GroupNorm on the first conv only, no conv bias) with a post-layer-norm
encoder (wav2vec2-base, HuBERT-base), and a layer-norm feature extractor (LayerNorm after every conv, conv bias)
with a pre-layer-norm ("stable") encoder (wav2vec2-large-lv60, HuBERT-large). The model returns HF's
`hidden_states` and `last_hidden_state`: hidden state 0 is the encoder input (after the positional convolution,
and its layer norm in post-LN models), i the output of transformer layer i; stable models apply a final layer
norm to the last one to give `last_hidden_state` (HF 5 keeps it out of `hidden_states`). A padded batch takes a
frame mask as HF builds it from `attention_mask` (`hf_frame_mask`): masked frames are zeroed before the positional
convolution and are never attended to, while GroupNorm statistics span the whole padded input, exactly as in HF;
`norm_stats` replaces those statistics, so that chunks of a long file can be normalized with whole-file ones.

Turning a waveform into one feature row per video frame is playmate_jax.audio.wav2vec2_features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from playmate_jax import shapes
from playmate_jax.errors import UserError
from playmate_jax.shapes import abstract_module

KIND = "wav2vec2"                 # converted-weights kind (manifest.json)
SAMPLE_RATE = 16000               # every released wav2vec2 / HuBERT checkpoint is trained on 16 kHz audio
NORM_EPS = 1e-5                   # torch's default eps of the conv stack's GroupNorm / LayerNorm
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
  """The parameter tree of the model as ShapeDtypeStructs (for shapes.check_covers and random weights)."""
  return shapes.abstract_params(abstract_model(cfg))


def model_from_params(cfg: Wav2Vec2Config, params: Mapping[str, Any], dtype: Any = jnp.float32) -> Wav2Vec2Model:
  """The model holding `params` (the nested dict layout of nnx.to_pure_dict(nnx.state(model, nnx.Param)))."""
  return shapes.with_params(abstract_model(cfg, dtype), params)


def random_params(cfg: Wav2Vec2Config, seed: int = 0) -> dict[str, Any]:
  """Random parameters in numpy (fast, no compilation): kernels N(0, 1 / fan_in), norms identity, biases 0.1 N."""
  return shapes.random_params(expected_params(cfg), seed, bias_std=0.1)


def random_model(cfg: Wav2Vec2Config | None = None, *, seed: int = 0, dtype: Any = jnp.float32) -> Wav2Vec2Model:
  """Random weights (`random_params`): wav2vec2-base sizes unless `cfg` is given."""
  cfg = cfg or base_config()
  return model_from_params(cfg, random_params(cfg, seed), dtype)


def params_digest(cfg_record: Mapping[str, Any], params: Mapping[str, Any]) -> str:
  """sha256 over a JSON record (model config and preprocessing) and every parameter's path, shape and bytes."""
  h = hashlib.sha256(json.dumps(cfg_record, sort_keys=True).encode())
  for path, value in sorted(shapes.flatten(params).items()):
    value = np.ascontiguousarray(value, np.float32)
    h.update(f"{path}:{value.shape}".encode())
    h.update(value.tobytes())
  return h.hexdigest()


# --- converted weights ---------------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> tuple[Wav2Vec2Config, dict[str, Any]]:
  """(model config, manifest config record) of a converted folder, without reading its parameters."""
  path = os.fspath(path)
  manifest = os.path.join(path, shapes.MANIFEST_FILE)
  if not os.path.isfile(manifest):
    raise UserError(f"{path} is not a converted wav2vec2/HuBERT folder (no {shapes.MANIFEST_FILE}); convert the "
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
  _, params = shapes.load_converted(path, KIND)
  shapes.check_covers(expected_params(cfg), params, os.fspath(path))
  return cfg, model_from_params(cfg, params, dtype)
