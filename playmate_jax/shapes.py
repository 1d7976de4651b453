"""Modules with shapes only, and their parameters as data: the parameter store every model and converter shares.

- `abstract_module`: a Flax NNX module's structure and parameter layout without initializing anything.
  `nnx.eval_shape(lambda: Module(..., rngs=nnx.Rngs(0)))` traces every initializer, and every `rngs.params()` draw
  updates the Rngs' key counter inside the trace; Flax checks each update by asking the traced counter for its
  `sharding`, and JAX answers with an error message built by walking the whole trace so far, so the cost grows with
  the square of the number of layers. Shapes do not depend on the keys, so every layer gets the same one.
- The parameter store: nested parameter dicts flattened to '/'-joined paths, the layout check of converted weights
  against a model (`check_covers`), weights put into an abstract module (`with_params`), random weights drawn on the
  host (`random_params`), and the converted-weights folder format (`save_converted`, `load_converted`): `params.npz`
  (one array per parameter) and `manifest.json` (`kind`, the model `config`, the `source` and the format
  `version`). It sits at the bottom of the package because the models load their weights through it and the
  converters write them through it.
"""

import json
import os
from typing import Any, Callable, Mapping, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from playmate_jax.errors import UserError

FORMAT_VERSION = 1
PARAMS_FILE = "params.npz"
MANIFEST_FILE = "manifest.json"

M = TypeVar("M", bound=nnx.Module)


class _SameKey:
  """Stands in for nnx.Rngs while a module is built for its shapes: every stream gives one fixed key, and no
  counter is updated. Only for `nnx.eval_shape`: real initialization needs a different key per layer."""

  def __init__(self):
    self._key = jax.random.key(0)

  def __call__(self) -> jax.Array:
    return self._key

  params = default = __call__   # the streams the layers draw from (nnx.Linear, nnx.Conv, nnx.LayerNorm, ...)


def abstract_module(build: Callable[[nnx.Rngs], M]) -> M:
  """`build(rngs)` with shapes only (ShapeDtypeStruct parameters, nothing allocated or initialized): the same
  graphdef and parameter layout as nnx.eval_shape over `build(nnx.Rngs(0))`, in a fraction of the host time."""
  return nnx.eval_shape(lambda: build(_SameKey()))


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
