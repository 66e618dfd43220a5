"""ir_jax.rewards soft: the soft edit distance against a float64 double loop,
its gradients against finite differences, bounds, padding, extremes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import rewards
from references import random_pairs, ref_soft, ref_soft_grad, num_alignments


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
