"""ir_jax.rewards cosine: the cosine reward against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax import rewards


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
