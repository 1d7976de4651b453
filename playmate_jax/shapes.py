"""Flax NNX modules with shapes only: the cheap way to get a module's structure and parameter layout.

`nnx.eval_shape(lambda: Module(..., rngs=nnx.Rngs(0)))` traces every initializer, and every `rngs.params()`
draw updates the Rngs' key counter inside the trace. Flax checks each update by asking the traced counter for its
`sharding`; JAX answers with an AttributeError whose message it builds by walking the whole trace so far, so the
cost grows with the square of the number of layers: 2.4 s for LivePortrait's networks, 0.7-0.8 s for the
paper-scale motion DiT (stage 1 / 2) on the project's 2-core CPU machine; 0.25 s and 0.13-0.23 s with this.
Shapes do not depend on the keys, so `abstract_module` hands every layer the same one.
"""

from typing import Callable, TypeVar

import jax
from flax import nnx

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
