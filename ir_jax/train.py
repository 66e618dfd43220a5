"""train_and_evaluate(config, workdir): the one training loop.

config -> task (data) + model + objective -> one jitted step -> metrics and
checkpoints. Running the same command on the same workdir resumes from the
latest checkpoint, data iterator included, so the resumed run reproduces the
uninterrupted one bit for bit on CPU.
"""

import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any, Dict, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from ir_jax import config as config_lib
from ir_jax import decode, evaluate, models, objectives, parallel, rewards
from ir_jax.data import tasks
from ir_jax.data.vocab import EOS, PAD


def default_config() -> ml_collections.ConfigDict:
  """Every field a config may set (experiments start from this)."""
  c = ml_collections.ConfigDict()
  c.task = "g2p"
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 128            # Global, over all processes and devices.
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval_batch_size = 1024
  c.init_from = ""              # A workdir whose latest params start this run.
  c.max_nonfinite = 20          # Consecutive skipped steps before stopping.
  # The model's vocab is padded to a multiple of this (ids past the task's
  # vocab never occur), so the vocab axis shards over any tensor size.
  c.vocab_multiple = 128
  # Pod metadata (tpu_configs/): the TPU topology the config is sized for.
  c.topology = ""
  c.chips = 0
  c.data = ml_collections.ConfigDict(dict(
      source_len=18, target_len=18, stress=False, max_train_words=0,
      max_eval_words=0, paths=(), context=32, continuation=16, stride=8,
      max_eval_items=512,
      # G2P: "g2p", "p2g" or "g2p,p2g" (multi-task); task tags in the
      # vocab and in the prompt slot(s) after BOS; number of prompt slots.
      directions="g2p", tags=False, prompt_len=0))
  c.model = ml_collections.ConfigDict(dict(
      kind="transformer", embed_dim=128, num_layers=2, num_heads=4,
      mlp_dim=512, dropout=0.0, scan_layers=False, remat=False,
      dtype="float32"))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=200, weight_decay=1e-4, grad_clip=1.0,
      b2=0.98, label_smoothing=0.0))
  c.objective = ml_collections.ConfigDict(dict(
      alpha=0.0, alpha_schedule="constant", alpha_warmup_steps=0,
      soft_ed_weight=1.0, cosine_weight=0.0, gamma=1.0,
      # Soft edit distance code: "auto" (Pallas on TPU/GPU, XLA on CPU),
      # "xla" or "pallas" (rewards.soft_edit_distance's `implementation`).
      soft_ed_implementation="auto",
      # alpha_schedule="adaptive": the reward-driven controller.
      alpha_min=0.0, alpha_max=1.0, alpha_rate=0.002))
  # RL on the model's own samples (ir_jax.decode.sample_with_rewards):
  # mode "" (off), "seq", "instant" or "ocd"; alpha mixes CE (1 - alpha).
  c.rl = ml_collections.ConfigDict(dict(
      mode="", num_samples=4, temperature=1.0, top_k=0, top_p=1.0,
      baseline="group", kl_weight=0.0))
  # Prompt optimisation on a frozen model (--config.init_from=WORKDIR,
  # ir_jax.prompts): mode "" (off), "soft" (P learned embeddings in the
  # data.prompt_len slots, trained with any objective above) or "search"
  # (a discrete prompt of P tokens by evolution or greedy replacement).
  c.prompt = ml_collections.ConfigDict(dict(
      mode="", length=4, init="random",       # soft: random | tag | vocab
      strategy="evolve", population=32, rounds=20, elite=8,
      mutation_rate=0.25, score_words=256))   # search
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical param axis -> mesh axes (MaxText style), see ir_jax.parallel.
  c.logical_rules = parallel.DEFAULT_RULES
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Unknown keys fail with the list of valid ones (model is per kind)."""
  reference = default_config()
  trimmed = ml_collections.ConfigDict(config.to_dict())
  trimmed.model = reference.model
  config_lib.check_keys(trimmed, reference)
  for name in ("total_steps", "batch_size", "log_every", "eval_every",
               "checkpoint_every"):
    if int(config[name]) <= 0:
      raise ValueError(f"config.{name} must be > 0, got {config[name]}.")
  p = config.prompt
  if p.mode not in ("", "soft", "search"):
    raise ValueError(f"prompt.mode must be '', 'soft' or 'search', got "
                     f"{p.mode!r}.")
  if p.mode:
    if not config.init_from:
      raise ValueError(f"prompt.mode={p.mode!r} tunes a prompt for a frozen "
                       "model: set --config.init_from=WORKDIR.")
    if int(config.data.get("prompt_len", 0)) != int(p.length):
      raise ValueError(f"data.prompt_len={config.data.get('prompt_len')} must "
                       f"equal prompt.length={p.length} (the slots the prompt "
                       "fills).")
  if p.mode == "soft" and p.init not in ("random", "tag", "vocab"):
    raise ValueError(f"prompt.init must be 'random', 'tag' or 'vocab', got "
                     f"{p.init!r}.")


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


def make_model(config, task):
  multiple = max(1, int(config.get("vocab_multiple", 1)))
  vocab = -(-task.vocab.size // multiple) * multiple
  model_config = dict(config.model)
  if config.get("prompt") and config.prompt.mode == "soft":
    model_config["prompt_length"] = int(config.prompt.length)
  try:
    return models.build(model_config, vocab)
  except TypeError as e:
    raise ValueError(f"config.model has a field the {config.model.kind} "
                     f"model does not take: {e}") from None


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, max(1, min(o.warmup_steps, config.total_steps - 1)),
      config.total_steps, end_value=o.learning_rate * 0.01)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b2=o.b2, weight_decay=o.weight_decay))
  if config.get("prompt") and config.prompt.mode == "soft":
    # Only the prompt has optimizer state; the frozen model gets none.
    # A prefix of the params tree: one label per top-level entry.
    labels = lambda params: {k: "prompt" if k == "prompt" else "frozen"
                             for k in params}
    tx = optax.multi_transform({"prompt": tx, "frozen": optax.set_to_zero()},
                               labels)
  return tx


def model_inputs(batch) -> Tuple[jax.Array, jax.Array]:
  """Teacher forcing: the prompt plus all target tokens but the last."""
  tokens = jnp.concatenate([batch["source"], batch["target"][:, :-1]], axis=1)
  return tokens, tokens != PAD


def target_logits(model, params, batch, rng=None):
  """float32[B, T, V]: logits at the positions that predict the target."""
  tokens, valid = model_inputs(batch)
  kwargs = {} if rng is None else {"rngs": {"dropout": rng},
                                   "deterministic": False}
  logits, _ = model.apply({"params": params}, tokens, valid, **kwargs)
  return logits[:, batch["source"].shape[1] - 1:]


def init_state(config, model, tx, task, boxed: bool = False) -> TrainState:
  """A fresh TrainState. `boxed=True` keeps the logical-axis boxes on params
  and optimizer moments, for deriving shardings from `jax.eval_shape`."""
  rng = jax.random.PRNGKey(config.seed)  # Raw uint32 key: checkpointable.
  init_rng, train_rng = jax.random.split(rng)
  sample = {k: jnp.asarray(v[:1]) for k, v in task.train.items()}
  tokens, valid = model_inputs(sample)
  variables = model.init(init_rng, tokens, valid)["params"]
  params = variables if boxed else nn.meta.unbox(variables)
  embedding = nn.meta.unbox(variables)["embed"]["embedding"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      reward_embeddings=jnp.copy(embedding),
      controller=objectives.controller_init(config.objective.alpha),
      nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
      rng=train_rng)


def state_shardings(config, model, tx, task, mesh):
  """(abstract state, NamedShardings) from the logical rules; checks fit."""
  init = functools.partial(init_state, config, model, tx, task)
  boxed = jax.eval_shape(functools.partial(init, boxed=True))
  shardings = parallel.logical_to_shardings(
      boxed, mesh, parallel.rules_from_config(config))
  abstract = jax.eval_shape(init)
  parallel.check_divisible(abstract, shardings)
  return abstract, shardings


def check_batch(config, mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise ValueError(
        f"config.batch_size={config.batch_size} does not divide over the "
        f"batch axes data x fsdp = {shards}; use a multiple of {shards}.")
  if config.batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={config.batch_size} must divide by "
                     f"the {jax.process_count()} processes.")


def make_train_step(config, model, tx):
  """(state, batch, ref_params) -> (state, metrics), pure; the caller jits it.

  `ref_params` (the frozen reference of the RL KL penalty) is an argument,
  not state: it never changes and is never checkpointed twice.
  """
  obj, rl = config.objective, config.rl
  if rl.mode not in ("", "seq", "instant", "ocd"):
    raise ValueError(f"rl.mode must be '', 'seq', 'instant' or 'ocd', got "
                     f"{rl.mode!r}.")
  if rl.baseline not in ("group", "greedy", "none"):
    raise ValueError(f"rl.baseline must be 'group', 'greedy' or 'none', got "
                     f"{rl.baseline!r}.")
  adaptive = obj.alpha_schedule == "adaptive"
  alpha_fn = None if adaptive else objectives.alpha_schedule(obj)
  reward_on = float(obj.alpha) > 0.0 or adaptive
  use_dropout = float(config.model.get("dropout", 0.0)) > 0

  def alpha_of(state):
    return state.controller["alpha"] if adaptive else alpha_fn(state.step)

  def fused_loss_fn(params, state, batch, rng, ref_params):
    del ref_params
    logits = target_logits(model, params, batch, rng)
    return objectives.fused_loss(
        logits, batch["target"], batch["target_lengths"],
        alpha=alpha_of(state), soft_ed_weight=obj.soft_ed_weight,
        cosine_weight=obj.cosine_weight, gamma=obj.gamma,
        implementation=obj.soft_ed_implementation,
        embeddings=state.reward_embeddings,
        label_smoothing=config.optim.label_smoothing,
        compute_reward=reward_on)

  def rl_loss_fn(params, state, batch, rng, ref_params):
    k = rl.num_samples
    sample_rng, dropout_rng = jax.random.split(rng)
    frozen = {"params": jax.lax.stop_gradient(params)}
    t = batch["target"].shape[1]
    out = decode.sample_with_rewards(
        model, frozen, batch["source"], batch["target"],
        batch["target_lengths"], sample_rng, max_len=t, num_samples=k,
        temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p)
    tokens, lengths = out["tokens"], out["lengths"]
    m = jnp.repeat(batch["target_lengths"], k)
    # Rewards per target symbol (EOS excluded): returns are -ED / length.
    scale = 1.0 / jnp.maximum(m - 1, 1).astype(jnp.float32)
    token_rewards = out["rewards"] * scale[:, None]
    returns = token_rewards.sum(-1)
    if rl.baseline == "group":
      baseline = objectives.leave_one_out_mean(returns, k)
    elif rl.baseline == "greedy":  # Self-critical (SCST).
      greedy = decode.sample_with_rewards(
          model, frozen, batch["source"], batch["target"],
          batch["target_lengths"], sample_rng, max_len=t, num_samples=1,
          temperature=0.0)
      baseline = jnp.repeat(greedy["rewards"].sum(-1), k) * scale
    else:
      baseline = jnp.zeros_like(returns)
    samples = {"source": jnp.repeat(batch["source"], k, axis=0),
               "target": tokens, "target_lengths": lengths}
    logits = target_logits(model, params, samples,
                           dropout_rng if use_dropout else None)
    if rl.mode == "ocd":
      optimal = rewards.optimal_completion_targets(
          tokens, jnp.repeat(batch["target"], k, axis=0),
          vocab_size=logits.shape[-1], eos_id=EOS, pred_lengths=lengths,
          target_lengths=m)[:, :t]
      rl_loss = objectives.ocd_loss(logits, optimal, lengths)
    else:
      adv_fn = (objectives.sequence_advantages if rl.mode == "seq" else
                objectives.reward_to_go_advantages)
      advantages = adv_fn(token_rewards, lengths, baseline)
      rl_loss = objectives.policy_gradient_loss(logits, tokens, lengths,
                                                advantages)
    kl = jnp.zeros(())
    if rl.kl_weight:
      ref_logits = target_logits(model, ref_params, samples)
      kl = objectives.kl_to_reference(logits, ref_logits, lengths)
    alpha = alpha_of(state)
    ce = jnp.zeros(())
    if not (float(obj.alpha) >= 1.0 and not adaptive):
      ce_logits = target_logits(model, params, batch)
      ce, _ = objectives.masked_cross_entropy(
          ce_logits, batch["target"], batch["target_lengths"],
          config.optim.label_smoothing)
    loss = (1.0 - alpha) * ce + alpha * (rl_loss + rl.kl_weight * kl)
    valid = objectives.token_mask(lengths, t)
    per_token = jnp.where(valid, token_rewards, 0.0)
    count = jnp.maximum(valid.sum(), 1)
    mean_tok = per_token.sum() / count
    metrics = {
        "ce": ce, "rl_loss": rl_loss, "kl": kl, "alpha": alpha,
        "reward": returns.mean(), "reward_std": returns.std(),
        "edit_distance": out["edit_distance"].mean(),
        "token_reward_mean": mean_tok,
        "token_reward_std": jnp.sqrt(jnp.sum(jnp.where(
            valid, (token_rewards - mean_tok) ** 2, 0.0)) / count),
        "token_reward_nonzero": jnp.sum(per_token != 0) / count,
        "sample_length": lengths.mean()}
    return loss, metrics

  loss_fn = rl_loss_fn if rl.mode else fused_loss_fn
  soft_prompt = config.prompt.mode == "soft"

  def value_and_grad(params, *args):
    if not soft_prompt:
      return jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    # Differentiate w.r.t. the prompt alone: no weight gradients computed.
    out, g = jax.value_and_grad(
        lambda prompt: loss_fn(dict(params, prompt=prompt), *args),
        has_aux=True)(params["prompt"])
    grads = {k: g if k == "prompt" else jax.tree.map(jnp.zeros_like, v)
             for k, v in params.items()}
    return out, grads

  def train_step(state: TrainState, batch, ref_params=None
                 ) -> Tuple[TrainState, Dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    if not rl.mode and not use_dropout:
      rng = None
    (loss, metrics), grads = value_and_grad(state.params, state, batch, rng,
                                            ref_params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if soft_prompt:  # Frozen params bit-identical (no -0.0 + 0.0 = +0.0).
      params = dict(state.params, prompt=params["prompt"])
    # A non-finite step leaves params and optimizer untouched (skipped).
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


# ----------------------------------------------------------------- I/O


class MetricWriter:
  """metrics.jsonl + TensorBoard (tensorboardX); process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record: Dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    prefix = record.get("split", "train")
    for k, v in record.items():
      if isinstance(v, (int, float)) and k != "step":
        self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])
    self.tb.flush()

  def text(self, tag: str, text: str, step: int) -> None:
    if self.enabled:
      self.tb.add_text(tag, text, step)

  def close(self):
    if self.tb is not None:
      self.tb.close()


def checkpoint_manager(workdir: str, config=None) -> ocp.CheckpointManager:
  """The workdir's orbax manager (items `state` and `data`); read-only use
  (eval, generate, init_from) passes no config."""
  options = None
  if config is not None:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler()})


def run_mismatch(workdir: str, config, task) -> str:
  """"" if the run saved in `workdir` has this config's task, model and
  vocabulary (or nothing is saved there), else what differs."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return ""
  old = config_lib.from_json(path)
  old_sig = {"task": old.task, "model": old.model.to_dict()}
  new_sig = {"task": config.task, "model": config.model.to_dict()}
  if json.dumps(old_sig, sort_keys=True) != json.dumps(new_sig, sort_keys=True):
    return (f"another model:\n  saved   {old_sig}\n  current {new_sig}")
  vocab_path = os.path.join(workdir, "vocab.json")
  if os.path.exists(vocab_path):
    with open(vocab_path) as f:
      saved = json.load(f)
    if saved != list(task.vocab.symbols):
      return (f"another vocabulary ({len(saved)} symbols, now "
              f"{task.vocab.size}): the data config changed (e.g. "
              "data.stress or data.tags)")
  return ""


def check_compatible(workdir: str, config, task) -> None:
  """Refuses a workdir whose checkpoints belong to another model or vocab."""
  mismatch = run_mismatch(workdir, config, task)
  if mismatch:
    raise ValueError(f"{workdir} holds a run of {mismatch}\nUse a new "
                     "--workdir (the old checkpoints are left untouched).")


def restore_params(workdir: str, target_params) -> Any:
  """Latest params of another run (for init_from / eval / generate)."""
  manager = checkpoint_manager(workdir)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
  meta = manager.item_metadata(step)["state"]
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, meta)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
  params = restored["params"]
  want = jax.tree.map(jnp.shape, target_params)
  got = jax.tree.map(jnp.shape, params)
  if want != got:
    raise ValueError(f"Params in {workdir} do not fit this model "
                     f"(saved {got}, expected {want}).")
  return params


def load_run(workdir: str):
  """(config, task, model, params) of a trained workdir."""
  config = config_lib.with_defaults(
      config_lib.from_json(os.path.join(workdir, "config.json")),
      default_config())
  task = tasks.build(config)
  model = make_model(config, task)
  tx = make_optimizer(config)
  abstract = jax.eval_shape(lambda: init_state(config, model, tx, task))
  params = restore_params(workdir, abstract.params)
  return config, task, model, params


# ----------------------------------------------------------------- loop


def _progress(total, initial):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, file=sys.stderr, unit="step",
              dynamic_ncols=True, disable=jax.process_index() != 0)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, no preemption.
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _setup(config, devices=None):
  """Validated (task, model, optimizer, mesh, logical rules) of a config;
  the mesh spans `devices` (default: all visible devices)."""
  validate(config)
  task = tasks.build(config)
  model = make_model(config, task)
  tx = make_optimizer(config)
  mesh = parallel.make_mesh(config.mesh, devices)
  check_batch(config, mesh)
  return task, model, tx, mesh, parallel.rules_from_config(config)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains, then evaluates dev/test; returns the final eval records.

  On SIGTERM it saves a checkpoint, returns {"preempted_at": step} and the
  same command resumes.
  """
  if config.prompt.mode == "search":  # No training: a search over tokens.
    from ir_jax import prompts
    return prompts.search_and_evaluate(config, workdir)
  task, model, tx, mesh, rules = _setup(config)
  os.makedirs(workdir, exist_ok=True)
  check_compatible(workdir, config, task)
  soft_prompt = config.prompt.mode == "soft"
  if soft_prompt:
    from ir_jax import prompts
    prompts.check_frozen(config.init_from, config, task)
  lead = jax.process_index() == 0
  if lead:
    config_lib.save(config, os.path.join(workdir, "config.json"))
    with open(os.path.join(workdir, "vocab.json"), "w") as f:
      json.dump(list(task.vocab.symbols), f)
    if any(task.report.values()):
      print(f"Data report (skipped / replaced, never silent): {task.report}",
            file=sys.stderr)
  # The rules also drive the models' activation constraints.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, shardings = state_shardings(config, model, tx, task, mesh)
    # Created already sharded: nothing is materialised on one device first.
    state = jax.jit(functools.partial(init_state, config, model, tx, task),
                    out_shardings=shardings)()
    ref_params = None
    if config.init_from:
      if soft_prompt:  # Frozen model + a fresh prompt.
        frozen = restore_params(config.init_from, {
            k: v for k, v in state.params.items() if k != "prompt"})
        frozen["prompt"] = prompts.init_soft_prompt(
            config, task, frozen["embed"]["embedding"])
        loaded = jax.device_put(frozen, shardings.params)
      else:
        loaded = jax.device_put(restore_params(config.init_from, state.params),
                                shardings.params)
      state = state.replace(
          params=loaded,
          opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(loaded),
          reward_embeddings=jax.device_put(
              jnp.copy(loaded["embed"]["embedding"]),
              shardings.reward_embeddings))
      if config.rl.mode and config.rl.kl_weight:
        ref_params = jax.tree.map(jnp.copy, loaded)
    elif config.rl.mode and config.rl.kl_weight:
      raise ValueError("rl.kl_weight > 0 needs --config.init_from=WORKDIR (the "
                       "frozen reference model).")
    dataset = tasks.train_dataset(task.train, config.batch_size, config.seed,
                                  config.total_steps, jax.process_index(),
                                  jax.process_count())
    iterator = iter(dataset.to_iter_dataset())
    manager = checkpoint_manager(workdir, config)
    start = manager.latest_step()
    if start is not None:
      # Restores onto this run's shardings, whatever mesh wrote it.
      restored = manager.restore(start, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(state),
          data=ocp.args.JsonRestore()))
      state = restored["state"]
      iterator.set_state(restored["data"])
      if lead:
        print(f"Resumed from step {start} in {workdir}.", file=sys.stderr)
    step = int(state.step)

    batch_sh = parallel.batch_sharding(mesh)
    step_fn = jax.jit(
        make_train_step(config, model, tx),
        in_shardings=(shardings, batch_sh,
                      None if ref_params is None else shardings.params),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=(0,))
    writer = MetricWriter(workdir, enabled=lead)
    bar = _progress(config.total_steps, step)
    pending, t_log = [], time.time()

    def save(step):
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(iterator.get_state())), force=True)

    try:
      with _Preemption() as preemption:
        while step < config.total_steps:
          batch = parallel.global_batch(next(iterator), mesh)
          state, metrics = step_fn(state, batch, ref_params)
          step += 1
          pending.append(metrics)
          bar.update(1)
          if step % config.log_every == 0 or step == config.total_steps:
            means = jax.tree.map(lambda *x: float(np.mean(x)),
                                 *jax.device_get(pending))
            means["skipped_nonfinite"] = int(state.skipped)
            means["steps_per_sec"] = len(pending) / max(time.time() - t_log,
                                                        1e-9)
            writer.write({"step": step, **means})
            bar.set_postfix(loss=f"{means['loss']:.3f}",
                            reward=f"{means['reward']:.3f}")
            pending, t_log = [], time.time()
            if int(state.nonfinite) >= config.max_nonfinite:
              raise FloatingPointError(
                  f"{int(state.nonfinite)} consecutive non-finite losses at "
                  f"step {step} (limit config.max_nonfinite="
                  f"{config.max_nonfinite}); lower optim.learning_rate or "
                  "check the data. The last finite params are in the latest "
                  "checkpoint.")
          if preemption.requested:
            save(step)
            if lead:
              print(f"SIGTERM: saved step {step} in {workdir}; rerun the "
                    "same command to resume.", file=sys.stderr)
            return {"preempted_at": step}
          if step % config.eval_every == 0 and step < config.total_steps:
            _evaluate(model, state.params, task, config, writer, step,
                      dev_splits(task))
          if step % config.checkpoint_every == 0 or step == config.total_steps:
            save(step)
    finally:
      bar.close()
      manager.wait_until_finished()
    results = _evaluate(model, state.params, task, config, writer, step,
                        tuple(task.eval_sets))
    if soft_prompt and lead:
      params = jax.device_get(state.params)
      prompts.save_prompt(workdir, params["prompt"], {
          "kind": "soft", "length": int(config.prompt.length),
          "init": config.prompt.init, "fingerprint": prompts.fingerprint(params),
          "frozen_from": os.path.abspath(config.init_from), "step": step,
          "data": config.data.to_dict()})
    writer.close()
    manager.close()
  return results


def dry_run(config: ml_collections.ConfigDict, print_fn=print) -> Dict:
  """Validates a config against the visible devices and estimates memory.

  Checks the mesh against the device count, the batch against the data
  axes and the logical rules against the param shapes (errors name the
  field); then reports per-device bytes of params, optimizer state,
  gradients and activations (an analytic estimate), next to what XLA's
  memory analysis of the compiled step says. Nothing is trained.
  """
  task, model, tx, mesh, rules = _setup(config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = state_shardings(config, model, tx, task, mesh)
    per_device = lambda tree, sh: sum(
        leaf.size * leaf.dtype.itemsize / _shards(s)
        for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sh)))
    params = per_device(abstract.params, shardings.params)
    optimizer = per_device(abstract.opt_state, shardings.opt_state)
    other = per_device(abstract, shardings) - params - optimizer
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    local_batch = config.batch_size // batch_shards
    activations = activation_bytes(config, task, local_batch,
                                   mesh.shape["tensor"])
    full_params = sum(l.size * l.dtype.itemsize
                      for l in jax.tree.leaves(abstract.params))
    # Sharded weights are all-gathered for compute, one copy at a time.
    gathered = full_params - params
    estimate = 2 * params + optimizer + other + activations + gathered
    compiled = lower_train_step(config, model, tx, task, mesh, abstract,
                                shardings).compile()
    mem = compiled.memory_analysis()
    xla = None
    if mem is not None:
      xla = (mem.argument_size_in_bytes + mem.output_size_in_bytes -
             mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  report = {"devices": jax.device_count(), "processes": jax.process_count(),
            "mesh": dict(mesh.shape), "global_batch": config.batch_size,
            "params_count": sum(l.size for l in jax.tree.leaves(abstract.params)),
            "params_bytes": params, "optimizer_bytes": optimizer,
            "gradient_bytes": params, "other_state_bytes": other,
            "activation_bytes": activations, "gathered_bytes": gathered,
            "estimate_bytes": estimate,
            "xla_bytes": xla}
  mib = lambda b: f"{b / 2**20:9.2f} MiB"
  print_fn(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices "
           f"({jax.process_count()} processes); global batch "
           f"{config.batch_size} -> {local_batch} per batch shard; "
           f"{report['params_count']:,} params")
  print_fn("per device:")
  for k in ("params", "optimizer", "gradient", "other_state", "activation",
            "gathered"):
    print_fn(f"  {k:<12} {mib(report[k + '_bytes'])}")
  print_fn(f"  {'total':<12} {mib(estimate)}  (estimate)")
  if xla is not None:
    print_fn(f"  {'XLA':<12} {mib(xla)}  (compiled step, memory_analysis)")
  return report


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


def _shards(sharding) -> int:
  return math.prod(
      math.prod(sharding.mesh.shape[a] for a in (ax if isinstance(ax, tuple)
                                                 else (ax,)))
      for ax in sharding.spec if ax is not None)


_LSTM_FLOATS = 14  # Per hidden unit, layer and token (gates, cell, hidden).


def activation_bytes(config, task, local_batch: int, tensor: int) -> float:
  """Analytic bytes live at the peak of one training step on one device.

  Coefficients (floats per token) fitted once to XLA:CPU's memory analysis
  of this step (benchmarks in the README): a Transformer layer keeps
  ~12 E + 5 F + 3 H S (norms, q/k/v, MLP in/out, attention weights; S the
  sequence length); an LSTM layer ~14 H; embedding, logits, softmax and CE
  gradient ~10 E + 3 V (XLA fuses most of the softmax); the fused reward adds the soft edit
  distance's probability planes, ~4 T^2 per example. Sharded dims divide by
  the tensor axis.
  """
  m = config.model
  length = task.source_len + task.target_len - 1
  tokens = local_batch * length
  width = 2 if m.get("dtype") == "bfloat16" else 4
  if m.kind == "transformer":
    per_layer = (12 * m.embed_dim + 5 * m.mlp_dim / tensor +
                 3 * m.num_heads / tensor * length)
    if m.get("remat"):  # Layer inputs kept; one layer recomputed at a time.
      body = m.num_layers * 2 * m.embed_dim + per_layer
    else:
      body = m.num_layers * per_layer
  else:
    body = m.num_layers * _LSTM_FLOATS * m.hidden_dim
  vocab = -(-task.vocab.size // config.vocab_multiple) * config.vocab_multiple
  total = tokens * (width * (body + 10 * m.embed_dim) + 4 * 3 * vocab / tensor)
  if float(config.objective.alpha) > 0 or config.objective.alpha_schedule == "adaptive":
    total += 4 * local_batch * 4 * task.target_len ** 2
  return float(total)


def dev_splits(task):
  """Eval sets scored during training: "dev" and the other directions'."""
  return tuple(s for s in task.eval_sets if s.split("_")[0] == "dev")


def _evaluate(model, params, task, config, writer, step, splits):
  results = {}
  for split in splits:
    t0 = time.time()
    outputs = evaluate.generate_symbols(model, {"params": params}, task,
                                        task.eval_sets[split].source,
                                        config.eval_batch_size)
    rates = evaluate.error_rates(outputs, task.eval_sets[split].references)
    record = {"step": step, "split": split, "per": rates["per"],
              "wer": rates["wer"], "words": rates["words"],
              "eval_seconds": time.time() - t0}
    writer.write(record)
    sample = "\n".join(
        f"{k}\t{' '.join(o)}\t(ref {' '.join(r[0])})" for k, o, r in zip(
            task.eval_sets[split].keys[:8], outputs[:8],
            task.eval_sets[split].references[:8]))
    writer.text(f"{split}/samples", sample.replace("\n", "  \n"), step)
    if jax.process_index() == 0:
      print(f"step {step} {split}: PER {100 * rates['per']:.2f}%  "
            f"WER {100 * rates['wer']:.2f}%  ({rates['words']} items)",
            file=sys.stderr)
    results[split] = record
  return results
