"""The `tunix_grpo` arm of experiments/llm_rl_study.py (#33): Tunix's
GRPOLearner from the same merged SFT base, with the GRPO arms' settings.

What is the same as `grpo_sequence` (experiments/llm_rl.py): the weights
(the merged base, converted: `to_tunix`), fresh LoRA adapters of the same
rank / alpha / targets (qwix; A random, B zero, so the start is the base),
the prompts in the same order (this run's own grain batches, decoded back to
the chat-rendered text), K samples at the same temperature over the full
vocabulary, the same number of new tokens, epsilon, beta with the k3
estimator (Tunix's `low_var_kl`), sequence-mean-token-mean aggregation,
std-normalised group advantages, one update per rollout, the same optax
chain (global-norm clip, AdamW, warm-up then constant), and the reward's
value: `-min(CER, 1)` over the stripped UTF-8 bytes of the decoded text, a
host Python function here (`char_error`), one scalar per sequence.

Patched or adapted, and why:

* RoPE theta: Tunix 0.1.7's Llama3 calls `apply_rope` without the config's
  `rope_theta` (always 1e6); SmolLM2 uses 1e5. `patched_rope` rebinds the
  module's `apply_rope` to the config's theta for the run.
* Pad id: Tunix reads every pad id in a prompt as padding. SmolLM2 pads
  with `<|im_end|>` (id 2), which its chat turns contain, so Tunix would
  mask the system and user turns' ends. Tunix's tokenizer here pads with
  id 0 (`<|endoftext|>`, absent from every prompt); EOS stays 2.
* No BOS is prepended (the rendered chat text starts with `<|im_start|>`,
  as in `ir_jax.data.text.prompt_ids`).
* Tunix computes RoPE in float32, ours in float64 (`to_tunix`'s check
  reports the logit difference on the base).

After training, its adapters are folded back (`adapters_of`) into ir_jax's
layout and the test split is decoded by the project's own greedy decoder,
like every other arm. A cut Tunix run restarts from its first step (no
resume); a finished one is not retrained (its adapters are kept in `wd`).
"""

import contextlib
import json
import os
import time

import numpy as np

# Our LoRA target -> (Tunix module path under a layer, its weight name).
TARGETS = {"query": ("attn", "q_proj", "w"), "key": ("attn", "k_proj", "w"),
           "value": ("attn", "v_proj", "w"), "out": ("attn", "o_proj", "w"),
           "wi_gate": ("mlp", "gate_proj", "kernel"),
           "wi_up": ("mlp", "up_proj", "kernel"),
           "wo": ("mlp", "down_proj", "kernel")}


def model_config(hf):
  """Tunix's llama3.ModelConfig for an HF llama config dict."""
  from tunix.models.llama3 import model as llama3
  return llama3.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] //
      hf["num_attention_heads"],
      num_kv_heads=hf["num_key_value_heads"],
      rope_theta=int(hf["rope_theta"]), norm_eps=hf["rms_norm_eps"],
      weight_tying=bool(hf.get("tie_word_embeddings", False)))


@contextlib.contextmanager
def patched_rope(theta):
  """Tunix 0.1.7's attention calls `apply_rope(x, pos, head_dim=...)`,
  leaving theta at its 1e6 default: bind the model's theta meanwhile."""
  import functools
  from tunix.models.llama3 import model as llama3
  original = llama3.apply_rope
  llama3.apply_rope = functools.partial(original, rope_theta=theta)
  try:
    yield
  finally:
    llama3.apply_rope = original


def to_tunix(tmodel, params, cfg):
  """Writes ir_jax Transformer params (llama layout, kernels [in, out])
  into Tunix's Llama3 `tmodel` in place."""
  import jax.numpy as jnp
  n, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  tmodel.embedder.input_embedding[...] = jnp.asarray(
      params["embed"]["embedding"])
  tmodel.final_norm.w[...] = jnp.asarray(params["final_norm"]["scale"])
  if not cfg.weight_tying:
    tmodel.lm_head.w[...] = jnp.asarray(params["logits"]["kernel"])
  for i, layer in enumerate(tmodel.layers):
    p = params[f"layer_{i}"]
    k = lambda name: jnp.asarray(p[name]["kernel"])
    layer.attn.q_proj.w[...] = k("query").reshape(-1, n, d)
    layer.attn.k_proj.w[...] = k("key").reshape(-1, kv, d)
    layer.attn.v_proj.w[...] = k("value").reshape(-1, kv, d)
    layer.attn.o_proj.w[...] = k("out").reshape(n, d, -1)
    layer.input_layernorm.w[...] = jnp.asarray(p["attn_norm"]["scale"])
    layer.post_attention_layernorm.w[...] = jnp.asarray(
        p["mlp_norm"]["scale"])
    layer.mlp.gate_proj.kernel[...] = k("wi_gate")
    layer.mlp.up_proj.kernel[...] = k("wi_up")
    layer.mlp.down_proj.kernel[...] = k("wo")


def logits(tmodel, ids):
  """float32[B, L, V]: Tunix's logits of unpadded ids int[B, L]."""
  import jax.numpy as jnp
  b, n = ids.shape
  positions = jnp.broadcast_to(jnp.arange(n), (b, n))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool)), (b, n, n))
  return tmodel(jnp.asarray(ids), positions, None, mask)[0]


def adapters_of(tmodel, targets):
  """Tunix (qwix) LoRA weights of `tmodel` as ir_jax adapters: {(layer_i,
  target, lora_a | lora_b): float32 array} with a [in, r], b [r, out] in
  our kernels' flattened layout (q/k/v: b [r, heads * head_dim]; o: a
  [heads * head_dim, r])."""
  out = {}
  for i, layer in enumerate(tmodel.layers):
    for target in targets:
      group, module, weight = TARGETS[target]
      m = getattr(getattr(layer, group), module)
      a = np.asarray(getattr(m, f"{weight}_lora_a")[...], np.float32)
      b = np.asarray(getattr(m, f"{weight}_lora_b")[...], np.float32)
      out[(f"layer_{i}", target, "lora_a")] = a.reshape(-1, a.shape[-1])
      out[(f"layer_{i}", target, "lora_b")] = b.reshape(b.shape[0], -1)
  return out


class Tokenizer:
  """Our HF tokenizer as Tunix's tokenizer: no specials added (the prompts
  are chat-rendered text), EOS the checkpoint's, pad id `pad` (a token no
  prompt holds: Tunix masks every pad id)."""

  def __init__(self, tokenizer, eos, pad):
    self._tok, self._eos, self._pad = tokenizer, eos, pad

  def encode(self, text, **kwargs):
    return self._tok.encode(text, add_special_tokens=False)

  def decode(self, ids, **kwargs):
    ids = [int(i) for i in np.asarray(ids).reshape(-1)
           if int(i) not in (self._pad, self._eos)]
    return self._tok.decode(ids)

  def bos_id(self):
    return None

  def eos_id(self):
    return self._eos

  def pad_id(self):
    return self._pad


def char_error(completion, target):
  """`ir_jax.rewards.char_error_reward`'s sequence value on text: -min(Lev /
  max(m, 1), 1) over the UTF-8 bytes, both stripped of space, tab, CR, LF."""
  from rapidfuzz.distance import Levenshtein
  from ir_jax.evaluate import answer_bytes
  a, b = answer_bytes(completion), answer_bytes(target)
  return -min(Levenshtein.distance(a, b) / max(len(b), 1), 1.0)


def prompt_batches(config, task, vocab):
  """The prompts of this run in the order ir_jax's trainer draws them:
  [[{"prompts": rendered chat text, "answer": target text}] * B] * steps."""
  from ir_jax.data import tasks as tasks_lib
  dataset = tasks_lib.train_dataset(task.train, config.batch_size,
                                    config.seed, config.total_steps, 0, 1)
  it = iter(dataset.to_iter_dataset())
  out = []
  for _ in range(config.total_steps):
    batch = next(it)
    rows = []
    for source, target, n in zip(batch["source"], batch["target"],
                                 batch["target_lengths"]):
      first = int(np.argmax(np.cumsum(source != task.pad_id) > 0))
      ids = [int(t) for t in target[:n] if int(t) != task.eos_id]
      rows.append({"prompts": vocab.tokenizer.decode(
          [int(s) for s in source[first:]], skip_special_tokens=False),
                   "answer": vocab.tokenizer.decode(ids)})
    out.append(rows)
  return out


def build(config, hf_path, task, tok):
  """(RLCluster, make_learner(reward_fn) -> GRPOLearner) of Tunix's GRPO
  from the checkpoint at `hf_path` with `config`'s settings: fresh qwix
  LoRA adapters of `config.model.lora` on the converted weights, the
  config's optax chain, one CPU mesh, the vanilla rollout. Call (and
  train) inside `patched_rope`."""
  import jax
  import optax
  import qwix
  from flax import nnx
  from tunix.models.llama3 import model as llama3
  from tunix.rl import rl_cluster as rlc
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout
  from ir_jax import pretrained, state as state_lib
  rl, lc = config.rl, config.model.lora
  targets = tuple(t for t in lc.targets.split(",") if t)
  cfg = model_config(pretrained.hf_config(hf_path))
  _, params = pretrained.load(hf_path)
  reference = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
  to_tunix(reference, params, cfg)
  provider = qwix.LoraProvider(
      module_path="|".join(f".*{TARGETS[t][1]}" for t in targets),
      rank=lc.rank, alpha=lc.alpha)
  actor = qwix.apply_lora_to_model(reference, provider,
                                   rngs=nnx.Rngs(config.seed),
                                   **reference.get_model_input())
  o = config.optim
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(state_lib.learning_rate_schedule(config),
                               b2=o.b2, weight_decay=o.weight_decay))
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  cluster = rlc.RLCluster(
      actor=actor, reference=reference, tokenizer=tok,
      cluster_config=rlc.ClusterConfig(
          role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh,
                        rlc.Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False,
          training_config=rlc.RLTrainingConfig(
              actor_optimizer=tx, eval_every_n_steps=10**9,
              max_steps=config.total_steps),
          rollout_config=base_rollout.RolloutConfig(
              max_tokens_to_generate=config.data.target_len,
              max_prompt_length=config.data.source_len,
              kv_cache_size=config.data.source_len + config.data.target_len
              + 8, temperature=rl.temperature,
              # top_p=None is greedy decoding in Tunix 0.1.7's sampler;
              # 1.0 with no top-k samples the full vocabulary.
              top_k=rl.top_k or None, top_p=rl.top_p,
              eos_tokens=[task.eos_id])))

  def make_learner(reward_fn):
    return grpo_learner.GRPOLearner(
        rl_cluster=cluster, reward_fns=reward_fn,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=rl.num_samples, num_iterations=rl.inner_steps,
            beta=rl.kl_weight, epsilon=rl.epsilon, kl_loss_mode="low_var_kl",
            loss_agg_mode="sequence-mean-token-mean"))

  return cluster, make_learner


def train(config, hf_path, wd):
  """Runs Tunix's GRPO from `hf_path` with `config`'s GRPO settings.

  Returns (curve points [{step, wall_s, reward, completion_length,
  empty_fraction}] every `config.log_every` steps, means over them; the
  adapters in ir_jax's layout). Kept in `wd` (curve.jsonl, adapters.npz).
  """
  curve_path = os.path.join(wd, "curve.jsonl")
  adapters_path = os.path.join(wd, "adapters.npz")
  if os.path.exists(curve_path) and os.path.exists(adapters_path):
    with open(curve_path) as f:
      points = [json.loads(line) for line in f]
    from ir_jax.models import lora
    return points, lora.load_adapters(adapters_path)

  import jax
  from flax import nnx
  import grain.python as grain
  from ir_jax import pretrained
  from ir_jax import state as state_lib
  from ir_jax.evaluate import answer_bytes
  from ir_jax.models import lora

  rl, lc = config.rl, config.model.lora
  targets = tuple(t for t in lc.targets.split(",") if t)
  task = state_lib.build_task(config)
  batches = prompt_batches(config, task, task.vocab)
  tok = Tokenizer(task.vocab.tokenizer, task.eos_id, pad=0)
  if any(0 in tok.encode(r["prompts"]) for b in batches for r in b):
    raise ValueError("a prompt holds token 0, Tunix's pad id here.")
  steps = config.total_steps
  with patched_rope(int(pretrained.hf_config(hf_path)["rope_theta"])):
    cluster, make_learner = build(config, hf_path, task, tok)
    starts, per_step = [], []
    generate = cluster.generate

    def timed_generate(*args, **kwargs):
      # Tunix's vanilla sampler starts every call from the config's seed (a
      # key would be donated by the first call; None is key 0 every step):
      # an int per step, from the run's seed.
      object.__setattr__(cluster.cluster_config.rollout_config, "seed",
                         config.seed * 1_000_003 + len(starts))
      starts.append(time.perf_counter())
      out = generate(*args, **kwargs)
      lengths = [int(np.sum(np.cumsum(np.asarray(t) == task.eos_id) == 0))
                 for t in out.tokens]
      per_step.append({"completion_length": float(np.mean(lengths)),
                       "empty_fraction": float(np.mean(
                           [not answer_bytes(s) for s in out.text]))})
      return out

    cluster.generate = timed_generate

    def reward_fn(prompts, completions, answer, **kwargs):
      r = [char_error(c, a) for c, a in zip(completions, answer)]
      per_step[-1]["reward"] = float(np.mean(r))
      n = len(per_step)
      k = rl.num_samples      # Tunix repeats each prompt K times in a row.
      groups = [completions[i:i + k] for i in range(0, len(completions), k)]
      # A group whose rewards differ gives a non-zero advantage.
      per_step[-1]["signal"] = any(len(set(r[i:i + k])) > 1
                                   for i in range(0, len(r), k))
      if n == 1 and rl.temperature > 0 and all(len(set(g)) == 1
                                               for g in groups):
        raise RuntimeError(
            "Tunix's rollout gave K equal completions in every group at "
            f"temperature {rl.temperature}: it is decoding greedily (its "
            "sampler is greedy when top_p is None), so GRPO has no signal.")
      if n % config.log_every == 0 or n == steps:   # Progress, as ours logs.
        chunk = per_step[-config.log_every:]
        print(f"tunix_grpo step {n}/{steps}: reward "
              f"{np.mean([c['reward'] for c in chunk]):.3f}, completion "
              f"length {np.mean([c['completion_length'] for c in chunk]):.2f}"
              f", {time.perf_counter() - starts[0]:.0f} s", flush=True)
      return r

    learner = make_learner(reward_fn)
    dataset = grain.MapDataset.source(
        [row for b in batches for row in b]).batch(config.batch_size)
    learner.train(dataset)
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
    starts.append(time.perf_counter())
  points = records(per_step, np.diff(starts), config.log_every)
  # The cluster trains its own copy of the actor (resharded onto the mesh):
  # the adapters are read from the trainer's model, not from `actor`.
  adapters = adapters_of(cluster.actor_trainer.model, targets)
  learned = any(p.get("signal") for p in per_step)
  if learned and not any(np.any(v) for k, v in adapters.items()
                         if k[-1] == "lora_b"):
    raise RuntimeError("Tunix's trained adapters are all zero although some "
                       "group's rewards differed: the model read is not the "
                       "one Tunix trained.")
  os.makedirs(wd, exist_ok=True)
  lora.save_adapters(adapters, adapters_path, dtype="float32")
  with open(curve_path, "w") as f:
    f.writelines(json.dumps(p) + "\n" for p in points)
  return points, adapters


def records(per_step, seconds, every):
  """Per-step rollout stats -> one record per `every` steps (the means over
  them, as ir_jax's trainer logs), wall_s cumulative (compile included)."""
  points, wall = [], 0.0
  ends = list(range(every, len(per_step) + 1, every))
  if not ends or ends[-1] != len(per_step):
    ends.append(len(per_step))       # A last, shorter record.
  for start, end in zip([0] + ends[:-1], ends):
    chunk = per_step[start:end]
    wall += float(np.sum(seconds[start:end]))
    points.append({"step": end, "wall_s": wall, **{
        k: float(np.mean([c[k] for c in chunk])) for k in
        ("reward", "completion_length", "empty_fraction")},
        # Some group's rewards differed: a non-zero advantage, an update.
        "signal": any(c.get("signal", False) for c in chunk)})
  return points
