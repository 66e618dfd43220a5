"""ir_jax.rewards.protocol: instant rewards through the sampling loop, sequence
rewards, weights, config strings and the host escape hatch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import config as config_lib
from ir_jax import decode, rewards
from ir_jax.data.vocab import EOS
from ir_jax.models import Transformer
from ir_jax.rewards import protocol
from helpers import position_match

from references import ref_table


def levenshtein_dp(a, b):
  return int(ref_table(a, b)[-1, -1])


def scan_reward(reward, pred, lengths, target, target_lengths):
  """Feeds `pred` through an InstantReward as the sampler does: finish on
  the last valid token, nothing after it."""
  state = reward.init(target, target_lengths)
  out = []
  for t in range(pred.shape[1]):
    active = t < lengths
    new, r = reward.step(state, pred[:, t], jnp.int32(t))
    r = r + jnp.where(t == lengths - 1, reward.finish(new), 0.0)
    out.append(jnp.where(active, r, 0.0))
    state = jax.tree.map(lambda a, b: jnp.where(
        active.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, state)
  return jnp.stack(out, 1), state


def random_pairs(seed, batch=16, n=9, m=7, vocab=6):
  rng = np.random.default_rng(seed)
  pred = rng.integers(3, vocab, (batch, n)).astype(np.int32)
  target = rng.integers(3, vocab, (batch, m)).astype(np.int32)
  lengths = rng.integers(1, n + 1, batch).astype(np.int32)
  target_lengths = rng.integers(1, m + 1, batch).astype(np.int32)
  return pred, lengths, target, target_lengths


@pytest.mark.parametrize("per_symbol", [False, True])
def test_edit_distance_through_the_protocol_equals_instant_rewards(per_symbol):
  pred, n, target, m = random_pairs(0)
  got, state = scan_reward(rewards.edit_distance_reward(per_symbol), pred, n,
                           target, m)
  want = rewards.instant_rewards(pred, target, pred_lengths=n,
                                 target_lengths=m)
  if per_symbol:
    want = want / np.maximum(m - 1, 1)[:, None]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  ed = [levenshtein_dp(list(p[:a]), list(t[:b]))
        for p, a, t, b in zip(pred, n, target, m)]
  np.testing.assert_array_equal(rewards.edit_distance_of(state), ed)


def test_weighted_sums_terms_and_keeps_each_return():
  pred, n, target, m = random_pairs(1)
  ed = rewards.edit_distance_reward()
  combo = rewards.weighted((ed, 2.0), (position_match, 0.5))
  assert combo is rewards.weighted((ed, 2.0), (position_match, 0.5))
  got, state = scan_reward(combo, pred, n, target, m)
  a, _ = scan_reward(ed, pred, n, target, m)
  b, _ = scan_reward(position_match, pred, n, target, m)
  np.testing.assert_allclose(got, 2.0 * a + 0.5 * b, rtol=1e-6)
  returns = rewards.term_returns(combo, state)
  np.testing.assert_allclose(returns[:, 0], a.sum(1), rtol=1e-6)
  np.testing.assert_allclose(returns[:, 1], b.sum(1), rtol=1e-6)
  # By hand: position matches within both lengths.
  hits = [sum(int(p[t] == tg[t]) for t in range(min(k, j)))
          for p, k, tg, j in zip(pred, n, target, m)]
  np.testing.assert_array_equal(b.sum(1), hits)


def test_no_instant_terms_reward_nothing():
  pred, n, target, m = random_pairs(2)
  got, _ = scan_reward(rewards.weighted(), pred, n, target, m)
  np.testing.assert_array_equal(got, 0.0)


def test_sequence_rewards_on_hand_made_cases():
  tokens = jnp.asarray([[5, 6, EOS, 0], [5, 7, EOS, 0], [5, 6, 7, EOS]])
  lengths = jnp.asarray([3, 3, 4])
  target = jnp.asarray([[5, 6, EOS], [5, 6, EOS], [5, 6, EOS]])
  m = jnp.asarray([3, 3, 3])
  np.testing.assert_array_equal(
      rewards.exact_match(tokens, lengths, target, m), [1, 0, 0])
  np.testing.assert_array_equal(
      rewards.negative_edit_distance(tokens, lengths, target, m), [0, -1, -1])
  np.testing.assert_array_equal(
      rewards.length_penalty(tokens, lengths, target, m), [0, 0, -1])
  table = jnp.eye(8)
  cos = rewards.cosine_similarity(table)(tokens, lengths, target, m)
  assert float(cos[0]) == pytest.approx(1.0)
  assert 0 < float(cos[1]) < 1 and 0 < float(cos[2]) < 1


def test_in_loop_user_reward_matches_a_replay_of_the_samples():
  model = Transformer(vocab_size=12, embed_dim=32, num_layers=1, num_heads=2,
                      mlp_dim=32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0),
                                    jnp.ones((1, 4), jnp.int32)))
  source = jnp.asarray([[0, 1, 5, 6, 2], [1, 7, 8, 9, 2]], jnp.int32)
  target = jnp.asarray([[5, 6, 7, EOS], [8, 9, EOS, 0]], jnp.int32)
  m = jnp.asarray([4, 3], jnp.int32)
  combo = rewards.weighted((rewards.edit_distance_reward(), 1.0),
                           (position_match, 1.0))
  out = decode.sample_with_rewards(model, params, source, target, m,
                                   jax.random.PRNGKey(1), max_len=6,
                                   num_samples=3, temperature=1.5,
                                   reward=combo)
  tgt, mm = jnp.repeat(target, 3, axis=0), jnp.repeat(m, 3)
  replay, _ = scan_reward(combo, out["tokens"], out["lengths"], tgt, mm)
  np.testing.assert_allclose(out["rewards"], replay, rtol=1e-6)
  # The library's replay (beam lists are scored with it) agrees too.
  scored, state = rewards.score_sequences(combo, out["tokens"], out["lengths"],
                                          tgt, mm)
  np.testing.assert_allclose(out["rewards"], scored, rtol=1e-6)
  np.testing.assert_allclose(rewards.term_returns(combo, state),
                             rewards.term_returns(combo, out["reward_state"]),
                             rtol=1e-6)
  totals = rewards.term_returns(combo, out["reward_state"])
  np.testing.assert_allclose(totals.sum(1), np.asarray(out["rewards"]).sum(1),
                             rtol=1e-6)


def test_host_reward_equals_the_jitted_one():
  pred, n, target, m = random_pairs(3)

  def python_ed(tokens, lengths, targets, target_lengths):
    return [-levenshtein_dp(list(p[:a]), list(t[:b]))
            for p, a, t, b in zip(tokens, lengths, targets, target_lengths)]

  host = jax.jit(rewards.host_reward(python_ed))
  device = jax.jit(rewards.negative_edit_distance)
  np.testing.assert_array_equal(host(pred, n, target, m),
                                device(pred, n, target, m))
  # On decoded text: the same numbers from strings.
  letters = lambda ids: "".join(chr(ord("a") + int(i)) for i in ids)

  def text_ed(completions, targets):
    return [-levenshtein_dp(list(c), list(t))
            for c, t in zip(completions, targets)]

  text = jax.jit(rewards.host_reward(text_ed, detokenize=letters))
  np.testing.assert_array_equal(text(pred, n, target, m),
                                device(pred, n, target, m))


def test_parse_rewards():
  spec = rewards.parse_rewards("edit_distance:1.0, exact_match:0.5,"
                               "helpers.position_match:2")
  assert spec.instant == (("edit_distance", 1.0),
                          ("helpers.position_match", 2.0))
  assert spec.sequence == (("exact_match", 0.5),)
  assert rewards.term_names(spec) == ["edit_distance",
                                      "helpers.position_match", "exact_match"]
  assert rewards.parse_rewards("cosine").sequence == (("cosine", 1.0),)
  for bad, match in [("", "empty"), ("edit_distanc", "unknown reward"),
                     ("exact_match:x", "not a number"),
                     ("no_such_pkg.reward", "cannot import"),
                     ("exact_match:inf", "finite")]:
    with pytest.raises(ValueError, match=match):
      rewards.parse_rewards(bad)


def test_config_knows_the_builtin_names():
  builtins = {**protocol.BUILTIN_INSTANT, **protocol.BUILTIN_SEQUENCE,
              **protocol.NEEDS_EMBEDDINGS, **protocol.NEEDS_BYTE_TABLE}
  assert set(config_lib.REWARD_NAMES) == set(builtins)
