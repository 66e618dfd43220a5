"""Policy-gradient credit: reward-to-go vs sequence, OCD, the mixed CE."""

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax import objectives, rewards
from ir_jax.data.vocab import EOS
from helpers import tiny_rl_problem


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


def test_ce_is_kept_while_a_warmup_ramps_alpha():
  """alpha=1 with a warm-up: at alpha 0 the loss is the CE (it was 0: the
  CE term was dropped whenever the target alpha was 1)."""
  c, model, params, batch_ = tiny_rl_problem("samples")
  c.rl.update(mode="seq", num_samples=2)
  c.objective.update(alpha=1.0, alpha_schedule="warmup",
                     alpha_warmup_steps=10)
  loss, m = objectives.rl_loss(c, model, params, batch_, jax.random.key(1),
                               alpha=jnp.float32(0.0), reward_embeddings=None)
  assert float(m["ce"]) > 0.1
  np.testing.assert_allclose(loss, m["ce"], rtol=1e-6)
  c.objective.alpha_schedule = "constant"       # Fixed at 1: CE skipped.
  _, m = objectives.rl_loss(c, model, params, batch_, jax.random.key(1),
                            alpha=jnp.float32(1.0), reward_embeddings=None)
  assert float(m["ce"]) == 0.0
