"""The train state: a plain pytree of dicts stepped by one jitted update.

    {'step': int32[], 'params': {...}, 'opt_state': optax state, 'ema_params': {...}[, 'frozen': {...}]}

Parameters are pure dicts of float32 arrays (nnx.merge(graphdef, params) rebuilds the module inside jit); the EMA
copy is what evaluation and sampling use. When only some top-level parameter groups are trained (stage 2: the
emotion controller), 'params', 'opt_state' and 'ema_params' hold those alone and 'frozen' holds the rest, which no
update touches; the model's parameters are then {**frozen, **params} (model_params).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from playmate_jax.generator.factory import init_params
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
  """Global-norm clipping, then AdamW (decay on matrices only) on the config's learning-rate schedule.

  optim.flatten: the clipping and Adam's moments work on all gradients joined into one vector (optax.flatten),
  so the step runs a few large kernels there instead of a few per parameter array. The same arithmetic (only the
  global norm's summation order differs); the moments are then stored as two vectors, so a checkpoint restores
  only under the setting it was written with."""
  o = config.optim
  schedule = learning_rate_schedule(o, config.train.num_steps)
  if o.flatten:
    return optax.chain(
        optax.flatten(optax.chain(optax.clip_by_global_norm(o.clip_norm), optax.scale_by_adam(b1=o.b1, b2=o.b2))),
        optax.add_decayed_weights(o.weight_decay, _decay_mask),
        optax.scale_by_learning_rate(schedule))
  return optax.chain(
      optax.clip_by_global_norm(o.clip_norm),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=_decay_mask))


def split_params(params: dict, trainable: tuple[str, ...]) -> tuple[dict, dict]:
  """(trainable groups, the rest) of a parameter dict, by top-level key."""
  return ({k: v for k, v in params.items() if k in trainable},
          {k: v for k, v in params.items() if k not in trainable})


def state_from_params(params: dict, tx: optax.GradientTransformation, frozen: dict | None = None) -> TrainState:
  """The train state at step 0 for these parameters: a new optimizer state, the EMA equal to them, and `frozen`
  (the groups not trained) where given."""
  extra = {} if frozen is None else {"frozen": frozen}
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "ema_params": params,
          **extra}


def _initializer(model_fn: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation,
                 trainable: tuple[str, ...] | None):
  def init(key: jax.Array, frozen: dict | None = None) -> TrainState:
    params = init_params(model_fn, key)
    if trainable is None:
      return state_from_params(params, tx)
    params, rest = split_params(params, trainable)
    return state_from_params(params, tx, rest if frozen is None else frozen)
  return init


def fresh_state(params: dict, tx: optax.GradientTransformation, mesh, frozen: dict | None = None) -> TrainState:
  """state_from_params on the mesh, replicated, from parameter values another state holds: they are copied, since a
  train step donates its state's buffers (benchmarks give each compared variant its own state this way instead of
  drawing the initialization again)."""
  copy = lambda tree: None if tree is None else jax.tree.map(jnp.copy, tree)
  return jax.jit(lambda p, f: state_from_params(copy(p), tx, copy(f)),
                 out_shardings=mesh_lib.replicated(mesh))(params, frozen)


def create_train_state(model_fn, tx, key: jax.Array, mesh, trainable: tuple[str, ...] | None = None,
                       frozen: dict | None = None, on_host: bool = False) -> TrainState:
  """Initializes the model and optimizer inside jit, replicated over the mesh.

  trainable: the top-level parameter groups to train (None: all); frozen: values for the others (replicated
  arrays of the shapes the model has, e.g. restored from stage 1), default their initialization.
  on_host: compute it on this process's CPU and copy it to the mesh (one process only): on a GPU the initializer's
  many small random programs compile for tens of seconds at paper scale (benchmarks use this; the values are the
  same random draws).
  """
  init = _initializer(model_fn, tx, trainable)
  try:
    host = jax.devices("cpu")[0] if on_host else None
  except RuntimeError:   # JAX_PLATFORMS without the CPU: initialize on the mesh as usual
    host = None
  if host is not None:
    with jax.default_device(host):
      state = jax.jit(init)(*jax.device_put((key, frozen), host))
    return jax.device_put(state, mesh_lib.replicated(mesh))
  return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(key, frozen)


def abstract_state(model_fn, tx, key: jax.Array, mesh, trainable: tuple[str, ...] | None = None) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without allocating it (the restore target)."""
  sharding = mesh_lib.replicated(mesh)
  shapes = jax.eval_shape(_initializer(model_fn, tx, trainable), key)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
