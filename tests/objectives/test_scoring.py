"""Scoring K samples per prompt: the per-token rewards sum to each return,
the return is the reward of the decoded sample (an independent Python DP),
sequence terms land on the last token, and the logged statistics match
the samples."""

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax import objectives
from ir_jax.data.vocab import EOS
from helpers import levenshtein, tiny_rl_problem


def _scored(rewards_spec):
  c, model, params, batch_ = tiny_rl_problem("samples")
  c.rl.update(mode="seq", num_samples=4, rewards=rewards_spec)
  scored = objectives.sample_and_score(c, model, params, batch_,
                                       jax.random.key(5), num_samples=4,
                                       temperature=1.0)
  return c, batch_, scored


def test_returns_are_the_rewards_of_the_decoded_samples():
  _, batch_, s = _scored("edit_distance:1.0")
  tokens, lengths = np.asarray(s["tokens"]), np.asarray(s["lengths"])
  target = np.repeat(np.asarray(batch_["target"]), 4, axis=0)
  m = np.repeat(np.asarray(batch_["target_lengths"]), 4)
  np.testing.assert_allclose(s["token_rewards"].sum(-1), s["returns"],
                             rtol=1e-6)
  for i in range(len(tokens)):
    ed = levenshtein(tokens[i, :lengths[i]], target[i, :m[i]])
    assert int(s["edit_distance"][i]) == ed
    # Per symbol: the EOS is not a symbol of the target.
    np.testing.assert_allclose(s["returns"][i], -ed / (m[i] - 1), rtol=1e-6)
  # Past each sample's end no reward is given.
  past = np.arange(tokens.shape[1])[None] >= lengths[:, None]
  assert np.all(np.asarray(s["token_rewards"])[past] == 0)


def test_sequence_terms_are_credited_to_the_last_token():
  _, batch_, s = _scored("edit_distance:1.0,exact_match:2.0")
  _, _, plain = _scored("edit_distance:1.0")
  lengths = np.asarray(s["lengths"])
  extra = np.asarray(s["token_rewards"]) - np.asarray(plain["token_rewards"])
  rows = np.arange(len(lengths))
  np.testing.assert_allclose(extra[rows, lengths - 1],
                             2.0 * np.asarray(s["terms"][:, 1]), atol=1e-6)
  extra[rows, lengths - 1] = 0
  assert np.all(extra == 0)


def test_reward_metrics_describe_the_samples():
  c, _, s = _scored("edit_distance:1.0")
  m = objectives.reward_metrics(c, s)
  lengths = np.asarray(s["lengths"])
  np.testing.assert_allclose(m["reward"], np.mean(s["returns"]), rtol=1e-6)
  np.testing.assert_allclose(m["sample_length"], lengths.mean(), rtol=1e-6)
  np.testing.assert_allclose(m["empty_fraction"], np.mean(lengths <= 1))
  tokens = np.asarray(s["tokens"])
  ended = tokens[np.arange(len(lengths)), lengths - 1] == EOS
  np.testing.assert_array_equal(s["ended"], ended)
  np.testing.assert_allclose(m["completion_length"],
                             np.mean(lengths - ended), rtol=1e-6)
  np.testing.assert_allclose(m["reward/edit_distance"],
                             np.mean(s["terms"][:, 0]), rtol=1e-6)
  # An all-empty batch is flagged as such.
  empty = dict(s, lengths=jnp.ones_like(s["lengths"]))
  assert float(objectives.reward_metrics(c, empty)["empty_fraction"]) == 1.0
