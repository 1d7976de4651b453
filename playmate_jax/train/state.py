"""The train state: a plain pytree of dicts stepped by one jitted update.

    {'step': int32[], 'params': {...}, 'opt_state': optax state, 'ema_params': {...}}

Parameters are pure dicts of float32 arrays (nnx.merge(graphdef, params) rebuilds the module inside jit); the EMA
copy is what evaluation and sampling use.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from playmate_jax.train import mesh as mesh_lib

TrainState = dict[str, Any]


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to optim.lr, then cosine decay to optim.lr * optim.end_lr_factor at num_steps."""
  warmup = min(optim.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=optim.lr * optim.end_lr_factor)


def _decay_mask(params):
  """Weight decay on matrices and kernels only, never on biases, norms or embeddings of one dimension."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.clip_norm),
      optax.adamw(learning_rate_schedule(o, config.train.num_steps), b1=o.b1, b2=o.b2,
                  weight_decay=o.weight_decay, mask=_decay_mask))


def _initializer(model_fn: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation):
  def init(key: jax.Array) -> TrainState:
    params = nnx.to_pure_dict(nnx.state(model_fn(nnx.Rngs(params=key)), nnx.Param))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "ema_params": params}
  return init


def model_graphdef(model_fn: Callable[[nnx.Rngs], nnx.Module]) -> nnx.GraphDef:
  """The module's static structure, built without allocating parameters."""
  return nnx.graphdef(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))))


def create_train_state(model_fn, tx, key: jax.Array, mesh) -> TrainState:
  """Initializes the model and optimizer inside jit, replicated over the mesh."""
  return jax.jit(_initializer(model_fn, tx), out_shardings=mesh_lib.replicated(mesh))(key)


def abstract_state(model_fn, tx, key: jax.Array, mesh) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without allocating it (the restore target)."""
  sharding = mesh_lib.replicated(mesh)
  shapes = jax.eval_shape(_initializer(model_fn, tx), key)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
