"""What a run trains: the model, the optimizer and the sharded TrainState.

`setup(config)` validates the config (`ir_jax.config.validate`, before any
device work) and builds the task, model, optimizer and mesh; `init_state`
makes a fresh state and `state_shardings` its shardings from the logical
rules, from shapes alone.
"""

import functools
from typing import Any, Dict, NamedTuple, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ir_jax import config as config_lib
from ir_jax import models, objectives, parallel, rewards
from ir_jax.data import tasks


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  reward_embeddings: jax.Array   # Frozen [V, D] table for the cosine reward.
  controller: Dict[str, jax.Array]  # Reward-adaptive alpha (if enabled).
  nonfinite: jax.Array           # Consecutive skipped (non-finite) steps.
  skipped: jax.Array             # Total skipped steps.
  rng: jax.Array


def make_model(config, task) -> nn.Module:
  """The config's model over the task's vocabulary, padded to a multiple of
  `config.vocab_multiple` (so the vocab axis shards over any tensor size);
  with a soft prompt (`prompt.mode="soft"`) its `prompt` param."""
  multiple = max(1, int(config.get("vocab_multiple", 1)))
  vocab = -(-task.vocab.size // multiple) * multiple
  model_config = dict(config.model)
  if config.get("prompt") and config.prompt.mode == "soft":
    model_config["prompt_length"] = int(config.prompt.length)
  return models.build(model_config, vocab)


def learning_rate_schedule(config) -> optax.Schedule:
  """step -> learning rate: linear warm-up from 0 over `optim.warmup_steps`
  (at least 1), then cosine decay to `optim.end_fraction` x the peak at
  `total_steps`, or (`optim.schedule="constant"`) the peak from then on."""
  o = config.optim
  warmup = max(1, min(o.warmup_steps, config.total_steps - 1))
  if o.get("schedule", "cosine") == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.learning_rate, warmup),
         optax.constant_schedule(o.learning_rate)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, warmup, config.total_steps,
      end_value=o.learning_rate * o.get("end_fraction", 0.01))


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW on a warm-up + cosine schedule (to `optim.end_fraction` of the
  peak; `optim.schedule="constant"` holds the peak after the warm-up),
  clipped by global norm. A soft prompt run gives only the prompt optimizer
  state."""
  o = config.optim
  schedule = learning_rate_schedule(config)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b2=o.b2, weight_decay=o.weight_decay))
  if config.get("prompt") and config.prompt.mode == "soft":
    # A prefix of the params tree: one label per top-level entry.
    labels = lambda params: {k: "prompt" if k == "prompt" else "frozen"
                             for k in params}
    tx = optax.multi_transform({"prompt": tx, "frozen": optax.set_to_zero()},
                               labels)
  return tx


def init_state(config, model, tx, task, boxed: bool = False) -> TrainState:
  """A fresh TrainState. `boxed=True` keeps the logical-axis boxes on params
  and optimizer moments, for deriving shardings from `jax.eval_shape`."""
  rng = jax.random.PRNGKey(config.seed)  # Raw uint32 key: checkpointable.
  init_rng, train_rng = jax.random.split(rng)
  sample = {k: jnp.asarray(v[:1]) for k, v in task.train.items()}
  tokens, valid = models.model_inputs(sample)
  variables = model.init(init_rng, tokens, valid)["params"]
  params = variables if boxed else nn.meta.unbox(variables)
  embedding = nn.meta.unbox(variables)["embed"]["embedding"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      reward_embeddings=jnp.copy(embedding),
      controller=objectives.controller_init(config.objective.alpha),
      nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
      rng=train_rng)


def abstract_params(config, model, tx, task):
  """ShapeDtypeStructs of a fresh state's params (what a restore reads)."""
  return jax.eval_shape(lambda: init_state(config, model, tx, task)).params


def state_shardings(config, model, tx, task, mesh):
  """(abstract state, NamedShardings) from the logical rules; checks fit."""
  init = functools.partial(init_state, config, model, tx, task)
  boxed = jax.eval_shape(functools.partial(init, boxed=True))
  shardings = parallel.logical_to_shardings(
      boxed, mesh, parallel.rules_from_config(config))
  abstract = jax.eval_shape(init)
  parallel.check_divisible(abstract, shardings)
  return abstract, shardings


class Setup(NamedTuple):
  task: tasks.Task
  model: nn.Module
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  rules: tuple


def setup(config, devices: Optional[Sequence[Any]] = None) -> Setup:
  """Validates `config` against `devices` (default: all visible) and builds
  its task, model, optimizer, mesh and logical rules. Nothing is placed on
  a device."""
  config_lib.validate(config)  # What the config alone decides: no backend.
  if config.rl.mode:  # User rewards by import path: importable, right kind.
    rewards.parse_rewards(config.rl.rewards)
  devices = list(devices) if devices is not None else jax.devices()
  config_lib.validate(config, num_devices=len(devices),
                      num_processes=jax.process_count())
  task = tasks.build(config)
  return Setup(task, make_model(config, task), make_optimizer(config),
               parallel.make_mesh(config.mesh, devices),
               parallel.rules_from_config(config))
