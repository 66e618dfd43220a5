"""The mechanism before any training: how well each GRPO credit's gradient
points, and how noisy it is, from the same rollouts.

  python -m benchmarks.credit_variance --workdir runs/g2p_words --name g2p_words
  python -m benchmarks.credit_variance --llm spell_backward     # SmolLM2
  python -m benchmarks.credit_variance --llm word_sorting --hf_path DIR \\
      --data data/gym/word_sorting_long --target_len 96 --name ws_long
  python -m benchmarks.credit_variance --tiny --workdir RUN     # seconds

At a fixed checkpoint (a trained workdir, or SmolLM2 with fresh LoRA
adapters on a given base), `--batches` N >= 64 independent rollout
batches (B prompts x K samples at the config's temperature, scored by its
`rl.rewards` in the sampling loop, fresh prompts and keys per batch). From
each batch one forward pass gives log pi(y_t) [B K, T]; its VJP is applied
to the stacked cotangents of every credit at once (the ascent direction
d/dtheta agg(A_t log pi(y_t)), with the config's aggregation and
`rl.group_std`), so every credit is scored on the same samples:

* `reference`: an unbiased policy gradient: leave-one-out baseline on the
  sequence returns, sum aggregation, no std normalisation.
* `sequence`, `reward_to_go/position` (the original `token` credit),
  `reward_to_go/none`, `immediate/position`, `immediate/none`,
  `lambda=L/position`, `lambda=L/none` (`--lambdas`):
  `ir_jax.objectives.credit`.

Per credit, over the N batches (gradients are kept on the host, float32):

* `batch_cosine`: mean over batches b of cos(g_b, reference mean over the
  batches other than b).
* `cosine_to_reference`: the credit's mean gradient against the
  reference's, cross-fitted (even batches' credit mean vs odd batches'
  reference mean and the reverse, averaged), so no rollout is in both.
  `cosine_disattenuated` divides it by sqrt(credit half-vs-half cosine x
  reference half-vs-half cosine) (Spearman's correction: what it would be
  with noise-free means; noisy, can pass 1). `reference_self` is the
  reference's half-vs-half cosine: the ceiling that N batches allow
  (`cosine_disattenuated` is null where either is < 0.1: too noisy).
* `snr`: |mean|^2 / trace(covariance), with |mean|^2 debiased by
  trace / N (it can be < 0 where there is no signal), per batch;
  `snr_vs_sequence` its ratio to `sequence`'s, with a 95% interval
  from a delete-a-block jackknife over batches (`snr_vs_sequence_ci95`).

Writes/merges rows `{"model", "task", "checkpoint", "mean_len", "credit",
"cosine_to_reference", "snr", ...}` into
benchmarks/results/credit/variance.json (or `--json`) and its .md table.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "credit",
                       "variance.json")


def credit_specs(lambdas):
  """[(name, credit, lam, baseline)] of the credits compared."""
  specs = [("sequence", "sequence", 1.0, "position"),
           ("reward_to_go/position", "reward_to_go", 1.0, "position"),
           ("reward_to_go/none", "reward_to_go", 1.0, "none"),
           ("immediate/position", "immediate", 0.0, "position"),
           ("immediate/none", "immediate", 0.0, "none")]
  specs += [(f"lambda={lam:g}/{b}", "lambda", lam, b) for lam in lambdas
            for b in ("position", "none")]
  return specs


def cotangents(config, scored, specs, spec_rewards, byte_table):
  """float32[C + 1, B K, T]: d agg(A_c log pi) / d log pi for the reference
  (row 0) and each credit of `specs`, from one rollout."""
  import jax
  import jax.numpy as jnp
  from ir_jax import objectives
  rl = config.rl
  k = rl.num_samples
  lengths, returns = scored["lengths"], scored["returns"]
  t = scored["tokens"].shape[1]
  mask = objectives.token_mask(lengths, t)
  r = returns.reshape(-1, k)
  loo = (r - (r.sum(1, keepdims=True) - r) / (k - 1)).reshape(-1)
  rows = [jnp.where(mask, loo[:, None], 0.0)]            # Sum aggregation.
  credit_r = objectives.credit_rewards(spec_rewards, scored, byte_table)
  for _, credit, lam, baseline in specs:
    if credit == "sequence":
      adv = objectives.group_advantages(returns, k,
                                        normalize_std=rl.group_std)[:, None]
      adv = jnp.broadcast_to(adv, (adv.shape[0], t))
    else:
      adv = objectives.credit_advantages(credit_r, lengths, returns, k,
                                         credit=credit, lam=lam,
                                         baseline=baseline,
                                         normalize_std=rl.group_std)
    rows.append(jax.grad(lambda lp, adv=adv: objectives.aggregate_tokens(
        adv * lp, mask, rl.loss_aggregation,
        int(config.data.target_len)))(jnp.zeros((adv.shape[0], t))))
  return jnp.stack(rows)


def make_batch_gradients(config, model, params, specs, byte_table=None,
                         reward_embeddings=None, vjp_batch: int = 0):
  """A jitted fn(params, batch, key) -> (grads float32[C + 1, P], stats):
  one rollout, one forward, the VJP of every cotangent (`cotangents`):
  all at once (`vjp_batch=0`, `jax.vmap`) or `vjp_batch` at a time
  (`jax.lax.map`: the memory of that many backward passes, for an LLM's
  [B K, T, V] logits). Only LoRA adapters are differentiated when the
  config trains adapters only."""
  import jax
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from ir_jax import objectives, rewards
  from ir_jax import state as state_lib
  from ir_jax.models import lora
  rl = config.rl
  spec_rewards = rewards.parse_rewards(rl.rewards)
  adapters = state_lib.adapters_only(config)

  def fn(params, batch, key):
    scored = objectives.sample_and_score(
        config, model, params, batch, key, num_samples=rl.num_samples,
        temperature=rl.temperature, reward_embeddings=reward_embeddings,
        byte_table=byte_table)
    samples = {"source": objectives.group_source(config, batch["source"]),
               "target": scored["tokens"],
               "target_lengths": scored["lengths"]}
    train, frozen = lora.split(params) if adapters else (params, None)

    def logp(train):
      full = lora.join(train, frozen) if adapters else train
      return objectives.policy_logprobs(model, full, samples,
                                        rl.temperature)[0]

    _, vjp = jax.vjp(logp, train)
    cts = cotangents(config, scored, specs, spec_rewards, byte_table)
    flat = lambda ct: ravel_pytree(vjp(ct)[0])[0]
    grads = (jax.lax.map(flat, cts, batch_size=vjp_batch) if vjp_batch
             else jax.vmap(flat)(cts))
    n = scored["lengths"] - scored["ended"]
    return grads.astype(jnp.float32), {
        "reward": scored["returns"].mean(),
        "completion_length": n.mean(),
        "empty_fraction": (scored["lengths"] <= 1).mean()}

  return jax.jit(fn)


def _cos(a, b):
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _snr_from_gram(gram, idx):
  """|mean|^2 (debiased) / trace(cov) of the batches `idx` (repeats
  allowed), from the Gram matrix of one credit's batch gradients."""
  n = len(idx)
  sub = gram[np.ix_(idx, idx)]
  mean_sq = sub.sum() / n ** 2
  trace = (np.trace(sub) - n * mean_sq) / (n - 1)
  return (mean_sq - trace / n) / trace if trace > 0 else 0.0


def statistics(grads: np.ndarray, names, blocks: int = 16) -> list:
  """Per credit (rows 1.. of grads float32[C + 1, N, P]; row 0 the
  reference): the module docstring's numbers, and `snr_vs_sequence_ci95`,
  a delete-a-block jackknife over `blocks` blocks of batches (the same
  blocks for both credits: they share their rollouts) of the SNR ratio to
  `sequence`'s, +- t(0.975, blocks - 1) standard errors."""
  from scipy import stats as scipy_stats
  n = grads.shape[1]
  ref = grads[0].astype(np.float64)
  ref_sum = ref.sum(0)
  ref_a, ref_b = ref[0::2].mean(0), ref[1::2].mean(0)
  ref_self = _cos(ref_a, ref_b)
  # One credit in float64 at a time: the stack can be several GB.
  grams = [(lambda x: x @ x.T)(x.astype(np.float64)) for x in grads]
  blocks = max(2, min(blocks, n // 2))
  keep = [np.setdiff1d(np.arange(n), part)
          for part in np.array_split(np.arange(n), blocks)]
  names = ["reference"] + list(names)
  seq = names.index("sequence") if "sequence" in names else None
  t_crit = scipy_stats.t.ppf(0.975, blocks - 1)

  def ratio_ci(c):
    ratio = lambda k: (_snr_from_gram(grams[c], k) /
                       _snr_from_gram(grams[seq], k)
                       if _snr_from_gram(grams[seq], k) > 0 else np.nan)
    whole = ratio(np.arange(n)) if seq is not None else np.nan
    parts = np.array([ratio(k) for k in keep]) if seq is not None else []
    if not np.isfinite(whole) or not np.isfinite(parts).all():
      return None     # Sequence credit without signal on some blocks.
    se = np.sqrt((blocks - 1) / blocks * np.sum((parts - parts.mean()) ** 2))
    return [float(whole - t_crit * se), float(whole + t_crit * se)]

  out = []
  for c, name in enumerate(names):
    x = grads[c].astype(np.float64)
    snr = _snr_from_gram(grams[c], np.arange(n))
    batch_cos = float(np.mean([_cos(x[b], (ref_sum - ref[b]) / (n - 1))
                               for b in range(n)]))
    xa, xb = x[0::2].mean(0), x[1::2].mean(0)
    cross = 0.5 * (_cos(xa, ref_b) + _cos(xb, ref_a))
    self_cos = _cos(xa, xb)
    # Too noisy to correct where either half-vs-half cosine is < 0.1.
    noisy = min(self_cos, ref_self) < 0.1
    row = {"credit": name, "cosine_to_reference": cross,
           "cosine_disattenuated": None if noisy else float(
               cross / np.sqrt(self_cos * ref_self)),
           "batch_cosine": batch_cos, "snr": float(snr),
           "self_cosine": self_cos, "reference_self": ref_self,
           "grad_norm": float(np.linalg.norm(x, axis=1).mean()),
           "snr_vs_sequence_ci95": ratio_ci(c)}
    out.append(row)
  return out


def measure(config, model, params, batches, key, *, num_batches, specs,
            byte_table=None, reward_embeddings=None, desc="credit",
            vjp_batch=0):
  """(rows of `statistics`, rollout stats averaged over batches).
  `batches(b)`: the b-th batch of prompts (numpy dict)."""
  import jax
  import jax.numpy as jnp
  from tqdm import tqdm
  fn = make_batch_gradients(config, model, params, specs, byte_table,
                            reward_embeddings, vjp_batch)
  grads, stats = None, []
  for b in tqdm(range(num_batches), desc=desc):
    batch = {k: jnp.asarray(v) for k, v in batches(b).items()}
    g, s = fn(params, batch, jax.random.fold_in(key, b))
    g = np.asarray(g)
    if not np.isfinite(g).all():
      raise FloatingPointError(f"batch {b}: a non-finite gradient.")
    if grads is None:
      grads = np.zeros((g.shape[0], num_batches, g.shape[1]), np.float32)
    grads[:, b] = g
    stats.append({k: float(v) for k, v in s.items()})
  rows = statistics(grads, [s[0] for s in specs])
  mean = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
  return rows, mean


def batch_source(task, batch_size, seed):
  """batches(b): disjoint train batches of a fixed permutation (cycled)."""
  train = task.train
  order = np.random.default_rng(seed).permutation(len(train["source"]))

  def batches(b):
    idx = np.take(order, np.arange(b * batch_size, (b + 1) * batch_size),
                  mode="wrap")
    return {k: v[idx] for k, v in train.items()}

  return batches


# ------------------------------------------------------------ checkpoints


def from_workdir(workdir, args):
  """(config, task, model, params): a trained run, with the GRPO settings
  of experiments/g2p_rl.py:grpo (K = --samples, batch = --batch)."""
  from ir_jax import config as config_lib
  from ir_jax import workdir as workdir_lib
  config, task, model, params = workdir_lib.load_run(workdir)
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p_rl.py") +
                      (":grpo,tiny" if args.tiny else ":grpo"))
  with config.unlocked():
    config.rl = c.rl
    config.rl.num_samples = args.samples
    config.objective.alpha = 1.0
    config.batch_size = args.batch
  return config, task, model, params


def from_llm(args):
  """(config, task, model, params, byte_table): SmolLM2 (or --hf_path)
  with fresh LoRA adapters and the study's GRPO settings
  (experiments/llm_rl.py), K = --samples, B = --batch."""
  from ir_jax import config as config_lib
  from ir_jax import pretrained
  from ir_jax import state as state_lib
  hf_path = args.hf_path
  if not hf_path:
    sys.path.insert(0, ROOT)
    from benchmarks import llm_step
    hf_path = llm_step.base_weights(argparse.Namespace(tiny=False, gguf=""))
  c = config_lib.load(os.path.join(ROOT, "experiments", "llm_rl.py") +
                      f":{args.llm},grpo_sequence" + (",tiny" if args.tiny
                                                      else ""))
  c.model.hf_path = hf_path
  if args.data:
    for split in ("train", "eval", "test"):
      name = {"eval": "dev"}.get(split, split)
      c.data[f"{split}_path"] = os.path.join(args.data, f"{name}.jsonl")
  if args.source_len:
    c.data.source_len = args.source_len
  if args.target_len:
    c.data.target_len = args.target_len
  c.rl.num_samples, c.batch_size = args.samples, args.batch
  config_lib.validate(c)
  setup = state_lib.setup(c)
  _, base = pretrained.load(hf_path)
  state = state_lib.init_state(c, setup.model, setup.tx, setup.task,
                               base=base)
  table = state_lib.byte_table(c, setup.task, setup.model)
  return c, setup.task, setup.model, state.params, table


def merge(path, new_rows):
  """Replaces rows of the same (model, task, checkpoint) in `path`."""
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = json.load(f)["rows"]
  keys = {(r["model"], r["task"], r["checkpoint"]) for r in new_rows}
  rows = [r for r in rows if (r["model"], r["task"], r["checkpoint"])
          not in keys] + new_rows
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".partial"
  with open(tmp, "w") as f:
    json.dump({"rows": rows}, f, indent=1)
  os.replace(tmp, path)
  with open(path[:-len(".json")] + ".md", "w") as f:
    f.write(markdown(rows))
  plot(rows, path[:-len(".json")] + ".png")
  return rows


def plot(rows, path):
  """One panel per (task, checkpoint): each credit's SNR over sequence
  credit's with its 95% interval, and its disattenuated cosine."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = list(dict.fromkeys((r["model"], r["task"], r["checkpoint"])
                              for r in rows))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4),
                           squeeze=False)
  for ax, key in zip(axes[0], panels):
    rs = [r for r in rows if (r["model"], r["task"], r["checkpoint"]) == key
          and r["credit"] != "reference"]
    y = [r["snr_vs_sequence"] or 0.0 for r in rs]
    ci = [r.get("snr_vs_sequence_ci95") or [v, v] for r, v in zip(rs, y)]
    err = np.array([[v - c[0] for v, c in zip(y, ci)],
                    [c[1] - v for v, c in zip(y, ci)]]).clip(0)
    colors = ["gray" if r["credit"] == "sequence" else
              "C0" if r["credit"].endswith("/position") else "C1" for r in rs]
    ax.barh(range(len(rs)), y, xerr=err, color=colors)
    ax.set_yticks(range(len(rs)), [r["credit"] for r in rs], fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(3.0, color="k", lw=0.8, ls="--")
    for i, r in enumerate(rs):
      cos = r.get("cosine_disattenuated")
      ax.text(0.02, i, "" if cos is None else f"cos {cos:.2f}", va="center",
              fontsize=7, color="white")
    ax.invert_yaxis()
    ax.set_title(f"{key[1]}, {key[2]}\n(mean length "
                 f"{rs[0]['mean_len']:.0f}, {key[0]})", fontsize=9)
    ax.set_xlabel("gradient SNR / sequence credit's (95% CI)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(rows) -> str:
  from benchmarks.common import markdown_table
  cols = ["model", "task", "checkpoint", "mean_len", "credit",
          "cosine_to_reference", "cosine_disattenuated", "batch_cosine",
          "snr", "snr_vs_sequence", "ci95"]
  shown = []
  for r in rows:
    r = dict(r)
    for k in ("cosine_to_reference", "cosine_disattenuated", "batch_cosine"):
      r[k] = "" if r[k] is None else f"{r[k]:.3f}"
    r["snr"] = f"{r['snr']:.4f}"
    r["snr_vs_sequence"] = (f"{r['snr_vs_sequence']:.2f}"
                            if r.get("snr_vs_sequence") is not None else "")
    r["mean_len"] = f"{r['mean_len']:.1f}"
    ci = r.get("snr_vs_sequence_ci95")
    r["ci95"] = f"{ci[0]:.2f}..{ci[1]:.2f}" if ci else ""
    shown.append(r)
  return ("# Gradient signal per GRPO credit (benchmarks/credit_variance.py)"
          "\n\n" + markdown_table(shown, cols) + "\n")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="", help="a trained run (G2P)")
  p.add_argument("--llm", default="", help="an experiments/llm_rl.py task")
  p.add_argument("--hf_path", default="", help="--llm's base (default: "
                 "SmolLM2 + the spell_backward SFT adapters)")
  p.add_argument("--data", default="", help="--llm: a folder of "
                 "{train,dev,test}.jsonl instead of the task's")
  p.add_argument("--source_len", type=int, default=0)
  p.add_argument("--target_len", type=int, default=0)
  p.add_argument("--name", default="", help="the task name in the rows")
  p.add_argument("--checkpoint", default="start",
                 help="what the checkpoint is, in the rows")
  p.add_argument("--model_name", default="")
  p.add_argument("--batches", type=int, default=64)
  p.add_argument("--batch", type=int, default=4, help="B prompts a batch")
  p.add_argument("--samples", type=int, default=8, help="K samples a prompt")
  p.add_argument("--lambdas", default="0.5,0.9")
  p.add_argument("--vjp_batch", type=int, default=-1, help="cotangents "
                 "per backward pass (0: all; default: all for --workdir, "
                 "2 for --llm)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--json", default=RESULTS)
  args = p.parse_args(argv)
  if bool(args.workdir) == bool(args.llm):
    p.error("give one of --workdir (a trained run) or --llm TASK.")
  if args.batches < 2:
    p.error("--batches must be >= 2 (64 or more for the study).")
  import jax
  table = None
  if args.workdir:
    config, task, model, params = from_workdir(args.workdir, args)
    m = config.model
    model_name = args.model_name or (
        f"{m.kind}-{m.num_layers}x{m.embed_dim}" if m.get("num_layers")
        else m.kind)
    name = args.name or config.task
  else:
    config, task, model, params, table = from_llm(args)
    model_name = args.model_name or "smollm2-135m-instruct"
    name = args.name or args.llm
  specs = credit_specs([float(x) for x in args.lambdas.split(",") if x])
  t0 = time.time()
  rows, roll = measure(config, model, params,
                       batch_source(task, config.batch_size, args.seed),
                       jax.random.key(args.seed), num_batches=args.batches,
                       specs=specs, byte_table=table, desc=name,
                       vjp_batch=(args.vjp_batch if args.vjp_batch >= 0
                                  else 2 if args.llm else 0))
  seconds = time.time() - t0
  seq = next(r["snr"] for r in rows if r["credit"] == "sequence")
  out = [dict(model=model_name, task=name, checkpoint=args.checkpoint,
              mean_len=roll["completion_length"], reward=roll["reward"],
              empty_fraction=roll["empty_fraction"], batches=args.batches,
              batch=config.batch_size, samples=config.rl.num_samples,
              aggregation=config.rl.loss_aggregation,
              group_std=bool(config.rl.group_std), seconds=seconds,
              snr_vs_sequence=(r["snr"] / seq if seq > 0 else None), **r)
         for r in rows]
  merge(args.json, out)
  print(markdown(out))


if __name__ == "__main__":
  main()
