"""Prompt optimisation by reward on a frozen model: soft prompts and search.

Both work on the P prompt slots after BOS (ir_jax.models.prompting):

* soft (`prompt.mode="soft"`, run by `train.train_and_evaluate`): P learned
  vectors replace the slots' embeddings (Lester et al., 2021). Only the
  prompt is differentiated and has optimizer state; any objective of the
  pipeline trains it (CE, fused soft-ED/cosine reward, RL).
* search (`prompt.mode="search"`, `search_and_evaluate`): P token ids,
  improved by evolution (elites, uniform crossover, mutation) or greedy
  token replacement, each population scored in one jitted call: vmapped
  over candidates, greedy decoding, reward = -ED / |target| on a fixed
  batch of training pairs (RLPrompt / APE style, with the reward on
  device).

A tuned prompt is saved on its own in WORKDIR/prompt (orbax array + a
prompt.json), tied to the frozen checkpoint by a fingerprint of its
params; loading it onto another model is refused.
"""

import hashlib
import json
import os
import sys
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax import config as config_lib
from ir_jax import decode, rewards
from ir_jax.data.vocab import EOS, SPECIALS
from ir_jax.models import prompting

PROMPT_DIR = "prompt"


# ------------------------------------------------------------ frozen model


def check_frozen(init_from: str, config, task) -> None:
  """Refuses a frozen workdir whose model or vocabulary differ from the
  config's (a prompt only means something for the model it was tuned on)."""
  from ir_jax import train
  if not os.path.exists(os.path.join(init_from, "config.json")):
    raise FileNotFoundError(f"init_from={init_from!r} has no config.json: "
                            "not a trained ir_jax workdir.")
  mismatch = train.run_mismatch(init_from, config, task)
  if mismatch:
    raise ValueError(f"The frozen model in {init_from} is not this config's "
                     f"model: {mismatch}\nSet config.model and config.data "
                     "to the frozen run's.")


def fingerprint(params) -> str:
  """sha256 of the param tree's structure, shapes and embedding table:
  equal for the same checkpoint, different for another one."""
  h = hashlib.sha256()
  flat = jax.tree_util.tree_flatten_with_path(
      {k: v for k, v in params.items() if k != "prompt"})[0]
  for path, leaf in flat:
    h.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype}".encode())
  h.update(np.asarray(jax.device_get(params["embed"]["embedding"]),
                      np.float32).tobytes())
  return h.hexdigest()[:16]


def symbol_ids(task) -> np.ndarray:
  """Token ids a discrete prompt may use: every non-special symbol."""
  return np.arange(len(SPECIALS), task.vocab.size, dtype=np.int32)


def init_soft_prompt(config, task, embedding: jax.Array) -> jax.Array:
  """f32[P, E] by `prompt.init`: "tag" = the task tag's embedding in every
  slot (P = 1 reproduces the hand tag exactly), "vocab" = embeddings of P
  random symbols (Lester et al.), "random" = N(0, 1) like the embeddings."""
  p = config.prompt
  rng = np.random.default_rng(config.seed)
  if p.init == "tag":
    if not task.prompt or task.prompt[0] < len(SPECIALS):
      raise ValueError("prompt.init='tag' needs data.tags=True.")
    ids = np.asarray(task.prompt, np.int32)
  elif p.init == "vocab":
    ids = rng.choice(symbol_ids(task), int(p.length))
  else:
    return jnp.asarray(rng.standard_normal(
        (int(p.length), embedding.shape[1])), jnp.float32)
  return jnp.asarray(embedding)[ids].astype(jnp.float32)


# ------------------------------------------------------------ save / load


def save_prompt(directory: str, value, meta: Dict[str, Any]) -> str:
  """WORKDIR/prompt: `value` (soft f32[P, E] or token ids int32[P]) via
  orbax, and prompt.json with its kind, slots, symbols and fingerprint."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.path.join(directory, PROMPT_DIR))
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(path, "value"), {"value": np.asarray(value)},
              force=True)
  with open(os.path.join(path, "prompt.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return path


def load_prompt(path: str, params=None) -> Dict[str, Any]:
  """{"value": array, **meta} from a prompt directory (or the workdir that
  holds one). With `params`, refuses a prompt tuned for another model."""
  import orbax.checkpoint as ocp
  if os.path.isdir(os.path.join(path, PROMPT_DIR)):
    path = os.path.join(path, PROMPT_DIR)
  meta_path = os.path.join(path, "prompt.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"No prompt.json in {path}.")
  with open(meta_path) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckpt:
    value = ckpt.restore(os.path.abspath(os.path.join(path, "value")))["value"]
  if params is not None and fingerprint(params) != meta["fingerprint"]:
    raise ValueError(
        f"The prompt in {path} was tuned for another checkpoint (fingerprint "
        f"{meta['fingerprint']}, this model {fingerprint(params)}; tuned on "
        f"{meta.get('frozen_from')}).")
  return dict(meta, value=np.asarray(value))


# ------------------------------------------------------------ search


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
  from ir_jax import evaluate
  out = {}
  for split in splits or tuple(task.eval_sets):
    data = task.eval_sets[split]
    source = np.asarray(prompting.fill_slots(jnp.asarray(data.source),
                                             jnp.asarray(ids, jnp.int32)))
    outputs = evaluate.generate_symbols(model, variables, task, source,
                                        batch_size)
    out[split] = evaluate.error_rates(outputs, data.references)
  return out


def search_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """`prompt.mode="search"`: finds P prompt tokens for the frozen model in
  `config.init_from`, logs the reward per round (metrics.jsonl,
  TensorBoard), evaluates the best prompt on every eval set, saves it."""
  from ir_jax import train
  from ir_jax.data import tasks
  train.validate(config)
  task = tasks.build(config)
  check_frozen(config.init_from, config, task)
  model = train.make_model(config, task)
  os.makedirs(workdir, exist_ok=True)
  config_lib.save(config, os.path.join(workdir, "config.json"))
  with open(os.path.join(workdir, "vocab.json"), "w") as f:
    json.dump(list(task.vocab.symbols), f)
  abstract = jax.eval_shape(lambda: train.init_state(
      config, model, train.make_optimizer(config), task)).params
  params = train.restore_params(config.init_from, abstract)
  p = config.prompt
  batch = scoring_batch(task, int(p.score_words), config.seed)
  variables = {"params": params}
  score_fn = lambda cands: score_population(
      model, variables, batch["source"], batch["target"],
      batch["target_lengths"], cands, max_len=task.target_len)
  writer = train.MetricWriter(workdir)
  t0 = time.time()

  def log(h):
    prompt = " ".join(task.vocab.symbols[i] for i in h["best_ids"])
    writer.write({"step": h["round"], "best_reward": h["best"],
                  "mean_reward": h["mean"], "seconds": time.time() - t0})
    writer.text("search/best_prompt", prompt, h["round"])
    print(f"round {h['round']}: best reward {h['best']:.4f} (mean "
          f"{h['mean']:.4f}) prompt [{prompt}]", file=sys.stderr)

  symbols = symbol_ids(task)
  if p.strategy == "evolve":
    best, best_score, history = evolve(
        score_fn, symbols, int(p.length), rounds=int(p.rounds),
        population=int(p.population), elite=int(p.elite),
        mutation_rate=float(p.mutation_rate), seed=config.seed, log=log)
  elif p.strategy == "greedy":
    best, best_score, history = greedy_replace(
        score_fn, symbols, int(p.length), rounds=int(p.rounds),
        population=int(p.population), seed=config.seed, log=log)
  else:
    raise ValueError(f"prompt.strategy must be 'evolve' or 'greedy', got "
                     f"{p.strategy!r}.")
  search_seconds = time.time() - t0
  results = {}
  for split, rates in evaluate_ids(model, variables, task, best,
                                   config.eval_batch_size).items():
    results[split] = dict(step=int(p.rounds), split=split, **rates)
    writer.write(results[split])
  writer.close()
  symbols_of = [task.vocab.symbols[i] for i in best]
  save_prompt(workdir, best.astype(np.int32), {
      "kind": "discrete", "length": int(p.length), "ids": best.tolist(),
      "symbols": symbols_of, "reward": best_score,
      "search_seconds": search_seconds, "fingerprint": fingerprint(params),
      "frozen_from": os.path.abspath(config.init_from),
      "data": config.data.to_dict()})
  print(f"best prompt [{' '.join(symbols_of)}] reward {best_score:.4f} "
        f"({search_seconds:.0f} s)", file=sys.stderr)
  return results
