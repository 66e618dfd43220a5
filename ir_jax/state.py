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
import numpy as np
import optax

from ir_jax import config as config_lib
from ir_jax import models, objectives, parallel, rewards
from ir_jax.data import tasks
from ir_jax.data.vocab import SPECIALS, Vocab


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
  model_config = dict(config.model)
  hf_path = model_config.pop("hf_path", "")
  lora = model_config.pop("lora", None)
  prefix_lm = model_config.pop("prefix_lm", False)
  if hf_path:  # The checkpoint's architecture and vocabulary.
    from ir_jax import pretrained
    model = pretrained.build(
        hf_path, dtype=model_config.get("dtype", "float32"),
        scan_layers=bool(model_config.get("scan_layers")),
        remat=bool(model_config.get("remat")))
    if model.vocab_size < task.vocab.size:
      raise ValueError(
          f"{hf_path}: the model's vocab_size={model.vocab_size} is smaller "
          f"than the tokenizer's {task.vocab.size} tokens: config.data."
          "tokenizer names another checkpoint's tokenizer.")
  else:
    multiple = max(1, int(config.get("vocab_multiple", 1)))
    vocab = -(-task.vocab.size // multiple) * multiple
    if config.get("prompt") and config.prompt.mode == "soft":
      model_config["prompt_length"] = int(config.prompt.length)
    model = models.build(model_config, vocab)
  if lora is not None and lora.rank:
    model = model.clone(lora_rank=int(lora.rank), lora_alpha=float(lora.alpha),
                        lora_targets=lora_targets(config))
  if prefix_lm:  # The source's slots attend both ways.
    model = model.clone(prefix_len=int(task.source_len))
  if (task.pad_id, task.eos_id) != models.special_ids(model):
    model = model.clone(pad_id=task.pad_id, eos_id=task.eos_id)
  return model


def lora_targets(config) -> tuple:
  """The projections `model.lora` adapts; () without LoRA."""
  lora = config.model.get("lora")
  if lora is None or not lora.rank:
    return ()
  return tuple(t.strip() for t in lora.targets.split(",") if t.strip())


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
  state; a LoRA run (`model.lora.rank` > 0) only the adapters' (the clip
  and the weight decay see the adapters alone: the base's gradients are
  not computed into the update)."""
  o = config.optim
  schedule = learning_rate_schedule(config)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b2=o.b2, weight_decay=o.weight_decay))
  if lora_targets(config):  # Adapters only: the base holds no state.
    from ir_jax.models import lora
    return lora.optimizer(tx)
  if config.get("prompt") and config.prompt.mode == "soft":
    # A prefix of the params tree: one label per top-level entry.
    labels = lambda params: {k: "prompt" if k == "prompt" else "frozen"
                             for k in params}
    tx = optax.multi_transform({"prompt": tx, "frozen": optax.set_to_zero()},
                               labels)
  return tx


def init_state(config, model, tx, task, boxed: bool = False,
               base=None, rng=None) -> TrainState:
  """A fresh TrainState. `boxed=True` keeps the logical-axis boxes on params
  and optimizer moments, for deriving shardings from `jax.eval_shape`.

  `base` (a pretrained checkpoint's params, `pretrained.load_params`)
  replaces every non-adapter param: under `jax.jit` the random init of
  those is dead code, so no second copy of the weights is ever made (LoRA
  adapters keep their fresh, no-op init). `rng`: the init key (default
  `PRNGKey(config.seed)`; a jit argument when the caller traces it)."""
  if rng is None:
    rng = jax.random.PRNGKey(config.seed)  # Raw uint32 key: checkpointable.
  init_rng, train_rng = jax.random.split(rng)
  sample = {k: jnp.asarray(v[:1]) for k, v in task.train.items()}
  tokens, valid = models.model_inputs(sample, models.special_ids(model)[0])
  variables = model.init(init_rng, tokens, valid)["params"]
  params = variables if boxed else nn.meta.unbox(variables)
  if base is not None:
    from ir_jax.models import lora
    fresh = lora.split(params)[1]
    params = lora.join(lora.split(params)[0], {
        k: v.astype(fresh[k].dtype) for k, v in lora.split(base)[1].items()})
    variables = params
  embedding = nn.meta.unbox(variables)["embed"]["embedding"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      reward_embeddings=reward_table(config, embedding),
      controller=objectives.controller_init(config.objective.alpha),
      nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
      rng=train_rng)


def reward_table(config, embedding: jax.Array) -> jax.Array:
  """The frozen [V, D] table of the cosine reward: a copy of the embedding.
  A Hugging Face run (`model.hf_path`) that uses no cosine reward keeps a
  [1, D] stand-in instead of a second copy of a large table."""
  cosine = config.objective.cosine_weight > 0 or (
      config.rl.mode and "cosine" in config.rl.rewards)
  if config.model.get("hf_path") and not cosine:
    return jnp.zeros((1, embedding.shape[-1]), embedding.dtype)
  return jnp.copy(embedding)


def byte_table(config, task, model):
  """A `rewards.ByteTable` (token_bytes int32[V, L], token_byte_lengths
  int32[V], static max_target_bytes) when `rl.rewards` names a byte-level
  reward (`char_*`), else None: the bytes each token id spells
  (`ir_jax.data.hf_tokenizer.token_byte_table` for a checkpoint's
  tokenizer; the project vocabulary's symbols as UTF-8, its specials
  spelling nothing), with V = `model.vocab_size` (padding rows spell
  nothing). An argument of the train step, not a constant."""
  if not config.rl.mode:
    return None
  spec = rewards.parse_rewards(config.rl.rewards)
  if not any(n in rewards.NEEDS_BYTE_TABLE for n, _ in spec.instant):
    return None
  from ir_jax.data import hf_tokenizer
  vocab = task.vocab
  if getattr(vocab, "tokenizer", None) is not None:
    table, lengths = hf_tokenizer.token_byte_table(vocab.tokenizer)
  else:
    table, lengths = hf_tokenizer.byte_table_of(
        [b"" if (isinstance(vocab, Vocab) and i < len(SPECIALS)) else
         s.encode("utf-8") for i, s in enumerate(vocab.symbols)])
  size = int(model.vocab_size)
  if table.shape[0] < size:
    table = np.pad(table, ((0, size - table.shape[0]), (0, 0)))
    lengths = np.pad(lengths, (0, size - lengths.shape[0]))
  # The DP row's width: the most bytes any target of the task spells (the
  # batches are cut from these arrays), not M * L (81x M for SmolLM2).
  widest = 1
  for arrays in [task.train, *task.eval_targets.values()]:
    m = arrays["target_lengths"]
    ids = arrays["target"]
    spelled = np.where(np.arange(ids.shape[1])[None] < m[:, None],
                       lengths[np.clip(ids, 0, size - 1)], 0).sum(1)
    widest = max(widest, int(spelled.max(initial=0)))
  return rewards.ByteTable(table[:size], lengths[:size], widest)


def adapters_only(config) -> bool:
  """A LoRA run on a Hugging Face checkpoint: its checkpoints hold the
  adapters (and optimizer state) only; the frozen base is `model.hf_path`."""
  return bool(lora_targets(config) and config.model.get("hf_path"))


def checkpointed(config, tree):
  """What a checkpoint stores of `tree` (a TrainState or a params tree):
  itself, or for `adapters_only` runs the tree with params reduced to the
  adapters."""
  if not adapters_only(config):
    return tree
  from flax import traverse_util
  from ir_jax.models import lora
  reduce = lambda params: traverse_util.unflatten_dict(lora.split(params)[0])
  if isinstance(tree, TrainState):
    return tree.replace(params=reduce(tree.params))
  return reduce(tree)


def from_checkpointed(config, restored, full):
  """`restored` (as `checkpointed` stores it) completed from `full`, the
  same tree with the frozen base in place."""
  if not adapters_only(config):
    return restored
  from flax import traverse_util
  from ir_jax.models import lora
  join = lambda adapters, params: lora.join(
      traverse_util.flatten_dict(adapters), lora.split(params)[1])
  if isinstance(full, TrainState):
    return restored.replace(params=join(restored.params, full.params))
  return join(restored, full)


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


def build_task(config) -> tasks.Task:
  """`tasks.build(config)` with a text task's tokenizer read through
  `ir_jax.pretrained.tokenizer` (a directory's tokenizer.json or a `.gguf`
  header): the door every caller uses."""
  from ir_jax import pretrained
  return tasks.build(config, load_tokenizer=pretrained.tokenizer)


def setup(config, devices: Optional[Sequence[Any]] = None,
          shapes_only: bool = False) -> Setup:
  """Validates `config` against `devices` (default: all visible) and builds
  its task, model, optimizer, mesh and logical rules. Nothing is placed on
  a device. `shapes_only` (compile, dry run): a text task is a stand-in
  of the config's shapes, so no JSONL or tokenizer file is read."""
  config_lib.validate(config)  # What the config alone decides: no backend.
  if config.rl.mode:  # User rewards by import path: importable, right kind.
    rewards.parse_rewards(config.rl.rewards)
  devices = list(devices) if devices is not None else jax.devices()
  config_lib.validate(config, num_devices=len(devices),
                      num_processes=jax.process_count())
  if shapes_only and config.task == "text":
    from ir_jax import pretrained
    from ir_jax.data import text
    path = config.model.get("hf_path", "")
    task = text.shapes_only(config,
                            pretrained.module_config(path) if path else {})
  else:
    task = build_task(config)
  return Setup(task, make_model(config, task), make_optimizer(config),
               parallel.make_mesh(config.mesh, devices),
               parallel.rules_from_config(config))
