"""Shared by the tests: the repository root, the tiny config, metrics files
and a workdir written by an earlier version of ir_jax."""

import json
import os

from ir_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "g2p.py:tiny")
# experiments/g2p.py:tiny with keep_checkpoints=1 and eval_every=100,
# crashed after step 12 (checkpoint 10), written before the one-way
# layout; FULL_RUN holds the same run's numbers, uninterrupted.
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_0_1")
FULL_RUN = os.path.join(ROOT, "tests", "fixtures", "workdir_0_1_full_run.json")


def levenshtein(a, b) -> int:
  """Exact edit distance of two sequences, the textbook O(nm) Python DP
  (an independent reference for the kernels)."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
  return row[-1]


def tiny(**overrides):
  """experiments/g2p.py:tiny with `field=value` overrides."""
  c = config_lib.load(CONFIG)
  return config_lib.apply_overrides(
      c, [f"{k}={v}" for k, v in overrides.items()])


def _position_init(target, target_lengths):
  import jax.numpy as jnp
  return {"target": target, "m": target_lengths.astype(jnp.int32)}


def _position_step(state, token, t):
  import jax.numpy as jnp
  width = state["target"].shape[-1]
  at_t = state["target"][:, jnp.minimum(t, width - 1)]
  hit = (t < state["m"]) & (token == at_t)
  return state, hit.astype(jnp.float32)


def _position_finish(state):
  import jax.numpy as jnp
  return jnp.zeros(state["m"].shape, jnp.float32)


def _position_match():
  from ir_jax import rewards
  return rewards.InstantReward(_position_init, _position_step,
                               _position_finish)


# A user-defined instant reward (+1 per token equal to the target token at
# its position), importable as `helpers.position_match` in rl.rewards.
position_match = _position_match()


def read(path):
  """The records of a metrics.jsonl."""
  with open(path) as f:
    return [json.loads(line) for line in f]


def tiny_rl_problem(candidates):
  """A one-layer Transformer, `rl.mode="mwer"` with 3 candidates, two
  prompts: (config, model, params, batch)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from ir_jax.data.vocab import EOS
  from ir_jax import config as config_lib
  from ir_jax.models import Transformer
  model = Transformer(vocab_size=16, embed_dim=16, num_layers=1, num_heads=2,
                      mlp_dim=16)
  c = config_lib.default_config()
  c.objective.alpha = 0.7
  c.rl.update(mode="mwer", num_samples=3, candidates=candidates)
  source = jnp.array([[0, 1, 7, 8, 2], [1, 9, 9, 10, 2]])
  target = jnp.array([[5, 6, EOS, 0, 0], [7, EOS, 0, 0, 0]])
  batch_ = {"source": source, "target": target,
            "target_lengths": jnp.array([3, 2])}
  params = nn.meta.unbox(model.init(jax.random.key(0), source)["params"])
  return c, model, params, batch_
