"""KL penalties: zero for the same model, exact over the sampler's support."""

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax import objectives


def test_kl_to_reference_zero_for_same_model():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
  lengths = jnp.asarray([3, 1])
  assert float(objectives.kl_to_reference(logits, logits, lengths)) < 1e-6
  assert float(objectives.kl_to_reference(logits, -logits, lengths)) > 0.1


def test_exact_kl_runs_over_the_support_the_sampler_draws_from():
  """PAD is never sampled: the exact KL is that of the two distributions
  renormalised without it (it summed over PAD too)."""
  rng = np.random.default_rng(1)
  p_logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  q_logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  p_logits[..., 0] += 3.0                     # Much mass on PAD (id 0).
  keep = np.arange(7) != 0

  def kl(a, b):
    a, b = a[..., keep], b[..., keep]
    la = a - np.log(np.exp(a).sum(-1, keepdims=True))
    lb = b - np.log(np.exp(b).sum(-1, keepdims=True))
    return (np.exp(la) * (la - lb)).sum(-1)

  got = objectives.exact_kl(jnp.asarray(p_logits), jnp.asarray(q_logits),
                            pad_id=0, eos_id=3)
  np.testing.assert_allclose(got, kl(p_logits, q_logits), rtol=1e-5)
  full = objectives.exact_kl(jnp.asarray(p_logits), jnp.asarray(q_logits))
  assert not np.allclose(full, got, rtol=1e-2)
  grad = jax.grad(lambda l: objectives.exact_kl(
      l, jnp.asarray(q_logits), pad_id=0, eos_id=3).sum())(
          jnp.asarray(p_logits))
  assert np.isfinite(np.asarray(grad)).all()
  # pad == eos: EOS is sampled, nothing is dropped.
  np.testing.assert_allclose(objectives.exact_kl(
      jnp.asarray(p_logits), jnp.asarray(q_logits), pad_id=0, eos_id=0),
      full, rtol=1e-6)
