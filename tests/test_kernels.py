"""Pallas soft-edit-distance kernels (interpret mode) against the XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import rewards


def both(costs, gamma, n, m):
  def run(impl):
    f = lambda c, g: rewards.soft_edit_distance(
        c, g, pred_lengths=n, target_lengths=m, implementation=impl,
        layout="diagonals", insertion_cost=0.9, deletion_cost=1.1)
    value = f(costs, gamma)
    g_costs, g_gamma = jax.grad(lambda c, g: f(c, g).sum(), argnums=(0, 1))(
        costs, jnp.float32(gamma))
    return value, g_costs, g_gamma
  return run("xla"), run("pallas")


@pytest.mark.parametrize("batch,n_max,m_max", [
    (5, 0, 4), (5, 1, 1), (3, 7, 5),
    (129, 6, 9),        # Two lane tiles (128 + 1), the second padded.
    (2, 127, 129),      # Lengths around the 128 tile size.
])
@pytest.mark.parametrize("gamma", [1e-3, 0.3, 10.0])
def test_pallas_matches_xla(batch, n_max, m_max, gamma):
  rng = np.random.default_rng(batch + n_max)
  costs = jnp.asarray(rng.random((batch, n_max, m_max)), jnp.float32)
  n = rng.integers(0, n_max + 1, batch)
  m = rng.integers(0, m_max + 1, batch)
  (v1, g1, gg1), (v2, g2, gg2) = both(costs, gamma, n, m)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g2, g1, atol=1e-4)
  np.testing.assert_allclose(gg2, gg1, rtol=1e-4, atol=1e-4)


def test_pallas_bfloat16_costs():
  rng = np.random.default_rng(0)
  costs = jnp.asarray(rng.random((4, 9, 8)), jnp.bfloat16)
  n, m = np.array([9, 3, 0, 5]), np.array([8, 8, 2, 0])
  (v1, g1, _), (v2, g2, _) = both(costs, 0.5, n, m)
  assert g2.dtype == jnp.bfloat16
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g2, np.float32),
                             np.asarray(g1, np.float32), atol=1e-2)


def test_implementation_is_validated():
  with pytest.raises(ValueError, match="implementation"):
    rewards.soft_edit_distance(jnp.zeros((1, 2, 2)), implementation="cuda")
