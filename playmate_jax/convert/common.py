"""What every weight converter shares: strict consumption of a source state dict, layout changes from
PyTorch to channels-last, folding of eval-time normalizations, and the converted-weights folder format.

A converter walks the target model and `take`s each source tensor it needs from a `SourceDict`; at the end
`finish()` fails if any source key was never used, so a converter cannot silently drop weights, and `take`
fails on a missing key or a wrong shape. Every failure is one `UserError` sentence naming the file and key.

Converted weights are a folder holding `params.npz` (one array per parameter, keys are '/'-joined paths of
the nested parameter dict) and `manifest.json` (`kind`, the model `config`, the `source` it came from and the
format `version`).
"""

import json
import os
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from playmate_jax.errors import UserError

FORMAT_VERSION = 1
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"


class SourceDict:
  """A source state dict being consumed key by key (see the module docstring)."""

  def __init__(self, tensors: Mapping[str, Any], file: str, strip_prefixes: Iterable[str] = ()):
    self.file = os.fspath(file)
    self._tensors: dict[str, np.ndarray] = {}
    prefixes = tuple(strip_prefixes)
    for key, value in tensors.items():
      for prefix in prefixes:
        if key.startswith(prefix):
          key = key[len(prefix):]
          break
      self._tensors[key] = value
    self._used: set[str] = set()

  def __contains__(self, key: str) -> bool:
    return key in self._tensors

  def keys(self) -> list[str]:
    return list(self._tensors)

  def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The tensor at `key` as float32 numpy (checked against `shape` when given), marked as used."""
    if key not in self._tensors:
      raise UserError(f"{self.file} has no tensor {key!r}, which the model needs; the file is incomplete or "
                      "belongs to a different model or sizes (models.yaml / config.json).")
    if key in self._used:
      raise RuntimeError(f"{self.file}: tensor {key!r} was taken twice; a converter bug.")
    value = np.asarray(self._tensors[key])
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise UserError(f"{self.file}: tensor {key!r} has shape {tuple(value.shape)} but the model expects "
                      f"{tuple(shape)}; the checkpoint and the model sizes (models.yaml / config.json) disagree.")
    self._used.add(key)
    return value.astype(np.float32) if value.dtype.kind == "f" or value.dtype.name == "bfloat16" else value

  def skip(self, key: str) -> None:
    """Mark `key` as deliberately unused (e.g. BatchNorm's num_batches_tracked)."""
    if key in self._tensors:
      self._used.add(key)

  def skip_matching(self, predicate) -> None:
    for key in self._tensors:
      if predicate(key):
        self._used.add(key)

  def finish(self) -> None:
    """Fail if any source tensor was never used."""
    unused = [k for k in self._tensors if k not in self._used]
    if unused:
      more = f" and {len(unused) - 1} more" if len(unused) > 1 else ""
      raise UserError(f"{self.file} has tensor {unused[0]!r}{more} that the model does not have; the file "
                      "belongs to a different model or sizes (check models.yaml / config.json).")


# --- layers -------------------------------------------------------------------------------------------------

BN_EPS = 1e-5  # PyTorch's BatchNorm default


def take_conv(source: SourceDict, prefix: str, in_features: int, out_features: int, kernel: int, ndim: int = 2,
              bias: bool = True) -> dict[str, np.ndarray]:
  """`prefix`.weight (and .bias) of an nn.ConvNd [out, in, k, ...] -> {'kernel', 'bias'} in Flax layout.
  A depthwise conv has in_features 1."""
  weight = source.take(f"{prefix}.weight", (out_features, in_features) + (kernel,) * ndim)
  out = {"kernel": conv_kernel(weight)}
  if bias:
    out["bias"] = source.take(f"{prefix}.bias", (out_features,))
  return out


def take_linear(source: SourceDict, prefix: str, in_features: int, out_features: int) -> dict[str, np.ndarray]:
  """`prefix`.weight/.bias of an nn.Linear -> {'kernel' [in, out], 'bias'}."""
  return {"kernel": linear_kernel(source.take(f"{prefix}.weight", (out_features, in_features))),
          "bias": source.take(f"{prefix}.bias", (out_features,))}


def take_layer_norm(source: SourceDict, prefix: str, features: int) -> dict[str, np.ndarray]:
  """`prefix`.weight/.bias of a LayerNorm / GroupNorm -> {'scale', 'bias'} (nnx.LayerNorm's names)."""
  return {"scale": source.take(f"{prefix}.weight", (features,)), "bias": source.take(f"{prefix}.bias", (features,))}


def take_batchnorm(source: SourceDict, prefix: str, features: int, eps: float = BN_EPS) -> tuple[np.ndarray, np.ndarray]:
  """An eval-mode, affine nn.BatchNormNd with running statistics -> (scale, shift); its counter is skipped."""
  shape = (features,)
  scale, shift = batchnorm_affine(source.take(f"{prefix}.weight", shape), source.take(f"{prefix}.bias", shape),
                                  source.take(f"{prefix}.running_mean", shape),
                                  source.take(f"{prefix}.running_var", shape), eps)
  source.skip(f"{prefix}.num_batches_tracked")
  return scale, shift


def take_conv_bn(source: SourceDict, conv_prefix: str, norm_prefix: str, in_features: int, out_features: int,
                 kernel: int, ndim: int) -> dict[str, np.ndarray]:
  """A convolution followed by an eval-mode BatchNorm, as one convolution."""
  params = take_conv(source, conv_prefix, in_features, out_features, kernel, ndim)
  scale, shift = take_batchnorm(source, norm_prefix, out_features)
  kernel_folded, bias = fold_affine_into_conv(params["kernel"], params["bias"], scale, shift)
  return {"kernel": kernel_folded, "bias": bias}


# --- layouts -------------------------------------------------------------------------------------------------

def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight [O, I, *spatial] -> Flax [*spatial, I, O] (1-D, 2-D or 3-D)."""
  return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch Linear weight [out, in] -> Flax [in, out]."""
  return np.ascontiguousarray(w.T)


def batchnorm_affine(weight: np.ndarray | None, bias: np.ndarray | None, mean: np.ndarray, var: np.ndarray,
                     eps: float) -> tuple[np.ndarray, np.ndarray]:
  """Eval-mode BatchNorm as y = x * scale + shift (weight/bias None for affine=False)."""
  scale = 1.0 / np.sqrt(var.astype(np.float64) + eps)
  if weight is not None:
    scale = scale * weight
  shift = -mean * scale
  if bias is not None:
    shift = shift + bias
  return scale.astype(np.float32), shift.astype(np.float32)


def fold_affine_into_conv(kernel: np.ndarray, bias: np.ndarray | None, scale: np.ndarray,
                          shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """conv(x) followed by per-channel y*scale+shift, as one conv. `kernel` is Flax layout [..., I, O]."""
  out = kernel.shape[-1]
  bias = np.zeros(out, np.float32) if bias is None else bias
  return (kernel.astype(np.float64) * scale).astype(np.float32), (bias * scale + shift).astype(np.float32)


def spectral_normalized(weight_orig: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Eval-mode torch spectral_norm: W / sigma with sigma = u . (W_mat v) from the stored u, v."""
  w_mat = weight_orig.reshape(weight_orig.shape[0], -1).astype(np.float64)
  sigma = float(u.astype(np.float64) @ (w_mat @ v.astype(np.float64)))
  return (weight_orig / sigma).astype(np.float32)


# --- nested parameter dicts ----------------------------------------------------------------------------------

def flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
  """{'a/0/b': leaf} from a nested dict (int keys, as NNX lists have, become their digits)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value if hasattr(value, "shape") else np.asarray(value)
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(int(p) if p.isdigit() else p, {})
    node[int(leaf) if leaf.isdigit() else leaf] = value
  return tree


def check_covers(expected: Mapping[str, Any], converted: Mapping[str, Any], what: str) -> None:
  """Fail unless `converted` has exactly the leaves of `expected` (both nested dicts), with equal shapes."""
  want = {k: tuple(np.shape(v)) for k, v in flatten(expected).items()}
  have = {k: tuple(np.shape(v)) for k, v in flatten(converted).items()}
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if missing or extra:
    raise UserError(f"{what}: converted weights do not match the model (missing {missing[:3]}, "
                    f"unexpected {extra[:3]}); the weights were converted for other sizes.")
  for k in want:
    if want[k] != have[k]:
      raise UserError(f"{what}: parameter {k} has shape {have[k]} but the model expects {want[k]}.")


def abstract_params(abstract_module: nnx.Module) -> dict[str, Any]:
  """The Param tree of a module built with nnx.eval_shape, as a pure dict of ShapeDtypeStructs: the layout
  converted weights must have (check_covers) and the shapes random weights are drawn for."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                      nnx.to_pure_dict(nnx.state(abstract_module, nnx.Param)))


def with_params(abstract_module: nnx.Module, params: Mapping[str, Any]) -> nnx.Module:
  """`abstract_module` (from nnx.eval_shape: nothing initialized) holding `params`, a pure dict in its layout."""
  state = nnx.state(abstract_module, nnx.Param)
  as_float32 = lambda a: a.astype(jnp.float32) if isinstance(a, jax.Array) else np.asarray(a, np.float32)
  nnx.replace_by_pure_dict(state, jax.device_put(jax.tree.map(as_float32, dict(params))))  # one batched transfer
  nnx.update(abstract_module, state)
  return abstract_module


def random_params(abstract: Mapping[str, Any], seed: int = 0, bias_std: float = 0.0) -> dict[str, Any]:
  """Random weights for a parameter tree, drawn on the host (no XLA compile per shape, unlike an NNX init):
  `kernel`s uniform with variance 1 / fan_in (LeCun uniform), `scale`s one, everything else (biases, shifts)
  uniform with standard deviation `bias_std` (zero by default). Uniform, not normal, draws: numpy's uniform
  sampler is the faster one, and `--renderer random` draws LivePortrait's 130M weights at start-up."""
  rng = np.random.default_rng(seed)

  def uniform(shape, std):
    """U(-a, a) with a = sqrt(3) std, which has standard deviation `std`; scaled in place."""
    x = rng.random(shape, np.float32)
    x -= np.float32(0.5)
    x *= np.float32(2.0 * np.sqrt(3.0) * std)
    return x

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(leaf.shape)
    if name == "kernel":
      return uniform(shape, 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1])))))
    if name == "scale":
      return np.ones(shape, np.float32)
    return uniform(shape, bias_std) if bias_std else np.zeros(shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, dict(abstract))


def save_converted(dst: str | os.PathLike, kind: str, config: Mapping[str, Any], params: Mapping[str, Any],
                   source: str) -> None:
  """Write a converted-weights folder (atomically: a crash leaves no half-written params.npz)."""
  dst = os.fspath(dst)
  os.makedirs(dst, exist_ok=True)
  tmp = os.path.join(dst, PARAMS_FILE + ".tmp.npz")
  np.savez(tmp, **flatten(params))
  os.replace(tmp, os.path.join(dst, PARAMS_FILE))
  manifest = {"kind": kind, "version": FORMAT_VERSION, "config": config, "source": os.path.abspath(source)}
  with open(os.path.join(dst, MANIFEST_FILE), "w") as f:
    json.dump(manifest, f, indent=1)


def load_converted(path: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(config, nested params) from a folder written by `save_converted` for the given kind."""
  path = os.fspath(path)
  manifest_path = os.path.join(path, MANIFEST_FILE)
  if not os.path.isfile(manifest_path):
    raise UserError(f"{path} is not a converted-weights folder (no {MANIFEST_FILE}); convert the released "
                    f"weights first with `python pipelines/convert.py {kind} --src ... --dst {path}`.")
  with open(manifest_path) as f:
    manifest = json.load(f)
  if manifest.get("kind") != kind:
    raise UserError(f"{path} holds {manifest.get('kind')!r} weights, not {kind!r}; point to the folder "
                    f"written by `python pipelines/convert.py {kind}`.")
  try:
    with np.load(os.path.join(path, PARAMS_FILE)) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise UserError(f"{os.path.join(path, PARAMS_FILE)} could not be read ({e}); convert the weights again.") \
        from None
  return manifest["config"], unflatten(flat)
