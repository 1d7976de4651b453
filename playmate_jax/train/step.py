"""The jitted train step: loss, gradients, AdamW update and EMA, compiled once and run with donated buffers.

Gradients, the update and the EMA cover state['params'] only; a state's 'frozen' parameters (stage 2: the stage-1
model) enter the loss as constants and come out as they went in.

A step whose loss or gradient is not finite leaves the state unchanged and reports `finite = 0`; the loop stops the
run at its next check, so no checkpoint ever holds non-finite weights.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from playmate_jax.train import mesh as mesh_lib
from playmate_jax.train.state import TrainState

# loss_fn(model, batch, key) -> (loss, aux metrics)
LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh, lr_schedule: optax.Schedule):
  """Returns step(state, batch, step_key_root) -> (state, metrics); batch arrays sharded over `data`."""
  ema_decay = config.optim.ema_decay

  def step(state: TrainState, batch: dict, key_root: jax.Array):
    key = jax.random.fold_in(key_root, state["step"])
    frozen = state.get("frozen", {})

    def loss_of(params):
      return loss_fn(nnx.merge(graphdef, {**frozen, **params}), batch, key)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = optax.incremental_update(params, state["ema_params"], 1.0 - ema_decay)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "ema_params": ema}
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, {k: state[k] for k in new})
    if "frozen" in state:
      new["frozen"] = frozen
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr_schedule(state["step"]),
               "finite": finite.astype(jnp.float32), **aux}
    return new, metrics

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, in_shardings=(rep, mesh_lib.data_sharded(mesh), rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))
