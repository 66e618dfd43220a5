"""GRPO side by side: ir_jax's one-program step vs Tunix's GRPOLearner.

  python -m benchmarks.rl_vs_tunix                     # B = 8, 16; inner 1, 2
  python -m benchmarks.rl_vs_tunix --batch 16 --steps 40 --inner 1

The same work for both (issue #16): a Llama-style decoder (2 layers, embed
128, MLP 512, 4 heads = 4 KV heads, vocab 128, f32), B prompts x G = 4
generations, prompts of 16 tokens left-padded ("<bos>rev:WORD="), up to 20
new tokens at temperature 0.9, beta 0.04 (k3 KL to the initial model),
epsilon 0.2, Adam 3e-4, `--inner` updates per rollout. Task: reverse a
random lowercase word of 4-10 letters; reward = -Levenshtein(completion,
reversed word).

* Tunix 0.1.7: `GRPOLearner` on its own `Llama3`, vanilla rollout, the
  reward a host Python function (rapidfuzz) on the decoded completions,
  sequence-level advantages.
* ir_jax: `rl.mode="grpo"` (`ir_jax.step.make_grpo_step`): sampling with
  the edit-distance reward advanced inside the sampling scan, reference
  log-probs, token-level advantages and the inner updates, all one jitted
  program. `ours_host` is the same step with the reward moved to the host
  (`rewards.host_reward` + rapidfuzz through `jax.pure_callback`, sequence
  credit): what leaving the device costs.

Each (side, B, inner) runs in its own process (clean peak RSS, no shared
compile caches). Per step: wall seconds (median after `--warmup` steps),
the rollout / reference / reward / update shares, compile (first step minus
the median), peak RSS and the rollout's mean reward. Tunix's shares are
timed around its own calls (generate, reference log-probs, reward fn,
update_actor); ours by jitting those parts alone on the same inputs (the
fused step is one program, so its parts cannot be timed inside it).
Rewards are each side's own: ours counts a sample that never emits EOS as
one edit more (the target ends in EOS), Tunix scores the text alone, so at
equal policies ours reads slightly lower.

Writes benchmarks/results/rl_vs_tunix/{results.json,results.md,results.png}.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from ir_jax import rewards

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "rl_vs_tunix")
PAD, BOS, EOS = 0, 1, 3          # ir_jax.data.vocab's ids; chars are ord(c).
VOCAB, PROMPT, NEW, GROUP = 128, 16, 20, 4
TEMPERATURE, BETA, EPSILON, LR = 0.9, 0.04, 0.2, 3e-4
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ------------------------------------------------------------------ data


def words(count: int, seed: int = 0):
  """`count` random lowercase words of 4-10 letters (the same for both)."""
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list(LETTERS), rng.integers(4, 11)))
          for _ in range(count)]


def prompt_text(word: str) -> str:
  return f"rev:{word}="


def encode(text: str):
  return [ord(c) for c in text]


def decode_ids(ids) -> str:
  """Every non-special id is one character (so a text edit is a token edit)."""
  return "".join(chr(i) for i in ids if 5 <= i < VOCAB)


def batch_arrays(batch_words):
  """ir_jax's prefix-LM batch: source int32[B, 16] left-padded (BOS, prompt),
  target int32[B, 20] (reversed word, EOS, PAD), target_lengths int32[B]."""
  b = len(batch_words)
  source = np.full((b, PROMPT), PAD, np.int32)
  target = np.full((b, NEW), PAD, np.int32)
  lengths = np.zeros((b,), np.int32)
  for i, w in enumerate(batch_words):
    ids = [BOS] + encode(prompt_text(w))
    source[i, PROMPT - len(ids):] = ids
    t = encode(w[::-1]) + [EOS]
    target[i, :len(t)] = t
    lengths[i] = len(t)
  return {"source": source, "target": target, "target_lengths": lengths}


def levenshtein_rewards(completions, targets):
  """Host reward: -Levenshtein(completion, target) per pair (rapidfuzz)."""
  from rapidfuzz.distance import Levenshtein
  return [-float(Levenshtein.distance(c, t)) for c, t in zip(completions,
                                                             targets)]


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _summary(step_times, warmup, parts, rewards_per_step, compile_s,
             lengths):
  steady = step_times[warmup:]
  median = float(np.median(steady))
  total = sum(parts.values()) or 1.0
  return {
      "step_s": median, "step_s_iqr": [float(np.percentile(steady, 25)),
                                       float(np.percentile(steady, 75))],
      "steps_per_s": 1.0 / median,
      "compile_s": compile_s,
      "shares": {k: v / total for k, v in parts.items()},
      "parts_s": parts,
      "peak_rss_mb": _peak_rss_mb(),
      "rewards": [float(r) for r in rewards_per_step],
      "final_reward": float(np.mean(rewards_per_step[-5:])),
      "lengths": [float(n) for n in lengths],
      "final_length": float(np.mean(lengths[-5:])),
      "step_times": [float(t) for t in step_times],
  }


# ------------------------------------------------------------- ours


def initial_params():
  """(model, params): ir_jax's Transformer at these shapes, seed 0; Tunix's
  Llama3 starts from the same weights (`to_tunix`), so both sides start
  from one policy. (Tunix's own init zeroes the MLP kernels, and a SwiGLU
  MLP with zero kernels gets zero gradients: it would never learn.)"""
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from ir_jax import models
  # RoPE theta 1e6: Tunix 0.1.7's Llama3 ignores ModelConfig.rope_theta and
  # always rotates with its apply_rope default, 1e6.
  model = models.Transformer(vocab_size=VOCAB, embed_dim=128, num_layers=2,
                             num_heads=4, mlp_dim=512, rope_theta=1e6)
  first = jax.tree.map(jnp.asarray, batch_arrays(words(1)))
  tokens, valid = models.model_inputs(first)
  return model, nn.meta.unbox(model.init(jax.random.key(0), tokens, valid)
                              ["params"])


# ours_host's reward: the same -Levenshtein on the decoded text, on the host.
host_levenshtein = rewards.host_reward(levenshtein_rewards, decode_ids)


def run_ours(batch: int, steps: int, inner: int, warmup: int, host: bool):
  import jax
  import jax.numpy as jnp
  import optax
  from ir_jax import config as config_lib
  from ir_jax import decode, objectives
  from ir_jax import step as step_lib
  from ir_jax.state import TrainState

  c = config_lib.default_config()
  c.batch_size = batch
  c.objective.alpha = 1.0
  c.rl.update(mode="grpo", num_samples=GROUP, temperature=TEMPERATURE,
              kl_weight=BETA, epsilon=EPSILON, inner_steps=inner,
              loss_aggregation="sequence_mean", kl_estimator="k3",
              # -ED itself (the builtin "edit_distance" is per target symbol).
              rewards="ir_jax.rewards.protocol.EDIT_DISTANCE:1.0")
  if host:
    c.rl.rewards = "benchmarks.rl_vs_tunix.host_levenshtein:1.0"
    c.rl.credit = "sequence"
  model, params = initial_params()
  tx = optax.adam(LR)
  data = [batch_arrays(w) for w in np.array_split(
      words(batch * steps), steps)]
  first = jax.tree.map(jnp.asarray, data[0])
  ref = jax.tree.map(jnp.copy, params)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      reward_embeddings=jnp.copy(params["embed"]["embedding"]),
      controller=objectives.controller_init(1.0),
      nonfinite=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32),
      rng=jax.random.PRNGKey(1))

  # Parts, each jitted alone on the first batch (before training).
  zero = rewards.InstantReward(
      init=lambda target, m: {"n": jnp.zeros(target.shape[:1], jnp.int32)},
      step=lambda s, token, t: (s, jnp.zeros(token.shape, jnp.float32)),
      finish=lambda s: jnp.zeros(s["n"].shape, jnp.float32))
  key = jax.random.key(2)
  sample = lambda p, r: decode.sample_with_rewards(
      model, {"params": p}, first["source"], first["target"],
      first["target_lengths"], key, max_len=NEW, num_samples=GROUP,
      temperature=TEMPERATURE, reward=r)
  score = jax.jit(lambda p: objectives.sample_and_score(
      c, model, p, first, key, num_samples=GROUP, temperature=TEMPERATURE))
  no_reward = jax.jit(lambda p: sample(p, zero)["tokens"])
  rollout = jax.jit(lambda p: objectives.grpo_rollout(
      c, model, p, first, key, ref_params=ref)[0])
  ro = rollout(params)
  reference = jax.jit(lambda p: objectives.policy_logprobs(
      model, p, ro["samples"], TEMPERATURE)[0])
  grad = jax.jit(lambda p, o: _one_update(c, model, tx, p, o, first, ro))

  from benchmarks.common import timeit
  t_sample = timeit(no_reward, params, repeats=5)
  t_scored = timeit(score, params, repeats=5)
  parts = {"rollout": t_sample,
           "reward": max(0.0, t_scored - t_sample),
           "reference": timeit(reference, ref, repeats=5),
           "update": inner * timeit(grad, params, state.opt_state, repeats=5)}

  step = jax.jit(step_lib.make_train_step(c, model, tx), donate_argnums=(0,))
  times, rewards_seen, lengths = [], [], []
  for i in range(steps):
    b = jax.tree.map(jnp.asarray, data[i])
    start = time.perf_counter()
    state, metrics = step(state, b, ref)
    rewards_seen.append(float(metrics["reward"]))   # Blocks on the step.
    times.append(time.perf_counter() - start)
    lengths.append(float(metrics["sample_length"]) - 1.0)  # Less the EOS.
  compile_s = times[0] - float(np.median(times[warmup:]))
  return _summary(times, warmup, parts, rewards_seen, compile_s, lengths)


def _one_update(c, model, tx, params, opt_state, batch, rollout):
  import jax
  import optax
  from ir_jax import objectives
  (loss, _), g = jax.value_and_grad(
      lambda p: objectives.grpo_update_loss(c, model, p, batch, rollout, None,
                                            alpha=1.0), has_aux=True)(params)
  updates, opt_state = tx.update(g, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


# ------------------------------------------------------------- Tunix


class CharTokenizer:
  """The benchmark's tokenizer for Tunix: chars are ord(c), ir_jax's ids
  for the specials."""

  def encode(self, text, **kwargs):
    return encode(text)

  def decode(self, ids, **kwargs):
    return decode_ids(list(np.asarray(ids).reshape(-1)))

  def bos_id(self):
    return BOS

  def eos_id(self):
    return EOS

  def pad_id(self):
    return PAD


def run_tunix(batch: int, steps: int, inner: int, warmup: int):
  import jax
  import optax
  from flax import nnx
  import grain.python as grain
  from tunix.models.llama3 import model as llama3
  from tunix.rl import rl_cluster as rlc
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "experiments"))
  from llm_rl_tunix import to_tunix   # The one converter.

  cfg = llama3.ModelConfig(
      num_layers=2, vocab_size=VOCAB, embed_dim=128, hidden_dim=512,
      num_heads=4, head_dim=32, num_kv_heads=4, rope_theta=1_000_000,
      norm_eps=1e-6)
  actor = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
  reference = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
  ours_model, ours_params = initial_params()
  for m in (actor, reference):
    to_tunix(m, ours_params, cfg)
  init_logit_diff = _same_function(actor, ours_model, ours_params)
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  cluster = rlc.RLCluster(
      actor=actor, reference=reference, tokenizer=CharTokenizer(),
      cluster_config=rlc.ClusterConfig(
          role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh,
                        rlc.Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False,
          training_config=rlc.RLTrainingConfig(
              actor_optimizer=optax.adam(LR), eval_every_n_steps=10**9,
              max_steps=steps * inner),
          rollout_config=base_rollout.RolloutConfig(
              max_tokens_to_generate=NEW, max_prompt_length=PROMPT - 1,
              kv_cache_size=PROMPT + NEW, temperature=TEMPERATURE)))
  parts = {"rollout": 0.0, "reference": 0.0, "reward": 0.0, "update": 0.0}
  starts, rewards_seen, lengths = [], [], []

  def timed(name, fn, mark=False):
    def wrapper(*args, **kwargs):
      if mark:
        starts.append(time.perf_counter())
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      if name == "update":
        jax.block_until_ready(nnx.state(actor))
      if len(starts) > warmup:
        parts[name] += time.perf_counter() - start
      return out
    return wrapper

  cluster.generate = timed("rollout", cluster.generate, mark=True)
  cluster.get_ref_per_token_logps = timed("reference",
                                          cluster.get_ref_per_token_logps)
  cluster.update_actor = timed("update", cluster.update_actor)

  def reward_fn(prompts, completions, answer, **kwargs):
    start = time.perf_counter()
    r = levenshtein_rewards(completions, list(answer))
    if len(starts) > warmup:
      parts["reward"] += time.perf_counter() - start
    rewards_seen.append(float(np.mean(r)))
    lengths.append(float(np.mean([len(c) for c in completions])))
    return r

  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, reward_fns=reward_fn,
      algo_config=grpo_learner.GRPOConfig(
          num_generations=GROUP, num_iterations=inner, beta=BETA,
          epsilon=EPSILON, loss_agg_mode="sequence-mean-token-mean"))
  all_words = words(batch * steps)
  dataset = grain.MapDataset.source(
      [{"prompts": prompt_text(w), "answer": w[::-1]} for w in all_words]
  ).batch(batch)
  learner.train(dataset)
  end = time.perf_counter()
  bounds = starts + [end]
  times = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
  steady = len(times) - warmup
  parts = {k: v / max(steady, 1) for k, v in parts.items()}
  compile_s = times[0] - float(np.median(times[warmup:]))
  out = _summary(times, warmup, parts, rewards_seen, compile_s, lengths)
  out["init_logit_max_diff"] = init_logit_diff
  return out


def _same_function(tunix_model, model, params) -> float:
  """Max |logit difference| of the two models on one unpadded batch."""
  import jax.numpy as jnp
  ids = jnp.asarray(np.random.default_rng(0).integers(5, VOCAB, (2, 12)))
  ours = model.apply({"params": params}, ids)[0]
  positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((12, 12), bool)), (2, 12, 12))
  theirs, _ = tunix_model(ids, positions, None, mask)
  return float(jnp.abs(ours - theirs).max())


# ------------------------------------------------------------- driver


def child(args):
  if args.side == "tunix":
    out = run_tunix(args.batch[0], args.steps, args.inner[0], args.warmup)
  else:
    out = run_ours(args.batch[0], args.steps, args.inner[0], args.warmup,
                   host=args.side == "ours_host")
  out.update(side=args.side, batch=args.batch[0], inner=args.inner[0],
             steps=args.steps)
  with open(args.json, "w") as f:
    json.dump(out, f)


def _run_child(side, batch, inner, args, tmp):
  path = os.path.join(tmp, f"{side}_{batch}_{inner}.json")
  cmd = [sys.executable, "-m", "benchmarks.rl_vs_tunix", "--side", side,
         "--batch", str(batch), "--inner", str(inner), "--steps",
         str(args.steps), "--warmup", str(args.warmup), "--json", path]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  print("$", " ".join(cmd[1:]), flush=True)
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise SystemExit(f"{side} B={batch} inner={inner} failed "
                     f"(exit {proc.returncode}).")
  with open(path) as f:
    return json.load(f)


def table(results):
  from benchmarks.common import markdown_table
  rows = []
  by = {(r["side"], r["batch"], r["inner"]): r for r in results}
  for r in results:
    t = by.get(("tunix", r["batch"], r["inner"]))
    row = {"side": r["side"], "B x G": f"{r['batch']} x {GROUP}",
           "inner": r["inner"], "s / step": r["step_s"],
           "x Tunix steps/s": (t["step_s"] / r["step_s"]) if t else "",
           "compile s": r["compile_s"],
           "peak RSS MB": round(r["peak_rss_mb"]),
           f"reward (last 5 of {r['steps']})": r["final_reward"],
           "length": r["final_length"]}
    for k in ("rollout", "reference", "reward", "update"):
      row[f"{k} %"] = round(100 * r["shares"].get(k, 0.0))
    rows.append(row)
  return markdown_table(rows, list(rows[0]))


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
  labels = [f"{r['side']}\nB={r['batch']} i={r['inner']}" for r in results]
  ax1.bar(range(len(results)), [r["steps_per_s"] for r in results],
          color=["tab:gray" if r["side"] == "tunix" else "tab:blue"
                 for r in results])
  ax1.set_xticks(range(len(results)), labels, fontsize=7)
  ax1.set_ylabel("GRPO steps / s (higher is better)")
  smooth = lambda v: np.convolve(v, np.ones(5) / 5, mode="valid")
  for r in results:
    label = f"{r['side']} B={r['batch']} i={r['inner']}"
    style = "--" if r["side"] == "tunix" else "-"
    ax2.plot(smooth(r["rewards"]), style, label=label)
    ax3.plot(smooth(r["lengths"]), style, label=label)
  ax2.set_xlabel("step")
  ax2.set_ylabel("rollout mean reward (-ED), 5-step mean")
  ax3.set_xlabel("step")
  ax3.set_ylabel("mean completion length (tokens, EOS excluded)")
  ax2.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, nargs="+", default=[8, 16])
  p.add_argument("--inner", type=int, nargs="+", default=[1, 2])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--sides", nargs="+", default=["ours", "tunix", "ours_host"])
  p.add_argument("--side", help=argparse.SUPPRESS)
  p.add_argument("--json", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    return child(args)
  import tempfile
  from benchmarks import common
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for batch in args.batch:
      for inner in args.inner:
        for side in args.sides:
          if side == "ours_host" and inner != 1:
            continue
          results.append(_run_child(side, batch, inner, args, tmp))
          r = results[-1]
          print(f"  {r['step_s'] * 1e3:.0f} ms/step, reward "
                f"{r['final_reward']:.2f}", flush=True)
  os.makedirs(OUT, exist_ok=True)
  md = table(results)
  payload = {"machine": common.machine(), "results": results,
             "settings": dict(vocab=VOCAB, prompt=PROMPT, new_tokens=NEW,
                              group=GROUP, temperature=TEMPERATURE, beta=BETA,
                              epsilon=EPSILON, lr=LR, steps=args.steps,
                              warmup=args.warmup)}
  with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(OUT, "results.md"), "w") as f:
    f.write(md + "\n")
  plot(results, os.path.join(OUT, "results.png"))
  print(md)


if __name__ == "__main__":
  main()
