"""CE and the fused loss: alpha = 0 is plain CE, padding is ignored, the
reward enters with the right sign, the cosine table is frozen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ir_jax import objectives


def batch(seed=0, b=4, t=6, v=9):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  lengths = jnp.asarray([6, 3, 1, 5], jnp.int32)
  return logits, targets, lengths


def kw(**over):
  d = dict(alpha=0.0, soft_ed_weight=1.0, cosine_weight=0.5, gamma=0.5,
           embeddings=jnp.ones((9, 3)))
  d.update(over)
  return d


def test_alpha_zero_equals_plain_cross_entropy():
  logits, targets, lengths = batch()
  mask = np.arange(6)[None] < np.asarray(lengths)[:, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  want = float((np.asarray(ce) * mask).sum() / mask.sum())
  for compute in (True, False):
    loss, m = objectives.fused_loss(logits, targets, lengths, **kw(),
                                    compute_reward=compute)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(m["ce"], want, rtol=1e-6)
  g1 = jax.grad(lambda l: objectives.fused_loss(l, targets, lengths, **kw())[0])(logits)
  g2 = jax.grad(lambda l: objectives.fused_loss(
      l, targets, lengths, **kw(), compute_reward=False)[0])(logits)
  np.testing.assert_allclose(g1, g2, atol=1e-7)


def test_padding_does_not_change_loss():
  logits, targets, lengths = batch()
  noisy = logits.at[2, 1:].set(100.0)
  a = objectives.fused_loss(logits, targets, lengths, **kw(alpha=0.5))[0]
  b = objectives.fused_loss(noisy, targets, lengths, **kw(alpha=0.5))[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_minimising_fused_loss_raises_reward():
  logits, targets, lengths = batch(1)
  emb = jax.random.normal(jax.random.PRNGKey(0), (9, 3))
  f = lambda l: objectives.fused_loss(l, targets, lengths,
                                      **kw(alpha=1.0, embeddings=emb))
  _, before = f(logits)
  step = jax.jit(lambda l: l - 0.5 * jax.grad(lambda l: f(l)[0])(l))
  for _ in range(30):
    logits = step(logits)
  _, after = f(logits)
  assert after["reward"] > before["reward"]
  assert after["soft_ed"] < before["soft_ed"]


def test_cosine_reward_embeddings_get_no_gradient():
  logits, targets, lengths = batch()
  emb = jnp.ones((9, 3)) + jnp.arange(27.0).reshape(9, 3)
  g = jax.grad(lambda e: objectives.fused_loss(
      logits, targets, lengths, **kw(alpha=1.0, embeddings=e))[0])(emb)
  assert np.all(np.asarray(g) == 0)


def test_soft_ed_implementation_reaches_the_kernel():
  """objective.soft_ed_implementation: the Pallas kernel (interpret mode
  here) gives the XLA path's loss and gradients."""
  logits, targets, lengths = batch(2)
  f = lambda l, impl: objectives.fused_loss(
      l, targets, lengths, **kw(alpha=0.7, implementation=impl))[0]
  loss, grad = jax.value_and_grad(f)(logits, "auto")
  for impl in ("pallas", "xla"):
    other = jax.value_and_grad(f)(logits, impl)
    np.testing.assert_allclose(other[0], loss, rtol=1e-5)
    np.testing.assert_allclose(other[1], grad, atol=1e-5)
  with pytest.raises(ValueError, match="implementation"):   # It is wired.
    f(logits, "cuda")
