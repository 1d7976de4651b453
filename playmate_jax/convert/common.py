"""What every weight converter shares: strict consumption of a source state dict, layout changes from
PyTorch to channels-last, folding of eval-time normalizations, and the output folder (checked before the work,
published whole after it; the converted-weights folder format and the parameter store are `playmate_jax.shapes`).

A converter walks the target model and `take`s each source tensor it needs from a `SourceDict`; at the end
`finish()` fails if any source key was never used, so a converter cannot silently drop weights, and `take`
fails on a missing key or a wrong shape. Every failure is one `UserError` sentence naming the file and key.
"""

import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

from playmate_jax import cli, shapes
from playmate_jax.errors import UserError

# --- the output folder ---------------------------------------------------------------------------------------

# What a converted-weights folder holds (with the temporary file an interrupted conversion of older versions left).
CONVERTED_FILES = (shapes.PARAMS_FILE, shapes.MANIFEST_FILE, shapes.PARAMS_FILE + ".tmp.npz")


def check_destination(dst: str | os.PathLike) -> None:
  """One sentence, before any work, when `dst` cannot become a converted-weights folder: it is a file, it holds
  files of its own (an earlier conversion, params.npz and manifest.json alone, is replaced), or the folder it goes
  in cannot be written. Missing parent folders are fine (they are made)."""
  dst = os.path.abspath(os.fspath(dst))
  if os.path.exists(dst) and not os.path.isdir(dst):
    raise UserError(f"--dst {dst} is a file, not a folder; choose a new folder for the converted weights.")
  if os.path.isdir(dst):
    other = sorted(set(os.listdir(dst)) - set(CONVERTED_FILES))
    if other:
      raise UserError(f"--dst {dst} already holds other files ({other[0]}{', ...' if len(other) > 1 else ''}); "
                      "choose a new or empty folder (only an earlier conversion there is replaced).")
  parent = os.path.dirname(dst)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"--dst {dst} lies under {parent}, which is a file; choose a folder path for the converted "
                    "weights.")
  cli.check_output_folder(os.path.join(parent, "probe"), "--dst")


def publish(dst: str | os.PathLike, kind: str, config: Mapping[str, Any], params: Mapping[str, Any],
            source: str) -> None:
  """shapes.save_converted into a temporary folder beside `dst`, moved into place once complete, so that `dst`
  is never half-written: an interruption (Ctrl-C, a full disk) leaves it as it was, an earlier conversion there
  intact."""
  dst = os.path.abspath(os.fspath(dst))
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}-", dir=os.path.dirname(dst))
  old = tmp + ".old"
  try:
    shapes.save_converted(tmp, kind, config, params, source)
    os.chmod(tmp, 0o777 & ~cli.umask())  # mkdtemp makes it 0700: the mode any new folder gets
    try:
      if os.path.isdir(dst):
        os.rename(dst, old)
      os.rename(tmp, dst)
    except BaseException:
      if os.path.isdir(old) and not os.path.exists(dst):
        os.rename(old, dst)  # the earlier conversion back in place
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


class SourceDict:
  """A source state dict being consumed key by key (see the module docstring)."""

  def __init__(self, tensors: Mapping[str, Any], file: str, strip_prefixes: Iterable[str] = ()):
    self.file = os.fspath(file)
    self._tensors: dict[str, np.ndarray] = {}
    prefixes = tuple(strip_prefixes)
    if not isinstance(tensors, Mapping):
      raise UserError(f"{self.file} holds a value of type {type(tensors).__name__}, not a state dict (tensors by "
                      "name); it is not a weights file of this model: check the path.")
    for key, value in tensors.items():
      if not isinstance(value, (np.ndarray, np.generic)):
        raise UserError(f"{self.file} holds a value of type {type(value).__name__} at {key!r} where a state dict "
                        "holds a tensor; it is not a weights file of this network: check that each file is in its "
                        "place.")
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
