"""The train step: gradients of the objective, masks, non-finite skip.

`make_train_step(config, model, tx)` returns the pure function
`(state, batch, ref_params) -> (state, metrics)` that `ir_jax.train` jits
with its shardings (for `rl.mode="grpo"` one call is a whole GRPO
iteration: rollout, then `rl.inner_steps` updates in a `lax.scan`); `lower_train_step` lowers the same function from
shapes alone (`--dry-run`, `ir-jax compile`).
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from ir_jax import decode, objectives, parallel, rewards
from ir_jax import state as state_lib
from ir_jax.models import lora
from ir_jax.state import TrainState


def make_alpha_fn(objective_config):
  """state -> the reward weight alpha of this step: the controller's
  (`alpha_schedule="adaptive"`) or the schedule's at `state.step`."""
  if objective_config.alpha_schedule == "adaptive":
    return lambda state: state.controller["alpha"]
  schedule = objectives.alpha_schedule(objective_config)
  return lambda state: schedule(state.step)


def trained_part(config):
  """None when every param trains, else (take, put): `take(params)` is the
  part that trains (the soft prompt; LoRA's adapters) and `put(params,
  part)` puts it back. Only that part is differentiated and updated; the
  rest stays bit-identical."""
  if config.prompt.mode == "soft":
    return (lambda params: params["prompt"],
            lambda params, part: dict(params, prompt=part))
  if state_lib.lora_targets(config):
    return (lambda params: lora.split(params)[0],
            lambda params, part: lora.join(part, lora.split(params)[1]))
  return None


def trained_value_and_grad(loss_fn, part):
  """value_and_grad of `loss_fn(params, ...)`; with a `trained_part` only
  that part is differentiated (the other gradients are zeros)."""
  def value_and_grad(params, *args, **kwargs):
    if part is None:
      return jax.value_and_grad(loss_fn, has_aux=True)(params, *args, **kwargs)
    take, put = part
    out, g = jax.value_and_grad(
        lambda trained: loss_fn(put(params, trained), *args, **kwargs),
        has_aux=True)(take(params))
    return out, put(jax.tree.map(jnp.zeros_like, params), g)
  return value_and_grad


def _update(tx, part, params, opt_state, grads, loss):
  """One optimizer update, or none where loss or gradient is not finite:
  (params, opt_state, finite, grad_norm)."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  if part is not None:  # Frozen params bit-identical (no -0.0 + 0.0 = +0.0).
    new_params = part[1](params, part[0](new_params))
  keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(finite, a, b), new, old)
  return (keep(new_params, params), keep(new_opt, opt_state), finite,
          grad_norm)


def make_train_step(config, model, tx):
  """(state, batch, ref_params, byte_table) -> (state, metrics), pure; the
  caller jits it.

  * Soft prompt runs (`prompt.mode="soft"`) and LoRA runs
    (`model.lora.rank` > 0) differentiate the prompt / the adapters alone
    (`trained_part`): the frozen params stay bit-identical. A LoRA run's
    KL reference is its own params with the adapters off.
  * A step whose loss or gradient norm is not finite leaves params,
    optimizer and controller untouched and is counted (`nonfinite`,
    `skipped`); the loop stops after `config.max_nonfinite` in a row.
  * `ref_params` (the frozen reference of the RL KL penalty) is an
    argument, not state: it never changes and is never checkpointed twice.
  * `byte_table` (`state.byte_table(config, task, model)`: the bytes each
    token spells, for the byte-level rewards) is an argument too, so it
    is not a constant baked into the compiled program.
  * `rl.mode="grpo"`: see `make_grpo_step`.
  """
  step = (make_grpo_step if config.rl.mode == "grpo" else _make_step)(
      config, model, tx)
  if state_lib.lora_targets(config) and config.rl.mode and config.rl.kl_weight:
    # The KL reference is the base model: the adapters off, on the same
    # base arrays (no second copy of the weights).
    inner = step
    step = lambda state, batch, ref_params=None, byte_table=None: inner(
        state, batch, lora.adapters_off(state.params), byte_table)
  if not config.log_greedy_reward:
    return step
  return with_greedy_reward(step, model, config.log_every, config.total_steps)


GREEDY_METRICS = ("greedy_reward", "greedy_exact_match")


def greedy_reward(model, params, batch) -> Dict[str, jax.Array]:
  """The exact edit-distance reward of the model's greedy outputs on a
  batch, on device: greedy_reward = mean of -ED(y, target) / |target| (EOS
  not counted, as the `edit_distance` reward) and greedy_exact_match =
  mean of [ED = 0], the word accuracy."""
  t = batch["target"].shape[1]
  tokens, lengths = decode.generate(
      model, {"params": jax.lax.stop_gradient(params)}, batch["source"],
      max_len=t)
  m = batch["target_lengths"]
  # XLA, not the Pallas kernel: a Mosaic call cannot be auto-partitioned
  # over a sharded batch, and a log-step metric does not need it.
  ed = rewards.levenshtein(tokens, batch["target"], pred_lengths=lengths,
                           target_lengths=m, implementation="xla"
                           ).astype(jnp.float32)
  return {"greedy_reward": jnp.mean(-ed / jnp.maximum(m - 1, 1)),
          "greedy_exact_match": jnp.mean((ed == 0).astype(jnp.float32))}


def with_greedy_reward(step, model, log_every: int, total_steps: int):
  """`step` that also returns `greedy_reward(model, params, batch)` of the
  updated params, computed (under `lax.cond`) only on the steps the loop
  logs, and zeros on the others: the reward curve of every run, whatever
  its objective (`ir-jax plot`'s reward.png, TensorBoard)."""
  def wrapped(state, batch, ref_params=None, byte_table=None):
    state, metrics = step(state, batch, ref_params, byte_table)
    logged = (state.step % log_every == 0) | (state.step == total_steps)
    zeros = {k: jnp.zeros((), jnp.float32) for k in GREEDY_METRICS}
    greedy = jax.lax.cond(logged,
                          lambda p: greedy_reward(model, p, batch),
                          lambda p: zeros, state.params)
    return state, dict(metrics, **greedy)
  return wrapped


def _make_step(config, model, tx):
  """The train step of every objective but GRPO."""
  obj, rl = config.objective, config.rl
  adaptive = obj.alpha_schedule == "adaptive"
  alpha_of = make_alpha_fn(obj)
  part = trained_part(config)
  value_and_grad = trained_value_and_grad(
      objectives.make_loss_fn(config, model), part)
  stochastic = bool(rl.mode) or float(config.model.get("dropout", 0.0)) > 0

  def train_step(state: TrainState, batch, ref_params=None, byte_table=None
                 ) -> Tuple[TrainState, Dict]:
    rng = jax.random.fold_in(state.rng, state.step) if stochastic else None
    (loss, metrics), grads = value_and_grad(
        state.params, batch, rng, alpha=alpha_of(state),
        reward_embeddings=state.reward_embeddings, ref_params=ref_params,
        byte_table=byte_table)
    params, opt_state, finite, grad_norm = _update(
        tx, part, state.params, state.opt_state, grads, loss)
    state = _finish(state, obj, adaptive, metrics, params, opt_state, finite)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   skipped_nonfinite=state.skipped)
    return state, metrics

  return train_step


def _finish(state, obj, adaptive, metrics, params, opt_state, finite):
  """The next TrainState: step + 1, the controller moved by this step's
  reward (unless non-finite), the non-finite counters."""
  controller = state.controller
  if adaptive:
    moved = objectives.controller_update(
        controller, metrics["reward"], rate=obj.alpha_rate, low=obj.alpha_min,
        high=obj.alpha_max)
    controller = jax.tree.map(lambda a, b: jnp.where(finite, a, b), moved,
                              controller)
  return state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      controller=controller,
      nonfinite=jnp.where(finite, 0, state.nonfinite + 1),
      skipped=state.skipped + (~finite).astype(jnp.int32))


def make_grpo_step(config, model, tx):
  """One GRPO iteration as one pure function (the caller jits it):

  1. rollout: K samples per prompt from the current params with in-loop
     rewards, the sampler's log-probs, reference log-probs, advantages
     (`objectives.grpo_rollout`; no gradient);
  2. `rl.inner_steps` clipped updates on that rollout in a `lax.scan`
     (`objectives.grpo_update_loss`), the old log-probs held fixed, each
     skipped if non-finite.

  `state.step` counts rollouts (one batch each), so a resumed run redraws
  the same samples. Metrics are the rollout's rewards and the mean over the
  inner updates of the loss terms; `skipped_nonfinite` counts rollouts with
  any skipped update.
  """
  obj, rl = config.objective, config.rl
  adaptive = obj.alpha_schedule == "adaptive"
  alpha_of = make_alpha_fn(obj)
  part = trained_part(config)
  value_and_grad = trained_value_and_grad(
      lambda params, batch, rollout, rng, alpha: objectives.grpo_update_loss(
          config, model, params, batch, rollout, rng, alpha=alpha),
      part)

  def grpo_step(state: TrainState, batch, ref_params=None, byte_table=None
                ) -> Tuple[TrainState, Dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    rollout_rng, update_rng = jax.random.split(rng)
    alpha = alpha_of(state)
    rollout, reward_metrics = objectives.grpo_rollout(
        config, model, state.params, batch, rollout_rng,
        ref_params=ref_params, reward_embeddings=state.reward_embeddings,
        byte_table=byte_table)

    def inner(carry, key):
      params, opt_state = carry
      (loss, metrics), grads = value_and_grad(params, batch, rollout, key,
                                              alpha)
      params, opt_state, finite, grad_norm = _update(
          tx, part, params, opt_state, grads, loss)
      return (params, opt_state), (dict(metrics, loss=loss,
                                        grad_norm=grad_norm), finite)

    keys = jax.random.split(update_rng, rl.inner_steps)
    (params, opt_state), (metrics, finite) = jax.lax.scan(
        inner, (state.params, state.opt_state), keys)
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics.update(reward_metrics)
    state = _finish(state, obj, adaptive, metrics, params, opt_state,
                    jnp.all(finite))
    metrics["skipped_nonfinite"] = state.skipped
    return state, metrics

  return grpo_step


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
  ref = (state_in.params if config.rl.mode and config.rl.kl_weight and
         not state_lib.lora_targets(config) else None)
  table = state_lib.byte_table(config, task, model)
  if table is not None:
    table = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=parallel.replicated(mesh)), table)
  return jax.jit(make_train_step(config, model, tx),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 donate_argnums=(0,)).lower(state_in, batch, ref, table)
