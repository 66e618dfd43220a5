"""ir_jax.rewards exact: Levenshtein, prefix rows, instant rewards, OCD targets,
against RapidFuzz and a plain integer DP; argument errors of every reward."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein as RFLevenshtein

from ir_jax import rewards
from references import ref_table, random_pairs


@pytest.mark.parametrize("n,m", [(0, 0), (0, 5), (5, 0), (1, 1), (63, 63),
                                 (64, 64), (65, 65), (64, 65), (300, 300),
                                 (17, 300), (300, 40)])
def test_levenshtein_matches_rapidfuzz(n, m):
  rng = np.random.default_rng(n * 1000 + m)
  pred, target = random_pairs(rng, 24, n, m, vocab=50_000 if n < 100 else 4)
  got = np.asarray(rewards.levenshtein(pred, target))
  want = [RFLevenshtein.distance(list(p), list(t))
          for p, t in zip(pred, target)]
  np.testing.assert_array_equal(got, want)


def test_levenshtein_ragged_lengths_and_padding_invariance():
  rng = np.random.default_rng(0)
  pred, target = random_pairs(rng, 64, 70, 90, vocab=5)
  n = rng.integers(0, 71, 64)
  m = rng.integers(0, 91, 64)
  got = rewards.levenshtein(pred, target, pred_lengths=n, target_lengths=m)
  want = [RFLevenshtein.distance(list(p[:a]), list(t[:b]))
          for p, t, a, b in zip(pred, target, n, m)]
  np.testing.assert_array_equal(got, want)
  junk_p = np.where(np.arange(70) < n[:, None], pred, 99)
  junk_t = np.where(np.arange(90) < m[:, None], target, -7)
  np.testing.assert_array_equal(
      rewards.levenshtein(junk_p, junk_t, pred_lengths=n, target_lengths=m),
      got)


def test_levenshtein_long_target_uses_word_scan():
  # 600 columns = 19 words, above the unrolled-word limit.
  rng = np.random.default_rng(1)
  pred, target = random_pairs(rng, 4, 40, 600, vocab=3)
  want = [RFLevenshtein.distance(list(p), list(t))
          for p, t in zip(pred, target)]
  np.testing.assert_array_equal(rewards.levenshtein(pred, target), want)


def test_levenshtein_leading_batch_dims_and_jit():
  rng = np.random.default_rng(2)
  pred, target = random_pairs(rng, 12, 20, 25, vocab=6)
  flat = rewards.levenshtein(pred, target)
  shaped = jax.jit(rewards.levenshtein)(pred.reshape(3, 4, 20),
                                        target.reshape(3, 4, 25))
  assert shaped.shape == (3, 4)
  np.testing.assert_array_equal(shaped.reshape(-1), flat)
  single = rewards.levenshtein(pred[0], target[0])
  assert single.shape == () and single == flat[0]


def test_levenshtein_vmap():
  rng = np.random.default_rng(3)
  pred, target = random_pairs(rng, 8, 9, 11, vocab=4)
  np.testing.assert_array_equal(
      jax.vmap(rewards.levenshtein)(pred, target),
      rewards.levenshtein(pred, target))


seqs = st.lists(st.integers(0, 3), max_size=40)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(seqs, seqs, seqs)
def test_levenshtein_metric_properties(a, b, c):
  def ed(x, y):
    x = np.asarray(x, np.int32).reshape(len(x))
    y = np.asarray(y, np.int32).reshape(len(y))
    return int(rewards.levenshtein(x, y))
  assert ed(a, a) == 0
  assert ed(a, b) == ed(b, a)
  assert (ed(a, b) == 0) == (a == b)
  assert ed(a, c) <= ed(a, b) + ed(b, c)
  assert abs(len(a) - len(b)) <= ed(a, b) <= max(len(a), len(b))


def test_prefix_table_and_incremental_rows():
  rng = np.random.default_rng(4)
  pred, target = random_pairs(rng, 6, 13, 9, vocab=4)
  n = np.array([13, 0, 5, 13, 1, 7])
  m = np.array([9, 9, 0, 4, 1, 9])
  table = np.asarray(rewards.prefix_edit_distances(
      pred, target, pred_lengths=n, target_lengths=m))
  assert table.shape == (6, 14, 10)
  for b in range(6):
    ref = ref_table(pred[b, :n[b]], target[b, :m[b]])
    np.testing.assert_array_equal(table[b, :n[b] + 1, :m[b] + 1], ref)
    # Rows past n repeat row n.
    np.testing.assert_array_equal(
        table[b, n[b]:], np.repeat(table[b, n[b]][None], 14 - n[b], 0))
  row = rewards.edit_row_init(target, m)
  step = jax.jit(rewards.edit_row_step)
  for k in range(13):
    np.testing.assert_array_equal(row, table[:, k])
    new = step(row, pred[:, k], target, m)
    row = jnp.where((k < n)[:, None], new, row)
    np.testing.assert_array_equal(row, table[:, k + 1])


def test_instant_rewards_sum_to_minus_distance():
  rng = np.random.default_rng(5)
  pred, target = random_pairs(rng, 32, 30, 25, vocab=4)
  n = rng.integers(0, 31, 32)
  m = rng.integers(0, 26, 32)
  r = np.asarray(rewards.instant_rewards(pred, target, pred_lengths=n,
                                         target_lengths=m))
  ed = np.asarray(rewards.levenshtein(pred, target, pred_lengths=n,
                                      target_lengths=m))
  assert r.dtype == np.float32 and r.shape == (32, 30)
  np.testing.assert_allclose(r.sum(-1)[n > 0], -ed[n > 0])
  np.testing.assert_array_equal(r[n == 0], 0.0)
  k = np.arange(30)
  assert np.all(r[k >= n[:, None]] == 0)
  nonfinal = r[k < n[:, None] - 1]
  assert set(np.unique(nonfinal)) <= {0.0, -1.0}
  # Against the definition on the reference table.
  for b in np.flatnonzero(n > 0)[:5]:
    d = ref_table(pred[b, :n[b]], target[b, :m[b]])
    phi = -d.min(1)
    want = np.diff(phi).astype(np.float32)
    want[-1] = -d[-1, -1] - phi[-2]
    np.testing.assert_array_equal(r[b, :n[b]], want)


def test_instant_rewards_perfect_prediction_is_zero():
  target = np.array([[3, 1, 4, 1, 5]], np.int32)
  np.testing.assert_array_equal(rewards.instant_rewards(target, target), 0.0)


def test_optimal_completion_targets_reference():
  rng = np.random.default_rng(6)
  vocab, eos = 7, 0
  pred, target = random_pairs(rng, 5, 8, 6, vocab=vocab)
  n = np.array([8, 3, 0, 8, 5])
  m = np.array([6, 6, 2, 0, 4])
  got = np.asarray(rewards.optimal_completion_targets(
      pred, target, vocab_size=vocab, eos_id=eos, pred_lengths=n,
      target_lengths=m))
  assert got.shape == (5, 9, vocab) and got.dtype == bool
  for b in range(5):
    d = ref_table(pred[b, :n[b]], target[b, :m[b]])
    for k in range(9):
      row = d[min(k, n[b])]
      best = row.min()
      want = np.zeros(vocab, bool)
      for j in range(m[b]):
        if row[j] == best:
          want[target[b, j]] = True
      want[eos] |= row[m[b]] == best
      np.testing.assert_array_equal(got[b, k], want)


def test_optimal_completion_on_perfect_prefix_is_next_token():
  target = np.array([2, 3, 4, 5], np.int32)
  got = rewards.optimal_completion_targets(target, target, vocab_size=8,
                                           eos_id=1)
  for k in range(4):
    assert np.flatnonzero(got[k]).tolist() == [int(target[k])]
  assert np.flatnonzero(got[4]).tolist() == [1]


def test_bad_input_raises_named_errors():
  ok = np.zeros((2, 3), np.int32)
  with pytest.raises(ValueError, match="pred"):
    rewards.levenshtein(ok.astype(np.float32), ok)
  with pytest.raises(ValueError, match="Batch shapes"):
    rewards.levenshtein(ok, np.zeros((3, 3), np.int32))
  with pytest.raises(ValueError, match="pred_lengths"):
    rewards.levenshtein(ok, ok, pred_lengths=np.zeros((3,), np.int32))
  with pytest.raises(ValueError, match="rank"):
    rewards.levenshtein(np.int32(3), ok)
  costs = np.zeros((2, 3, 4), np.float32)
  with pytest.raises(ValueError, match="gamma"):
    rewards.soft_edit_distance(costs, 0.0)
  with pytest.raises(ValueError, match="gamma"):
    rewards.soft_edit_distance(costs, -1.0)
  with pytest.raises(ValueError, match="costs"):
    rewards.soft_edit_distance(costs.astype(np.int32))
  with pytest.raises(ValueError, match="target_lengths"):
    rewards.soft_edit_distance(costs, target_lengths=np.ones((2, 1), np.int32))
  with pytest.raises(ValueError, match="layout"):
    rewards.soft_edit_distance(costs, layout="columns")
  with pytest.raises(ValueError, match="eos_id"):
    rewards.optimal_completion_targets(ok, ok, vocab_size=4, eos_id=4)
  with pytest.raises(ValueError, match="embeddings"):
    rewards.cosine_reward(np.zeros((2, 3, 5), np.float32), ok,
                          np.zeros((4, 2), np.float32))


def test_traced_lengths_are_clamped():
  pred = np.array([[1, 2, 3]], np.int32)
  target = np.array([[1, 2]], np.int32)
  f = jax.jit(lambda a, b: rewards.levenshtein(pred, target, pred_lengths=a,
                                               target_lengths=b))
  assert f(np.array([9]), np.array([-4])) == rewards.levenshtein(
      pred, target, target_lengths=np.array([0]))
