"""The train step: gradients of the objective, masks, non-finite skip.

`make_train_step(config, model, tx)` returns the pure function
`(state, batch, ref_params) -> (state, metrics)` that `ir_jax.train` jits
with its shardings; `lower_train_step` lowers the same function from
shapes alone (`--dry-run`, `ir-jax compile`).
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from ir_jax import objectives, parallel
from ir_jax.state import TrainState


def make_alpha_fn(objective_config):
  """state -> the reward weight alpha of this step: the controller's
  (`alpha_schedule="adaptive"`) or the schedule's at `state.step`."""
  if objective_config.alpha_schedule == "adaptive":
    return lambda state: state.controller["alpha"]
  schedule = objectives.alpha_schedule(objective_config)
  return lambda state: schedule(state.step)


def make_train_step(config, model, tx):
  """(state, batch, ref_params) -> (state, metrics), pure; the caller jits it.

  * Soft prompt runs (`prompt.mode="soft"`) differentiate the prompt alone:
    no weight gradient is computed and the frozen params stay bit-identical.
  * A step whose loss or gradient norm is not finite leaves params,
    optimizer and controller untouched and is counted (`nonfinite`,
    `skipped`); the loop stops after `config.max_nonfinite` in a row.
  * `ref_params` (the frozen reference of the RL KL penalty) is an
    argument, not state: it never changes and is never checkpointed twice.
  """
  obj, rl = config.objective, config.rl
  adaptive = obj.alpha_schedule == "adaptive"
  alpha_of = make_alpha_fn(obj)
  loss_fn = objectives.make_loss_fn(config, model)
  stochastic = bool(rl.mode) or float(config.model.get("dropout", 0.0)) > 0
  soft_prompt = config.prompt.mode == "soft"

  def value_and_grad(params, *args, **kwargs):
    if not soft_prompt:
      return jax.value_and_grad(loss_fn, has_aux=True)(params, *args, **kwargs)
    out, g = jax.value_and_grad(
        lambda prompt: loss_fn(dict(params, prompt=prompt), *args, **kwargs),
        has_aux=True)(params["prompt"])
    grads = {k: g if k == "prompt" else jax.tree.map(jnp.zeros_like, v)
             for k, v in params.items()}
    return out, grads

  def train_step(state: TrainState, batch, ref_params=None
                 ) -> Tuple[TrainState, Dict]:
    rng = jax.random.fold_in(state.rng, state.step) if stochastic else None
    (loss, metrics), grads = value_and_grad(
        state.params, batch, rng, alpha=alpha_of(state),
        reward_embeddings=state.reward_embeddings, ref_params=ref_params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if soft_prompt:  # Frozen params bit-identical (no -0.0 + 0.0 = +0.0).
      params = dict(state.params, prompt=params["prompt"])
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    controller = state.controller
    if adaptive:
      controller = keep(objectives.controller_update(
          controller, metrics["reward"], rate=obj.alpha_rate,
          low=obj.alpha_min, high=obj.alpha_max), controller)
    state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state), controller=controller,
        nonfinite=jnp.where(finite, 0, state.nonfinite + 1),
        skipped=state.skipped + (~finite).astype(jnp.int32))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   skipped_nonfinite=state.skipped)
    return state, metrics

  return train_step


def lower_train_step(config, model, tx, task, mesh, abstract, shardings):
  """The jitted, sharded train step lowered from shapes only (no arrays):
  state donated, batch over (data, fsdp). Call under the mesh and rules."""
  batch = {k: jax.ShapeDtypeStruct((config.batch_size,) + v.shape[1:],
                                   v.dtype, sharding=parallel.batch_sharding(mesh))
           for k, v in task.train.items()}
  state_in = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)
  # The RL KL reference: frozen params, sharded like the trained ones.
  ref = state_in.params if config.rl.mode and config.rl.kl_weight else None
  return jax.jit(make_train_step(config, model, tx),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,)).lower(state_in, batch, ref)
