"""Objectives: the fused loss (alpha = 0 is plain CE, the reward enters with
the right sign), the RL objectives' credit assignment, the adaptive alpha."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ir_jax import objectives, rewards
from ir_jax.data.vocab import EOS


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


def test_alpha_schedules():
  import ml_collections
  c = ml_collections.ConfigDict(dict(alpha=0.4, alpha_schedule="warmup",
                                     alpha_warmup_steps=10))
  f = objectives.alpha_schedule(c)
  np.testing.assert_allclose([f(0), f(5), f(10), f(50)], [0, 0.2, 0.4, 0.4],
                             rtol=1e-6)
  c.alpha_schedule = "constant"
  assert float(objectives.alpha_schedule(c)(0)) == np.float32(0.4)
  c.alpha = 1.5
  try:
    objectives.alpha_schedule(c)
  except ValueError as e:
    assert "alpha" in str(e)
  else:
    raise AssertionError("alpha > 1 accepted")


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


# ------------------------------------------------------- RL objectives

VOCAB = 12


def test_instant_equals_seq_gradient_with_terminal_reward():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 5, 7)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 7, (6, 5)), jnp.int32)
  lengths = jnp.asarray([5, 3, 4, 1, 5, 2], jnp.int32)
  ret = jnp.asarray(rng.normal(size=6), jnp.float32)
  terminal = jnp.zeros((6, 5)).at[jnp.arange(6), lengths - 1].set(ret)
  baseline = objectives.leave_one_out_mean(ret, 3)
  def grad(adv_fn):
    return jax.grad(lambda l: objectives.policy_gradient_loss(
        l, tokens, lengths, adv_fn(terminal, lengths, baseline)))(logits)
  np.testing.assert_allclose(grad(objectives.reward_to_go_advantages),
                             grad(objectives.sequence_advantages), atol=1e-7)


def test_reward_to_go_credits_only_later_rewards():
  r = jnp.asarray([[0.0, -1.0, 0.0, -1.0]])
  adv = objectives.reward_to_go_advantages(r, jnp.asarray([4]),
                                           jnp.zeros(1))
  np.testing.assert_array_equal(adv, [[-2.0, -2.0, -1.0, -1.0]])
  np.testing.assert_allclose(objectives.leave_one_out_mean(
      jnp.asarray([1.0, 2.0, 3.0, 5.0]), 2), [2.0, 1.0, 5.0, 3.0])


def test_ocd_targets_on_perfect_prefix_and_loss():
  target = jnp.asarray([[5, 6, 7, EOS]], jnp.int32)
  opt = rewards.optimal_completion_targets(target, target, vocab_size=VOCAB,
                                           eos_id=EOS)[:, :4]
  for k in range(4):
    assert np.flatnonzero(opt[0, k]).tolist() == [int(target[0, k])]
  # The OCD loss on a one-hot optimum is the CE of that token.
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 4, VOCAB))
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None],
                            -1).mean()
  np.testing.assert_allclose(objectives.ocd_loss(logits, opt,
                                                 jnp.asarray([4])), ce,
                             rtol=1e-6)


def test_kl_to_reference_zero_for_same_model():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
  lengths = jnp.asarray([3, 1])
  assert float(objectives.kl_to_reference(logits, logits, lengths)) < 1e-6
  assert float(objectives.kl_to_reference(logits, -logits, lengths)) > 0.1


def test_adaptive_alpha_controller():
  kw = dict(rate=0.01, low=0.1, high=0.6, warmup=5)
  up = objectives.controller_init(0.3)
  for t in range(200):
    up = objectives.controller_update(up, -1.0 + t / 100, **kw)
  assert float(up["alpha"]) == pytest.approx(0.6)
  down = objectives.controller_init(0.3)
  for t in range(200):
    down = objectives.controller_update(down, -t / 100, **kw)
  assert float(down["alpha"]) == pytest.approx(0.1)
  flat = objectives.controller_init(0.3)
  for t in range(5):
    flat = objectives.controller_update(flat, 1.0, **kw)
  assert float(flat["alpha"]) == pytest.approx(0.3)  # Held during warm-up.
  noisy = objectives.controller_init(0.3)
  rng = np.random.default_rng(0)
  for t in range(500):
    noisy = objectives.controller_update(noisy, rng.normal(), **kw)
    assert 0.1 - 1e-6 <= float(noisy["alpha"]) <= 0.6 + 1e-6
