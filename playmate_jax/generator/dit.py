"""The motion DiT: Conformer trunk with adaLN-Zero conditioning, Pose-MLP and Exp-MLP heads, emotion controller.

Tokens: K previous-motion frames, then L current frames (noisy motion + audio embedding), with sinusoidal
positions and a learned segment embedding. The conditioning vector (timestep + identity) modulates every block
and the final norm with adaLN-Zero. Stage 2 adds the emotion controller: transformer blocks over the trunk's
features plus an emotion embedding, whose output is added to the features the Exp-MLP reads (the Pose-MLP reads
the trunk's alone). Computation runs in `model_cfg.dtype`; parameters, norms (their statistics), the attention
softmax and the output are float32; the residual stream is stored in `model_cfg.residual_dtype` (each gated sum
is formed in float32, then stored).

The model config is the one `configlib.validate` passed (dtype, attention kernel, heads dividing dim): not
checked again here.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from playmate_jax.motion import EMOTIONS, EXP_DIM, IDENTITY_DIM, MOTION_DIM, POSE_DIM  # noqa: F401  (re-exported)

TIME_FREQ_DIM = 256                  # width of the sinusoidal timestep features
EMOTION_PARAMS = "emotion"           # the emotion controller's key in the parameter tree (stage 2 trains only it)
NULL_EMOTION = -1                    # emotion label of unknown or dropped emotion (the embedding's last row)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}   # configlib.DTYPES's names
_zeros = nnx.initializers.zeros


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """[N] positions or timesteps -> [N, dim] float32 features (cos half, then sin half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half, 1))
  args = x.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Parameter-free LayerNorm over the last axis, in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN: x [B, N, D] with per-sample shift/scale [B, D]."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


def dropout(x: jax.Array, rate: float, key: jax.Array | None, bits: int = 32) -> jax.Array:
  """Inverted dropout; identity when key is None or rate is 0.

  bits=32: each element kept with probability 1 - rate, from one 32-bit draw of its own (jax.random.bernoulli).
  bits=8: each element kept when a random byte is below round((1 - rate) * 256), four bytes from each 32-bit
  threefry word, so the masks cost a quarter of the random numbers; the kept share is that threshold / 256 (0.8984
  for rate 0.1) and the kept values are scaled by its inverse, so the expectation is still x. Rates the bytes
  cannot express (a threshold of 0 or 256) fall back to bits=32.
  """
  if key is None or rate <= 0.0:
    return x
  threshold = round((1.0 - rate) * 256)
  if bits == 8 and 1 <= threshold <= 255:
    lead, d = x.shape[:-1], x.shape[-1]
    words = jax.random.bits(key, (*lead, -(-d // 4)), jnp.uint32)
    draws = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(*lead, -1)[..., :d]
    return jnp.where(draws < threshold, x * (256.0 / threshold), 0).astype(x.dtype)
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def compute_dtype(model_cfg: Any) -> Any:
  """config.model.dtype as a JAX dtype."""
  return _DTYPES[model_cfg.dtype]


def residual_dtype(model_cfg: Any) -> Any:
  """config.model.residual_dtype as a JAX dtype: what the residual stream between sub-layers is stored in."""
  return _DTYPES[model_cfg.residual_dtype]


def gated_sum(x: jax.Array, h: jax.Array, gate: jax.Array | None = None) -> jax.Array:
  """x + gate * h formed in float32 and stored in x's dtype (the residual stream's); gate [B, D] per sample."""
  h = h.astype(jnp.float32)
  if gate is not None:
    h = gate[:, None] * h
  return (x.astype(jnp.float32) + h).astype(x.dtype)


def attention_kernel(model_cfg: Any) -> str:
  """config.model.attention resolved: "cudnn" (cuDNN's fused attention) or "xla" (two einsums and a float32
  softmax). "auto" picks cuDNN on a GPU for a bfloat16/float16 model, where its fused kernel is the faster one
  (BENCHMARKS.md), and XLA elsewhere."""
  kernel = model_cfg.attention
  if kernel == "auto":
    half = compute_dtype(model_cfg) in (jnp.bfloat16, jnp.float16)
    kernel = "cudnn" if half and jax.default_backend() == "gpu" else "xla"
  return kernel


class SelfAttention(nnx.Module):
  """Multi-head self-attention over all tokens (causal: each token over itself and those before it); softmax in
  float32 (inside cuDNN's kernel with kernel="cudnn")."""

  def __init__(self, dim: int, num_heads: int, *, dtype: Any, rngs: nnx.Rngs, kernel: str = "xla",
               causal: bool = False):
    self.num_heads = num_heads
    self.kernel = kernel
    self.causal = causal
    self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    q, k, v = jnp.moveaxis(self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads), 2, 0)
    if self.kernel == "cudnn":
      causal = {"is_causal": True} if self.causal else {}
      return self.out(jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **causal).reshape(b, n, d))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if self.causal:
      logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -jnp.inf)
    probs = jax.nn.softmax(logits / math.sqrt(d // self.num_heads), axis=-1).astype(v.dtype)
    return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, d))


class ConvModule(nnx.Module):
  """Conformer convolution module: pointwise + GLU, depthwise temporal conv, LayerNorm, swish, pointwise."""

  def __init__(self, dim: int, kernel: int, *, dtype: Any, rngs: nnx.Rngs, causal: bool = False):
    self.dtype = dtype
    self.causal = causal
    self.pw_in = nnx.Linear(dim, 2 * dim, dtype=dtype, rngs=rngs)
    self.depthwise = nnx.Conv(dim, dim, (kernel,), padding="SAME", feature_group_count=dim, dtype=dtype,
                              rngs=rngs)
    self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
    self.pw_out = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.glu(self.pw_in(x), axis=-1)
    x = self.norm(depthwise_conv1d(x, self.depthwise.kernel[...], self.depthwise.bias[...],
                                   self.causal).astype(jnp.float32))
    return self.pw_out(jax.nn.silu(x).astype(self.dtype))


def depthwise_conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array, causal: bool = False) -> jax.Array:
  """nnx.Conv(dim, dim, (k,), padding="SAME", feature_group_count=dim) on x [B, N, dim] with its kernel [k, 1, dim]
  and bias [dim], computed as k shifted multiply-adds in x's dtype; causal: all k taps on the frame and the ones
  before it (the padding all on the left).

  XLA fuses the taps into one elementwise kernel, forward and backward, where a grouped convolution costs layout
  transposes and a slow weight gradient on the GPU (BENCHMARKS.md has the profile).
  """
  taps, n = kernel.shape[0], x.shape[1]
  left = taps - 1 if causal else (taps - 1) // 2          # "SAME": the extra pad of an even kernel goes right
  padded = jnp.pad(x, ((0, 0), (left, taps - 1 - left), (0, 0)))
  w = kernel[:, 0].astype(x.dtype)
  out = padded[:, 0:n] * w[0]
  for i in range(1, taps):
    out = out + padded[:, i:i + n] * w[i]
  return out + bias.astype(x.dtype)


class FeedForward(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x)))


class ConformerBlock(nnx.Module):
  """[adaLN] attention -> [adaLN] conv module -> [adaLN] feed-forward, each gated (adaLN-Zero)."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, conv_kernel: int, dropout_rate: float, *,
               dtype: Any, rngs: nnx.Rngs, attention: str = "xla", causal: bool = False, dropout_bits: int = 32):
    self.dtype = dtype
    self.dropout_rate = dropout_rate
    self.dropout_bits = dropout_bits
    # shift, scale, gate for each of the 3 sub-layers; zero-init so the block starts as the identity.
    self.ada = nnx.Linear(dim, 9 * dim, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)
    self.attn = SelfAttention(dim, num_heads, dtype=dtype, rngs=rngs, kernel=attention, causal=causal)
    self.conv = ConvModule(dim, conv_kernel, dtype=dtype, rngs=rngs, causal=causal)
    self.ffn = FeedForward(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, c: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """x: residual stream [B, N, D] (float32 or bfloat16); c: silu(conditioning) [B, D] float32."""
    return self.modulated(x, self.ada(c), dropout_key)

  def modulated(self, x: jax.Array, ada: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """The block given its adaLN projection ada = self.ada(c) [B, 9 D] (shift, scale, gate per sub-layer)."""
    mods = jnp.split(ada, 9, axis=-1)
    keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
    for i, layer in enumerate((self.attn, self.conv, self.ffn)):
      shift, scale, gate = mods[3 * i:3 * i + 3]
      h = layer(modulate(layer_norm(x), shift, scale).astype(self.dtype))
      x = gated_sum(x, dropout(h, self.dropout_rate, keys[i], self.dropout_bits), gate)
    return x


class MLPHead(nnx.Module):
  """Linear -> SiLU -> Linear; the output layer is zero-initialized (as DiT's final layer)."""

  def __init__(self, dim: int, hidden: int, out: int, *, dtype: Any, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, out, dtype=dtype, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(x)))


class TransformerBlock(nnx.Module):
  """Pre-norm self-attention and feed-forward, each residual, over the residual stream (float32 or bfloat16)."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout_rate: float, *, dtype: Any,
               rngs: nnx.Rngs, attention: str = "xla", causal: bool = False, dropout_bits: int = 32):
    self.dtype = dtype
    self.dropout_rate = dropout_rate
    self.dropout_bits = dropout_bits
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
    self.attn = SelfAttention(dim, num_heads, dtype=dtype, rngs=rngs, kernel=attention, causal=causal)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=jnp.float32, rngs=rngs)
    self.ffn = FeedForward(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    keys = [None] * 2 if dropout_key is None else list(jax.random.split(dropout_key, 2))
    for norm, layer, key in ((self.norm1, self.attn, keys[0]), (self.norm2, self.ffn, keys[1])):
      x = gated_sum(x, dropout(layer(norm(x).astype(self.dtype)), self.dropout_rate, key, self.dropout_bits))
    return x


class EmotionController(nnx.Module):
  """Stage 2: a residual for the Exp-MLP's input from the trunk's features and the clip's emotion.

  Emotion embedding: a learned table of len(EMOTIONS) rows plus a null row (NULL_EMOTION: unknown or dropped),
  added to every token of the trunk's features, then `depth` transformer blocks and a zero-initialized projection,
  so a fresh controller adds exactly zero.
  """

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, depth: int, dropout_rate: float, *, dtype: Any,
               rngs: nnx.Rngs, attention: str = "xla", causal: bool = False, dropout_bits: int = 32,
               residual: Any = jnp.float32):
    self.dtype = dtype
    self.residual = residual
    self.embedding = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (len(EMOTIONS) + 1, dim), jnp.float32))
    self.blocks = nnx.List([TransformerBlock(dim, num_heads, mlp_ratio, dropout_rate, dtype=dtype, rngs=rngs,
                                             attention=attention, causal=causal, dropout_bits=dropout_bits)
                            for _ in range(depth)])
    self.out = nnx.Linear(dim, dim, kernel_init=_zeros, bias_init=_zeros, dtype=dtype, rngs=rngs)

  def __call__(self, h: jax.Array, emotion: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """h: trunk features [B, L, dim]; emotion [B] int (0..7, or NULL_EMOTION) -> residual [B, L, dim] float32."""
    row = jnp.where(emotion < 0, len(EMOTIONS), emotion)
    x = (h.astype(jnp.float32) + self.embedding[...][row][:, None]).astype(self.residual)
    for i, block in enumerate(self.blocks):
      x = block(x, None if dropout_key is None else jax.random.fold_in(dropout_key, i))
    return self.out(x.astype(self.dtype)).astype(jnp.float32)


def _run_block(block: ConformerBlock, x: jax.Array, ada: jax.Array, key: jax.Array | None) -> jax.Array:
  return block.modulated(x, ada, key)


_remat_block = nnx.remat(_run_block)


class MotionDiT(nnx.Module):
  """Predicts the diffusion noise of L motion frames from audio, K previous frames and the identity, and in
  stage 2 (emotion_depth > 0: with an emotion controller) from the emotion.

  model_cfg.audio_lookahead = A >= 0 makes it a live model: frame j of a window depends on audio frames up to j + A
  and on nothing later. The audio convolution reads c frames before each frame and A after it; attention and the
  temporal convolutions are causal (the previous-motion tokens come first, so every frame still sees them). A window
  can then be sampled as soon as its audio up to its last frame + A has arrived. -1: offline (the window's whole
  audio, c frames each side, and attention both ways)."""

  def __init__(self, model_cfg: Any, *, audio_dim: int, audio_context: int, emotion_depth: int = 0,
               rngs: nnx.Rngs):
    dim = model_cfg.dim
    dtype = compute_dtype(model_cfg)
    attention = attention_kernel(model_cfg)
    self.dim = dim
    self.dtype = dtype
    self.residual = residual_dtype(model_cfg)
    self.remat = bool(model_cfg.remat)
    bits = int(model_cfg.dropout_bits)
    self.audio_dim = audio_dim
    self.audio_context = audio_context
    self.lookahead = int(model_cfg.audio_lookahead)
    causal = self.lookahead >= 0
    right = self.lookahead if causal else audio_context
    # Token embeddings.
    self.motion_in = nnx.Linear(MOTION_DIM, dim, dtype=dtype, rngs=rngs)
    self.prev_in = nnx.Linear(MOTION_DIM, dim, dtype=dtype, rngs=rngs)
    self.audio_conv = nnx.Conv(audio_dim, dim, (audio_context + 1 + right,), padding="VALID", dtype=dtype, rngs=rngs)
    self.audio_proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    normal = nnx.initializers.normal(0.02)
    self.audio_null = nnx.Param(normal(rngs.params(), (dim,), jnp.float32))
    self.segment = nnx.Param(normal(rngs.params(), (2, dim), jnp.float32))   # 0: previous, 1: current
    # Conditioning (float32: it is [B, dim], cheap).
    self.time_fc1 = nnx.Linear(TIME_FREQ_DIM, dim, rngs=rngs)
    self.time_fc2 = nnx.Linear(dim, dim, rngs=rngs)
    self.identity_in = nnx.Linear(IDENTITY_DIM, dim, rngs=rngs)
    self.blocks = nnx.List([
        ConformerBlock(dim, model_cfg.num_heads, model_cfg.mlp_ratio, model_cfg.conv_kernel, model_cfg.dropout,
                       dtype=dtype, rngs=rngs, attention=attention, causal=causal, dropout_bits=bits)
        for _ in range(model_cfg.depth)])
    self.final_ada = nnx.Linear(dim, 2 * dim, kernel_init=_zeros, bias_init=_zeros, rngs=rngs)
    self.pose_head = MLPHead(dim, model_cfg.head_hidden, POSE_DIM, dtype=dtype, rngs=rngs)
    self.exp_head = MLPHead(dim, model_cfg.head_hidden, EXP_DIM, dtype=dtype, rngs=rngs)
    # Stage 2 only; its attribute name is EMOTION_PARAMS.
    self.emotion = EmotionController(dim, model_cfg.num_heads, model_cfg.mlp_ratio, emotion_depth, model_cfg.dropout,
                                     dtype=dtype, rngs=rngs, attention=attention, causal=causal, dropout_bits=bits,
                                     residual=self.residual) if emotion_depth > 0 else None

  def condition(self, t: jax.Array, identity: jax.Array) -> jax.Array:
    """Conditioning vector [B, dim] float32 = MLP(timestep features) + Linear(identity)."""
    temb = self.time_fc2(jax.nn.silu(self.time_fc1(sinusoidal_embedding(t, TIME_FREQ_DIM))))
    return temb + self.identity_in(identity.astype(jnp.float32))

  def embed_audio(self, audio: jax.Array, audio_keep: jax.Array) -> jax.Array:
    """[B, L+2c, D] -> [B, L, dim]; samples with audio_keep False get the learned null embedding. A live model reads
    the first L + c + A frames only."""
    if self.lookahead >= 0:
      audio = audio[:, :audio.shape[1] - (self.audio_context - self.lookahead)]
    a = self.audio_proj(jax.nn.silu(self.audio_conv(audio.astype(self.dtype))))
    return jnp.where(audio_keep[:, None, None], a, self.audio_null[...].astype(a.dtype))

  def condition_tokens(self, audio: jax.Array, audio_keep: jax.Array, prev: jax.Array) -> tuple[jax.Array, jax.Array]:
    """What the trunk reads of the audio and the previous motion, neither of which depends on x_t or t: the K
    previous-motion tokens [B, K, dim] float32 (segment and position embeddings added) and the audio embedding of
    the L current frames [B, L, dim] in the compute dtype. The sampler computes them once per window."""
    k = prev.shape[1]
    prev_tokens = self.prev_in(prev.astype(self.dtype)).astype(jnp.float32) + self.segment[...][0]
    return prev_tokens + sinusoidal_embedding(jnp.arange(k), self.dim), self.embed_audio(audio, audio_keep)

  def modulations(self, cond: jax.Array) -> tuple[jax.Array, ...]:
    """Every block's adaLN projection [B, 9 dim] and, last, the final norm's [B, 2 dim] (float32), from the
    conditioning vector [B, dim]. They depend on the timestep and identity alone: the sampler computes them for all
    its DDIM steps before its loop (`trunk_modulated`)."""
    c = jax.nn.silu(cond)
    return tuple(block.ada(c) for block in self.blocks) + (self.final_ada(c),)

  def trunk(self, x_t: jax.Array, t: jax.Array, audio: jax.Array, audio_keep: jax.Array, prev: jax.Array,
            identity: jax.Array, *, dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Features of the L current tokens [B, L, dim] (after the modulated final norm) and the conditioning."""
    cond = self.condition(t, identity)
    tokens = self.condition_tokens(audio, audio_keep, prev)
    return self.trunk_modulated(x_t, tokens, self.modulations(cond), dropout_key=dropout_key), cond

  def trunk_modulated(self, x_t: jax.Array, tokens: tuple[jax.Array, jax.Array], mods: tuple[jax.Array, ...], *,
                      dropout_key: jax.Array | None = None) -> jax.Array:
    """`trunk`'s features from precomputed tokens = condition_tokens(...) and mods = modulations(cond)."""
    prev_tokens, audio_embedding = tokens
    k, l = prev_tokens.shape[1], x_t.shape[1]
    if audio_embedding.shape[1] != l:
      raise ValueError(f"audio has {audio_embedding.shape[1] + 2 * self.audio_context} frames; expected L + 2c = "
                       f"{l + 2 * self.audio_context}.")
    cur = (self.motion_in(x_t.astype(self.dtype)) + audio_embedding).astype(jnp.float32) + self.segment[...][1]
    x = jnp.concatenate([prev_tokens, cur + sinusoidal_embedding(jnp.arange(k, k + l), self.dim)], axis=1)
    x = x.astype(self.residual)
    # model.remat: each block's activations are recomputed in the backward pass instead of kept (less memory, more
    # work; `benchmark.py train --variant r:model.remat=true` measures both, not yet on a GPU).
    run = _remat_block if self.remat else _run_block
    for i, block in enumerate(self.blocks):
      x = run(block, x, mods[i], None if dropout_key is None else jax.random.fold_in(dropout_key, i))
    shift, scale = jnp.split(mods[-1], 2, axis=-1)
    return modulate(layer_norm(x[:, k:]), shift, scale)

  def heads(self, h_pose: jax.Array, h_exp: jax.Array) -> jax.Array:
    """Pose-MLP(h_pose) and Exp-MLP(h_exp) -> [B, L, 69] float32 in motion order [exp, pose]."""
    exp = self.exp_head(h_exp.astype(self.dtype))
    pose = self.pose_head(h_pose.astype(self.dtype))
    return jnp.concatenate([exp, pose], axis=-1).astype(jnp.float32)

  def __call__(self, x_t: jax.Array, t: jax.Array, audio: jax.Array, audio_keep: jax.Array, prev: jax.Array,
               identity: jax.Array, emotion: jax.Array | None = None, *,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Noise prediction eps [B, L, 69] float32; emotion [B] int (NULL_EMOTION: none) is read by the emotion
    controller only, None meaning NULL_EMOTION for every sample (a model without a controller ignores it)."""
    h, _ = self.trunk(x_t, t, audio, audio_keep, prev, identity, dropout_key=dropout_key)
    key = None if dropout_key is None else jax.random.fold_in(dropout_key, len(self.blocks))
    return self.output(h, emotion, key)

  def predict(self, x_t: jax.Array, tokens: tuple[jax.Array, jax.Array], mods: tuple[jax.Array, ...],
              emotion: jax.Array | None = None) -> jax.Array:
    """`__call__` (no dropout) from precomputed tokens = condition_tokens(...) and mods = modulations(condition(...)):
    what the sampler runs at every DDIM step."""
    return self.output(self.trunk_modulated(x_t, tokens, mods), emotion)

  def output(self, h: jax.Array, emotion: jax.Array | None, dropout_key: jax.Array | None = None) -> jax.Array:
    """eps [B, L, 69] from the trunk's features: the Pose-MLP reads them, the Exp-MLP them plus the emotion
    controller's residual (stage 2)."""
    if self.emotion is None:
      return self.heads(h, h)
    if emotion is None:
      emotion = jnp.full((h.shape[0],), NULL_EMOTION, jnp.int32)
    return self.heads(h, h + self.emotion(h, emotion, dropout_key))


def count_params(tree: Any) -> int:
  """Number of parameters of a module or a state/pytree of arrays."""
  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(tree)))
