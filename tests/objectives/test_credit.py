"""GRPO's per-token credits on hand-made rewards (immediate is r_t, lambda
1 is reward-to-go, lambda 0 is immediate, reward-to-go is sequence credit
under a terminal-only reward), lambda-returns against a loop, the group
scale, and the credit form of char_error against rapidfuzz."""

import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import config as config_lib
from ir_jax import objectives, rewards

pytestmark = pytest.mark.smoke


def _rollout(seed=0, groups=3, group=4, t=7):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, groups * group).astype(np.int32)
  r = rng.normal(size=(groups * group, t)).astype(np.float32)
  r = np.where(np.arange(t)[None] < lengths[:, None], r, 0.0)
  return jnp.asarray(r), jnp.asarray(lengths), jnp.asarray(r.sum(1)), group


def _loop_lambda_returns(r, lengths, lam):
  out = np.zeros_like(r)
  for i, n in enumerate(lengths):
    g = 0.0
    for t in reversed(range(n)):
      g = r[i, t] + lam * g
      out[i, t] = g
  return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_lambda_returns_against_a_loop(lam):
  r, lengths, _, _ = _rollout(1)
  np.testing.assert_allclose(
      objectives.lambda_returns(r, lengths, lam),
      _loop_lambda_returns(np.asarray(r), np.asarray(lengths), lam),
      rtol=1e-5, atol=1e-6)


def test_immediate_credit_is_the_instant_reward():
  r, lengths, returns, group = _rollout()
  adv = objectives.credit_advantages(r, lengths, returns, group,
                                     credit="immediate", baseline="none",
                                     normalize_std=False)
  np.testing.assert_array_equal(adv, r)
  # With the group scale: r_t / std of the group's returns, every token.
  adv = objectives.credit_advantages(r, lengths, returns, group,
                                     credit="immediate", baseline="none")
  std = np.asarray(returns).reshape(-1, group).std(1, ddof=1)
  np.testing.assert_allclose(adv, np.asarray(r) / np.repeat(std, group)[:, None],
                             rtol=1e-5)


@pytest.mark.parametrize("baseline", ["position", "none"])
@pytest.mark.parametrize("std", [True, False])
def test_lambda_one_is_reward_to_go_and_lambda_zero_is_immediate(baseline,
                                                                  std):
  r, lengths, returns, group = _rollout(2)
  adv = lambda credit, lam=0.5: objectives.credit_advantages(
      r, lengths, returns, group, credit=credit, lam=lam, baseline=baseline,
      normalize_std=std)
  np.testing.assert_allclose(adv("lambda", 1.0), adv("reward_to_go"),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(adv("lambda", 0.0), adv("immediate"),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(adv("token"), adv("reward_to_go"))
  # In between: neither end.
  assert not np.allclose(adv("lambda", 0.5), adv("immediate"))
  assert not np.allclose(adv("lambda", 0.5), adv("reward_to_go"))


@pytest.mark.parametrize("std", [True, False])
def test_reward_to_go_is_sequence_credit_under_a_terminal_reward(std):
  _, lengths, returns, group = _rollout(3)
  t = 7
  last = np.arange(t)[None] == (np.asarray(lengths) - 1)[:, None]
  terminal = jnp.where(last, returns[:, None], 0.0)
  seq = objectives.group_advantages(returns, group, normalize_std=std)
  mask = objectives.token_mask(lengths, t)
  for credit in ("reward_to_go", "token"):
    adv = objectives.credit_advantages(terminal, lengths, returns, group,
                                       credit=credit, normalize_std=std)
    np.testing.assert_allclose(adv, jnp.where(mask, seq[:, None], 0.0),
                               rtol=1e-6, atol=1e-6)


def test_no_centring_leaves_correct_tokens_at_zero():
  # One group, one error at index 1 in sample 0: per-position centring
  # credits the other samples' correct tokens there; "none" does not.
  r = jnp.asarray([[0.0, -1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0],
                   [0.0, 0.0, 0.0]])
  lengths = jnp.full((4,), 3, jnp.int32)
  returns = r.sum(1)
  pos = objectives.credit_advantages(r, lengths, returns, 4,
                                     credit="immediate")
  np.testing.assert_allclose(pos[:, 1], [-1.5, 0.5, 0.5, 0.5], rtol=1e-5)
  none = objectives.credit_advantages(r, lengths, returns, 4,
                                      credit="immediate", baseline="none")
  np.testing.assert_allclose(none, np.asarray(r) / 0.5, rtol=1e-5)


def test_a_group_without_spread_takes_the_mean_scale():
  r = jnp.asarray([[-1.0, 0.0], [0.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
  lengths = jnp.full((4,), 2, jnp.int32)
  returns = r.sum(1)           # Group 0: [-1, 0]; group 1: [-1, -1].
  adv = objectives.credit_advantages(r, lengths, returns, 2,
                                     credit="immediate", baseline="none")
  s = np.std([-1.0, 0.0], ddof=1)
  np.testing.assert_allclose(adv, np.asarray(r) / s, rtol=1e-5)
  assert np.isfinite(np.asarray(adv)).all()


def test_bad_credit_names_raise():
  r, lengths, returns, group = _rollout()
  with pytest.raises(ValueError, match="credit"):
    objectives.credit_advantages(r, lengths, returns, group, credit="seq")
  with pytest.raises(ValueError, match="baseline"):
    objectives.credit_advantages(r, lengths, returns, group,
                                 credit="immediate", baseline="group")


@pytest.mark.parametrize("overrides,match", [
    ({"rl.credit_lambda": 1.5}, "credit_lambda"),
    ({"rl.credit_baseline": "mean"}, "credit_baseline"),
    ({"rl.credit": "immediat"}, "rl.credit"),
])
def test_config_checks_the_credit_fields(overrides, match):
  c = config_lib.default_config()
  c.rl.mode, c.objective.alpha, c.rl.num_samples = "grpo", 1.0, 2
  for k, v in overrides.items():
    section, field = k.split(".")
    c[section][field] = v
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_credit_form_of_char_error_is_unclipped_and_never_positive():
  pytest.importorskip("rapidfuzz")
  import importlib.util, os
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "rewards",
                      "test_chars.py")
  spec = importlib.util.spec_from_file_location("_test_chars", path)
  test_chars = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(test_chars)
  spelled, table, n_table = test_chars.vocab(0)
  tokens, lengths, target, target_lengths = test_chars.batch(0, rows=32)
  want = test_chars.distances(spelled, tokens, lengths, target,
                              target_lengths)
  n_bytes = np.asarray([len(test_chars.spell(spelled, target[i, :k]))
                        for i, k in enumerate(target_lengths)])
  r, _ = rewards.score_sequences(
      rewards.chars.char_error_reward(table, n_table, clip=False),
      *map(jnp.asarray, (tokens, lengths, target, target_lengths)))
  r = np.asarray(r)
  assert (r <= 1e-6).all()
  np.testing.assert_allclose(r.sum(1), -want / np.maximum(n_bytes, 1),
                             rtol=1e-5, atol=1e-5)
  assert (want / np.maximum(n_bytes, 1) > 1).any()   # Some are clipped.
  # credit_rewards swaps it in for char_error and keeps sequence terms.
  spec = rewards.parse_rewards("char_error:1.0,exact_match:0.5")
  scored = objectives.score_candidates(
      _rl("char_error:1.0,exact_match:0.5"),
      *map(jnp.asarray, (tokens, lengths, target, target_lengths)),
      byte_table=(jnp.asarray(table), jnp.asarray(n_table)))
  got = np.asarray(objectives.credit_rewards(
      spec, scored, (jnp.asarray(table), jnp.asarray(n_table))))
  exact = np.asarray(scored["terms"])[:, 1]
  np.testing.assert_allclose(got.sum(1), r.sum(1) + 0.5 * exact, rtol=1e-5,
                             atol=1e-5)


def _rl(spec):
  import ml_collections
  return ml_collections.ConfigDict({"rl": {"rewards": spec}})
