"""GRPO: group advantages, token-level credit, aggregations, the clip,
Tunix parity, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ir_jax import objectives

# Also on jax 0.10 (Python 3.11) in CI: Tunix parity on both pairs.
pytestmark = pytest.mark.smoke
from ir_jax.data.vocab import EOS


def test_group_advantages_by_hand():
  returns = jnp.asarray([1.0, 3.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
  adv = objectives.group_advantages(returns, 4)
  g1, g2 = np.array([1.0, 3.0, 0.0, 0.0]), np.array([2.0, 4.0, 6.0, 8.0])
  want = np.concatenate([(g - g.mean()) / (g.std(ddof=1) + 1e-6)
                         for g in (g1, g2)])
  np.testing.assert_allclose(adv, want, rtol=1e-6)
  dr = objectives.group_advantages(returns, 4, normalize_std=False)
  np.testing.assert_allclose(dr, np.concatenate([g1 - g1.mean(),
                                                 g2 - g2.mean()]))
  # A group of equal returns has no advantage (and no NaN).
  np.testing.assert_array_equal(
      objectives.group_advantages(jnp.ones(4), 4), 0.0)


def test_token_level_credit_is_grpo_with_a_terminal_reward():
  rng = np.random.default_rng(0)
  group, t = 4, 7
  lengths = jnp.asarray(rng.integers(1, t + 1, 3 * group), jnp.int32)
  returns = jnp.asarray(rng.normal(size=3 * group), jnp.float32)
  last = np.arange(t)[None] == (np.asarray(lengths) - 1)[:, None]
  token_rewards = jnp.where(last, returns[:, None], 0.0)
  for std in (True, False):
    tok = objectives.token_group_advantages(token_rewards, lengths, group,
                                            normalize_std=std)
    seq = objectives.group_advantages(returns, group, normalize_std=std)
    mask = objectives.token_mask(lengths, t)
    np.testing.assert_array_equal(tok, jnp.where(mask, seq[:, None], 0.0))


def test_token_level_credit_normalises_each_position_in_the_group():
  # Two samples of one prompt, equal length: rewards to go [[-1, -1], [0, 0]]
  # vs [[-1, 0], [0, 0]] differ only at position 0 in the second case.
  lengths = jnp.asarray([2, 2], jnp.int32)
  r = jnp.asarray([[-1.0, 0.0], [0.0, 0.0]])
  adv = objectives.token_group_advantages(r, lengths, 2, normalize_std=False)
  np.testing.assert_allclose(adv, [[-0.5, 0.0], [0.5, 0.0]])
  r = jnp.asarray([[0.0, -1.0], [0.0, 0.0]])
  adv = objectives.token_group_advantages(r, lengths, 2, normalize_std=False)
  np.testing.assert_allclose(adv, [[-0.5, -0.5], [0.5, 0.5]])


def test_aggregations_on_hand_made_masks():
  values = jnp.asarray([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0],
                        [9.0, 9.0, 9.0, 9.0]])
  mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  agg = lambda mode: float(objectives.aggregate_tokens(values, mask, mode))
  assert agg("token_mean") == pytest.approx((1 + 2 + 5 + 6 + 7 + 8) / 6)
  assert agg("sequence_mean") == pytest.approx((1.5 + 6.5) / 2)
  assert agg("constant") == pytest.approx((3 / 4 + 26 / 4) / 2)


def test_clip_zeroes_the_gradient_outside_the_region():
  old = jnp.zeros((1, 1))
  mask = jnp.ones((1, 1), bool)

  def grad(log_ratio, advantage):
    return float(jax.grad(lambda lp: objectives.grpo_loss(
        lp, old, jnp.asarray([advantage]), mask, epsilon=0.2,
        epsilon_high=0.3)[0])(jnp.full((1, 1), log_ratio))[0, 0])

  up, down = np.log(1.5), np.log(0.5)
  assert grad(up, 1.0) == 0.0        # A > 0 above 1 + eps_high: clipped.
  assert grad(down, 1.0) < 0.0       # A > 0 below 1 - eps: still pushed up.
  assert grad(down, -1.0) == 0.0     # A < 0 below 1 - eps: clipped.
  assert grad(up, -1.0) > 0.0        # A < 0 above: still pushed down.
  assert grad(np.log(1.25), 1.0) < 0.0  # Inside [0.8, 1.3]: unclipped.
  assert grad(np.log(1.25), 1.0) == pytest.approx(-1.25, rel=1e-5)


def _grpo_inputs(seed, b=6, t=5):
  rng = np.random.default_rng(seed)
  logps = jnp.asarray(-rng.uniform(0.1, 3.0, (b, t)), jnp.float32)
  old = logps + jnp.asarray(rng.normal(0, 0.3, (b, t)), jnp.float32)
  ref = logps + jnp.asarray(rng.normal(0, 0.5, (b, t)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=b), jnp.float32)
  lengths = rng.integers(1, t + 1, b)
  mask = jnp.asarray(np.arange(t)[None] < lengths[:, None])
  return logps, old, ref, adv, mask


@pytest.mark.parametrize("aggregation,tunix_mode", [
    ("token_mean", "token-mean"),
    ("sequence_mean", "sequence-mean-token-mean"),
    ("constant", "sequence-mean-token-scale")])
def test_grpo_loss_and_gradient_equal_tunix(monkeypatch, aggregation,
                                             tunix_mode):
  algo_core = pytest.importorskip(
      "tunix.rl.algo_core",
      reason="the Tunix peer: pip install google-tunix==0.1.7 (the `test` "
      "extra installs it)")
  from flax import nnx
  from tunix.rl import common
  import types
  logps, old, ref, adv, mask = _grpo_inputs(0)
  current = {}

  def fixed_logps(graphdef, state, **kwargs):
    del graphdef, state
    lp = current["logps"]
    return lp, jnp.zeros(lp.shape + (3,))

  monkeypatch.setattr(common, "compute_per_token_logps", fixed_logps)
  cfg = types.SimpleNamespace(
      beta=0.04, epsilon=0.2, epsilon_high=0.28, loss_algo="grpo",
      loss_agg_mode=tunix_mode, temperature=1.0, kl_loss_mode="low_var_kl",
      kl_clamp_value=None)
  example = types.SimpleNamespace(
      prompt_ids=jnp.zeros((6, 2), jnp.int32),
      completion_ids=jnp.zeros((6, 5), jnp.int32),
      completion_mask=mask.astype(jnp.int32), advantages=adv,
      old_per_token_logps=old, ref_per_token_logps=ref)
  dummy = nnx.Linear(1, 1, rngs=nnx.Rngs(0))

  def tunix_loss(lp):
    current["logps"] = lp
    return algo_core.grpo_loss_fn(dummy, example, cfg, 0, 1)[0]

  def ours(lp):
    return objectives.grpo_loss(
        lp, old, adv, mask, epsilon=0.2, epsilon_high=0.28,
        aggregation=aggregation, kl_weight=0.04,
        kl_per_token=objectives.k3_kl(lp, ref))[0]

  want, want_grad = jax.value_and_grad(tunix_loss)(logps)
  got, got_grad = jax.value_and_grad(ours)(logps)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)
  # And Tunix's group advantages.
  returns = np.random.default_rng(1).normal(size=8).astype(np.float32)
  np.testing.assert_allclose(
      objectives.group_advantages(jnp.asarray(returns), 4),
      algo_core.compute_advantages(returns, 4), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      objectives.group_advantages(jnp.asarray(returns), 4,
                                  normalize_std=False),
      algo_core.compute_drgrpo_advantages(jnp.asarray(returns), 4),
      rtol=1e-6, atol=1e-6)


def test_grpo_gradient_is_finite_when_samples_end_early():
  """Samples that stop before the length limit are followed by PAD, which
  the policy cannot emit (log-prob -inf). Masked out of the loss, it must
  not turn the gradient NaN (it did: every such GRPO update was skipped)."""
  import flax.linen as nn
  from ir_jax import config as config_lib
  from ir_jax.models import Transformer
  from ir_jax.data.vocab import PAD
  model = Transformer(vocab_size=16, embed_dim=16, num_layers=1, num_heads=2,
                      mlp_dim=16)
  c = config_lib.default_config()
  c.objective.alpha = 1.0
  c.rl.update(mode="grpo", num_samples=2, kl_weight=0.04)
  source = jnp.array([[0, 1, 7, 8, 2], [1, 9, 9, 10, 2]])
  target = jnp.array([[5, 6, EOS, PAD, PAD], [7, EOS, PAD, PAD, PAD]])
  samples = {"source": source, "target": target,
             "target_lengths": jnp.array([3, 2])}
  params = nn.meta.unbox(model.init(jax.random.key(0), source)["params"])
  logp, _ = objectives.policy_logprobs(model, params, samples, 1.0)
  assert bool(jnp.isfinite(logp).all())
  rollout = {"samples": samples, "old_logprobs": logp,
             "advantages": jnp.array([[1.0] * 5, [-1.0] * 5]),
             "ref_logprobs": logp - 0.1}
  for kl in ("k3", "exact"):
    c.rl.kl_estimator = kl
    if kl == "exact":
      rollout["ref_logits"] = objectives.policy_logprobs(
          model, params, samples, 1.0)[1]
    grads = jax.grad(lambda p: objectives.grpo_update_loss(
        c, model, p, samples, rollout, None, alpha=1.0)[0])(params)
    norm = float(optax.tree.norm(grads))
    assert np.isfinite(norm) and norm > 0, kl


def test_constant_aggregation_does_not_depend_on_the_padded_width():
  """Dr.GRPO's constant divides by a fixed budget, so the same samples
  padded to another width (length buckets, the sampler's max_len) give
  the same loss (they did not: it divided by the padded width)."""
  rng = np.random.default_rng(0)
  values = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  mask = jnp.asarray(np.arange(5)[None] < np.array([[5], [2], [3], [1]]))
  wide_v = jnp.pad(values, ((0, 0), (0, 7)))
  wide_m = jnp.pad(mask, ((0, 0), (0, 7)))
  a = objectives.aggregate_tokens(values, mask, "constant", budget=16)
  b = objectives.aggregate_tokens(wide_v, wide_m, "constant", budget=16)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  want = float((np.asarray(values) * np.asarray(mask)).sum(1).sum() / 16 / 4)
  np.testing.assert_allclose(a, want, rtol=1e-6)
  assert not np.isclose(objectives.aggregate_tokens(values, mask, "constant"),
                        objectives.aggregate_tokens(wide_v, wide_m,
                                                    "constant"))
