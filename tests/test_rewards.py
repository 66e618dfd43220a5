"""Tests for ir_jax.rewards against independent float64 / RapidFuzz references."""

import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein as RFLevenshtein

from ir_jax import rewards

# ---------------------------------------------------------------- references


def ref_table(a, b):
  """Float64-free integer DP table D[k, j] = ED(a[:k], b[:j])."""
  d = np.zeros((len(a) + 1, len(b) + 1), np.int64)
  d[:, 0] = np.arange(len(a) + 1)
  d[0, :] = np.arange(len(b) + 1)
  for i, j in itertools.product(range(1, len(a) + 1), range(1, len(b) + 1)):
    d[i, j] = min(d[i - 1, j - 1] + (a[i - 1] != b[j - 1]), d[i - 1, j] + 1,
                  d[i, j - 1] + 1)
  return d


def ref_soft(c, gamma, ins=1.0, dele=1.0):
  """Float64 soft edit distance by the textbook double loop."""
  n, m = c.shape
  r = np.zeros((n + 1, m + 1))
  r[:, 0] = np.arange(n + 1) * ins
  r[0, :] = np.arange(m + 1) * dele
  for i, j in itertools.product(range(1, n + 1), range(1, m + 1)):
    a = np.array([r[i - 1, j - 1] + c[i - 1, j - 1], r[i - 1, j] + ins,
                  r[i, j - 1] + dele])
    lo = a.min()
    r[i, j] = lo - gamma * np.log(np.exp(-(a - lo) / gamma).sum())
  return r[n, m]


def ref_soft_grad(c, gamma, ins, dele, eps=1e-6):
  g = np.zeros_like(c)
  for idx in np.ndindex(*c.shape):
    cp, cm = c.copy(), c.copy()
    cp[idx] += eps
    cm[idx] -= eps
    g[idx] = (ref_soft(cp, gamma, ins, dele) -
              ref_soft(cm, gamma, ins, dele)) / (2 * eps)
  return g


def num_alignments(n, m):
  """Number of monotone alignment paths (Delannoy number D(n, m))."""
  p = np.ones((n + 1, m + 1))
  for i, j in itertools.product(range(1, n + 1), range(1, m + 1)):
    p[i, j] = p[i - 1, j - 1] + p[i - 1, j] + p[i, j - 1]
  return p[n, m]


def random_pairs(rng, batch, n, m, vocab):
  pred = rng.integers(0, vocab, (batch, n))
  target = rng.integers(0, vocab, (batch, m))
  # Make pairs similar so distances are not all near max(n, m).
  k = min(n, m)
  keep = rng.random((batch, k)) < 0.6
  target[:, :k] = np.where(keep, pred[:, :k], target[:, :k])
  return pred.astype(np.int32), target.astype(np.int32)


# ------------------------------------------------------------- levenshtein


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


# ---------------------------------------------------- prefix rows / rewards


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


# ------------------------------------------------------------------- soft


@pytest.mark.parametrize("layout", ["rows", "diagonals"])
@pytest.mark.parametrize("gamma", [1e-3, 0.1, 1.0, 10.0])
def test_soft_matches_reference_ragged_asymmetric(layout, gamma):
  rng = np.random.default_rng(7)
  b, n_max, m_max = 6, 7, 5
  costs = rng.random((b, n_max, m_max)) * 2
  n = np.array([7, 0, 3, 7, 1, 4])
  m = np.array([5, 3, 0, 2, 1, 5])
  got = rewards.soft_edit_distance(
      jnp.asarray(costs, jnp.float32), gamma, pred_lengths=n,
      target_lengths=m, insertion_cost=0.7, deletion_cost=1.3, layout=layout)
  want = [ref_soft(costs[i, :n[i], :m[i]], gamma, 0.7, 1.3) for i in range(b)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["rows", "diagonals"])
def test_soft_gradients_match_finite_differences(layout):
  rng = np.random.default_rng(8)
  costs = rng.random((3, 5, 4))
  n, m = np.array([5, 3, 4]), np.array([4, 4, 2])
  gamma, ins, dele = 0.5, 0.8, 1.2

  def total(c, g, i, d):
    return rewards.soft_edit_distance(c, g, pred_lengths=n, target_lengths=m,
                                      insertion_cost=i, deletion_cost=d,
                                      layout=layout).sum()

  grads = jax.grad(total, argnums=(0, 1, 2, 3))(
      jnp.asarray(costs, jnp.float32), gamma, ins, dele)
  want = np.zeros_like(costs)
  for i in range(3):
    want[i, :n[i], :m[i]] = ref_soft_grad(costs[i, :n[i], :m[i]], gamma, ins,
                                          dele)
  np.testing.assert_allclose(grads[0], want, atol=2e-5)
  eps = 1e-6
  for k in (1, 2, 3):
    up, down = [gamma, ins, dele], [gamma, ins, dele]
    up[k - 1] += eps
    down[k - 1] -= eps
    fd = sum(ref_soft(costs[i, :n[i], :m[i]], *up) -
             ref_soft(costs[i, :n[i], :m[i]], *down) for i in range(3))
    np.testing.assert_allclose(grads[k], fd / (2 * eps), rtol=1e-4, atol=1e-4)


def test_soft_layouts_agree_on_larger_batch():
  rng = np.random.default_rng(9)
  costs = jnp.asarray(rng.random((16, 33, 29)), jnp.float32)
  n = rng.integers(0, 34, 16)
  m = rng.integers(0, 30, 16)
  def f(layout):
    fn = lambda c: rewards.soft_edit_distance(c, 0.3, pred_lengths=n,
                                              target_lengths=m, layout=layout)
    return fn(costs), jax.grad(lambda c: fn(c).sum())(costs)
  (v1, g1), (v2, g2) = f("rows"), f("diagonals")
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(g1, g2, atol=1e-5)


def test_soft_tends_to_exact_and_respects_bounds():
  rng = np.random.default_rng(10)
  pred, target = random_pairs(rng, 16, 12, 10, vocab=3)
  costs = (pred[:, :, None] != target[:, None, :]).astype(np.float32)
  ed = np.asarray(rewards.levenshtein(pred, target), np.float64)
  np.testing.assert_allclose(rewards.soft_edit_distance(costs, 1e-3), ed,
                             atol=1e-2)
  paths = num_alignments(12, 10)
  for gamma in (0.1, 1.0, 3.0):
    soft = np.asarray(rewards.soft_edit_distance(costs, gamma))
    assert np.all(soft <= ed + 1e-4)
    assert np.all(soft >= ed - gamma * np.log(paths) - 1e-3)


@pytest.mark.parametrize("layout", ["rows", "diagonals"])
def test_soft_padding_invariance_with_nan_padding(layout):
  rng = np.random.default_rng(11)
  costs = rng.random((4, 6, 5)).astype(np.float32)
  n, m = np.array([6, 2, 0, 4]), np.array([5, 3, 2, 0])
  clean = np.where((np.arange(6)[:, None] < n[:, None, None]) &
                   (np.arange(5) < m[:, None, None]), costs, np.nan)
  f = lambda c: rewards.soft_edit_distance(c, 0.5, pred_lengths=n,
                                           target_lengths=m, layout=layout)
  v_nan = f(jnp.asarray(clean))
  g_nan = jax.grad(lambda c: f(c).sum())(jnp.asarray(clean))
  v = f(jnp.asarray(costs))
  np.testing.assert_allclose(v_nan, v)
  assert np.all(np.isfinite(g_nan))
  pad = np.isnan(clean)
  assert np.all(np.asarray(g_nan)[pad] == 0)


@pytest.mark.parametrize("gamma", [1e-3, 1e2])
def test_soft_finite_at_extreme_gamma_and_length(gamma):
  rng = np.random.default_rng(12)
  costs = jnp.asarray(rng.random((1, 1024, 1024)), jnp.float32)
  v, g = jax.value_and_grad(
      lambda c: rewards.soft_edit_distance(c, gamma, layout="diagonals").sum()
  )(costs)
  assert np.isfinite(v) and np.all(np.isfinite(g))
  # Each row of an alignment carries at most one substitution.
  assert float(g.sum(-1).max()) <= 1 + 1e-3


def test_soft_rows_layout_long_sequences_finite():
  rng = np.random.default_rng(13)
  costs = jnp.asarray(rng.random((2, 256, 200)), jnp.float32)
  for gamma in (1e-3, 1e2):
    v, g = jax.value_and_grad(
        lambda c: rewards.soft_edit_distance(c, gamma, layout="rows").sum()
    )(costs)
    assert np.isfinite(v) and np.all(np.isfinite(g))


def test_soft_bfloat16_and_traced_gamma():
  rng = np.random.default_rng(14)
  costs = rng.random((8, 10, 9)).astype(np.float32)
  f32 = rewards.soft_edit_distance(costs, 0.5)
  bf16 = rewards.soft_edit_distance(jnp.asarray(costs, jnp.bfloat16), 0.5)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, rtol=2e-2)
  g = jax.grad(lambda c: rewards.soft_edit_distance(c, 0.5).sum())(
      jnp.asarray(costs, jnp.bfloat16))
  assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
  traced = jax.jit(rewards.soft_edit_distance)(costs, jnp.float32(0.5))
  np.testing.assert_allclose(traced, f32, rtol=1e-6)


def test_soft_from_logits_and_alignment():
  rng = np.random.default_rng(15)
  logits = jnp.asarray(rng.normal(size=(3, 6, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32)
  n, m = np.array([6, 4, 1]), np.array([5, 2, 5])
  probs = jax.nn.softmax(logits)
  costs = 1 - jnp.take_along_axis(
      probs, jnp.broadcast_to(targets[:, None, :], (3, 6, 5)), axis=-1)
  v = rewards.soft_edit_distance_from_logits(logits, targets, 0.7,
                                             pred_lengths=n, target_lengths=m)
  np.testing.assert_allclose(
      v, [ref_soft(np.asarray(costs[i, :n[i], :m[i]], np.float64), 0.7)
          for i in range(3)], rtol=1e-5)
  # Logit gradient vs central differences of the float64 reference.
  g = jax.grad(lambda l: rewards.soft_edit_distance_from_logits(
      l, targets, 0.7, pred_lengths=n, target_lengths=m)[0])(logits)
  lg = np.asarray(logits[0], np.float64)
  def f64(l):
    p = np.exp(l - l.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    c = 1 - p[:, np.asarray(targets[0])]
    return ref_soft(c, 0.7)
  for idx in [(0, 0), (2, int(targets[0, 1])), (5, 3)]:
    up, down = lg.copy(), lg.copy()
    up[idx] += 1e-6
    down[idx] -= 1e-6
    np.testing.assert_allclose(g[0][idx], (f64(up) - f64(down)) / 2e-6,
                               atol=1e-4)
  align = rewards.soft_alignment(costs, 0.7, pred_lengths=n, target_lengths=m)
  assert align.shape == (3, 6, 5)
  assert np.all((np.asarray(align) >= -1e-6) & (np.asarray(align) <= 1 + 1e-6))
  assert np.all(np.asarray(align).sum(-1) <= 1 + 1e-5)


# ----------------------------------------------------------------- cosine


def test_cosine_reward_reference_and_gradient():
  rng = np.random.default_rng(16)
  logits = rng.normal(size=(4, 5, 7))
  targets = rng.integers(0, 7, (4, 6))
  emb = rng.normal(size=(7, 3))
  n, m = np.array([5, 2, 0, 5]), np.array([6, 1, 3, 0])
  got = rewards.cosine_reward(jnp.asarray(logits, jnp.float32), targets,
                              jnp.asarray(emb, jnp.float32), pred_lengths=n,
                              target_lengths=m)
  for b in range(4):
    if n[b] == 0 or m[b] == 0:
      assert got[b] == 0
      continue
    p = np.exp(logits[b, :n[b]])
    p /= p.sum(-1, keepdims=True)
    u = (p @ emb).mean(0)
    v = emb[targets[b, :m[b]]].mean(0)
    want = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    np.testing.assert_allclose(got[b], want, rtol=1e-5)
  g = jax.grad(lambda l: rewards.cosine_reward(
      l, targets, jnp.asarray(emb, jnp.float32), pred_lengths=n,
      target_lengths=m).sum())(jnp.asarray(logits, jnp.float32))
  assert np.all(np.isfinite(g)) and np.abs(g[0]).sum() > 0
  per = rewards.cosine_reward_per_position(
      jnp.asarray(logits[:, :5], jnp.float32), targets[:, :5],
      jnp.asarray(emb, jnp.float32), lengths=n)
  assert per.shape == (4, 5)
  assert np.all(np.asarray(per)[np.arange(5) >= n[:, None]] == 0)


# ------------------------------------------------------------- bad input


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
