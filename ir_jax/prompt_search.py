"""Discrete prompt search on a frozen model, scored on device.

`prompt.mode="search"` (`search_and_evaluate`, its own entry: `ir-jax
train` dispatches to it): P token ids in the prompt slots after BOS
(ir_jax.models.prompting), improved by evolution (elites, uniform
crossover, mutation) or greedy token replacement, each population scored
in one jitted call: vmapped over candidates, greedy decoding, reward =
-ED / |target| on a fixed batch of training pairs (RLPrompt / APE style,
with the reward on device). Soft prompts (`prompt.mode="soft"`) are trained
by the ordinary loop (ir_jax.train) with the prompt as the only trainable
param.

The best prompt is saved in WORKDIR/prompt (`workdir.save_prompt`), tied
to the frozen checkpoint by a fingerprint of its params.
"""

import os
import sys
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax import config as config_lib
from ir_jax import decode, evaluate, rewards, state, workdir as workdir_lib
from ir_jax.data import tasks
from ir_jax.data.vocab import EOS
from ir_jax.models import prompting

def scoring_batch(task, size: int, seed: int) -> Dict[str, np.ndarray]:
  """A fixed batch of training pairs that scores candidates (the reported
  dev/test splits are never used to choose the prompt)."""
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(task.train["target"]), min(size, len(task.train["target"])),
                   replace=False)
  return {k: v[np.sort(idx)] for k, v in task.train.items()}


def _score_one(model, params, source, target, target_lengths, ids, max_len):
  source = prompting.fill_slots(source, ids)
  tokens, lengths = decode.generate(model, params, source, max_len=max_len)
  # Symbols only: EOS excluded on both sides (a missing EOS scores all T).
  has_eos = (tokens == EOS).any(axis=1)
  m = jnp.maximum(target_lengths - 1, 0)
  dist = rewards.levenshtein(tokens, target,
                             pred_lengths=jnp.where(has_eos, lengths - 1, lengths),
                             target_lengths=m)
  return -jnp.mean(dist / jnp.maximum(m, 1))


def score_population(model, params, source, target, target_lengths,
                     candidates, *, max_len: int) -> jax.Array:
  """f32[C]: mean reward -ED/|target| of each candidate prompt ids[C, P]
  with greedy decoding, all candidates in one jitted, vmapped call."""
  return _score_population(model, params, jnp.asarray(source),
                           jnp.asarray(target), jnp.asarray(target_lengths),
                           jnp.asarray(candidates, jnp.int32), max_len=max_len)


def _score_population_impl(model, params, source, target, target_lengths,
                           candidates, *, max_len):
  return jax.vmap(lambda ids: _score_one(model, params, source, target,
                                         target_lengths, ids, max_len))(
                                             candidates)


_score_population = jax.jit(_score_population_impl,
                            static_argnames=("model", "max_len"))


def evolve(score_fn, symbols: np.ndarray, length: int, *, rounds: int,
           population: int, elite: int, mutation_rate: float, seed: int,
           log=None):
  """Evolutionary search: keep the `elite` best, refill by uniform
  crossover of two elites plus per-token mutation. Returns (best ids,
  best reward, history [{round, best, mean, best_ids}])."""
  rng = np.random.default_rng(seed)
  pop = rng.choice(symbols, (population, length)).astype(np.int32)
  best, best_score, history = None, -np.inf, []
  elite = max(1, min(elite, population))
  for r in range(rounds):
    scores = np.asarray(score_fn(pop))
    order = np.argsort(-scores, kind="stable")
    if scores[order[0]] > best_score:
      best, best_score = pop[order[0]].copy(), float(scores[order[0]])
    history.append({"round": r, "best": best_score,
                    "mean": float(scores.mean()), "best_ids": best.tolist()})
    if log:
      log(history[-1])
    parents = pop[order[:elite]]
    a = parents[rng.integers(elite, size=population - elite)]
    b = parents[rng.integers(elite, size=population - elite)]
    children = np.where(rng.random(a.shape) < 0.5, a, b)
    mutate = rng.random(children.shape) < mutation_rate
    children[mutate] = rng.choice(symbols, int(mutate.sum()))
    pop = np.concatenate([parents, children]).astype(np.int32)
  return best, best_score, history


def greedy_replace(score_fn, symbols: np.ndarray, length: int, *, rounds: int,
                   population: int, seed: int, log=None):
  """Coordinate ascent: round r tries every symbol at slot r mod P (scored
  in chunks of `population`) and keeps the best. Same return as `evolve`."""
  rng = np.random.default_rng(seed)
  best = rng.choice(symbols, length).astype(np.int32)
  best_score = float(np.asarray(score_fn(best[None]))[0])
  history = []
  for r in range(rounds):
    slot = r % length
    cands = np.repeat(best[None], len(symbols), 0)
    cands[:, slot] = symbols
    scores = np.concatenate([np.asarray(score_fn(cands[i:i + population]))
                             for i in range(0, len(cands), population)])
    k = int(np.argmax(scores))
    if scores[k] > best_score:
      best, best_score = cands[k].copy(), float(scores[k])
    history.append({"round": r, "best": best_score,
                    "mean": float(scores.mean()), "best_ids": best.tolist()})
    if log:
      log(history[-1])
  return best, best_score, history


def evaluate_ids(model, variables, task, ids, batch_size: int,
                 splits=None) -> Dict[str, Dict[str, float]]:
  """{split: PER/WER} of greedy outputs with prompt `ids` in the slots."""
  out = {}
  for split in splits or tuple(task.eval_sets):
    data = task.eval_sets[split]
    source = np.asarray(prompting.fill_slots(jnp.asarray(data.source),
                                             jnp.asarray(ids, jnp.int32)))
    outputs = evaluate.generate_symbols(model, variables, task, source,
                                        batch_size, data.direction)
    out[split] = evaluate.error_rates(outputs, data.references)
  return out


def search_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """`prompt.mode="search"`: finds P prompt tokens for the frozen model in
  `config.init_from`, logs the reward per round (metrics.jsonl,
  TensorBoard), evaluates the best prompt on every eval set, saves it."""
  config_lib.validate(config, num_processes=jax.process_count())
  task = tasks.build(config)
  workdir_lib.check_frozen(config.init_from, config, task)
  model = state.make_model(config, task)
  workdir_lib.write_run_files(workdir, config, task)
  params = workdir_lib.restore_params(config.init_from, state.abstract_params(
      config, model, state.make_optimizer(config), task))
  p = config.prompt
  batch = scoring_batch(task, int(p.score_words), config.seed)
  variables = {"params": params}
  score_fn = lambda cands: score_population(
      model, variables, batch["source"], batch["target"],
      batch["target_lengths"], cands, max_len=task.target_len)
  writer = workdir_lib.MetricWriter(workdir)
  t0 = time.time()

  def log(h):
    prompt = " ".join(task.vocab.symbols[i] for i in h["best_ids"])
    writer.write({"step": h["round"], "best_reward": h["best"],
                  "mean_reward": h["mean"], "seconds": time.time() - t0})
    writer.text("search/best_prompt", prompt, h["round"])
    print(f"round {h['round']}: best reward {h['best']:.4f} (mean "
          f"{h['mean']:.4f}) prompt [{prompt}]", file=sys.stderr)

  symbols = prompting.symbol_ids(task)
  if p.strategy == "evolve":
    best, best_score, _ = evolve(
        score_fn, symbols, int(p.length), rounds=int(p.rounds),
        population=int(p.population), elite=int(p.elite),
        mutation_rate=float(p.mutation_rate), seed=config.seed, log=log)
  else:
    best, best_score, _ = greedy_replace(
        score_fn, symbols, int(p.length), rounds=int(p.rounds),
        population=int(p.population), seed=config.seed, log=log)
  search_seconds = time.time() - t0
  results = {}
  for split, rates in evaluate_ids(model, variables, task, best,
                                   config.eval_batch_size).items():
    results[split] = dict(step=int(p.rounds), split=split, **rates)
    writer.write(results[split])
  writer.close()
  symbols_of = [task.vocab.symbols[i] for i in best]
  workdir_lib.save_prompt(workdir, best.astype(np.int32), {
      "kind": "discrete", "length": int(p.length), "ids": best.tolist(),
      "symbols": symbols_of, "reward": best_score,
      "search_seconds": search_seconds,
      "fingerprint": workdir_lib.fingerprint(params),
      "frozen_from": os.path.abspath(config.init_from),
      "data": config.data.to_dict()})
  print(f"best prompt [{' '.join(symbols_of)}] reward {best_score:.4f} "
        f"({search_seconds:.0f} s)", file=sys.stderr)
  return results
