"""Instant rewards in the loop: decoding, RL objectives, adaptive alpha."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import decode, objectives, rewards
from ir_jax.data.vocab import EOS, PAD
from ir_jax.models import LSTM, Transformer

VOCAB = 12


@pytest.fixture(params=["transformer", "lstm"])
def model_params(request):
  if request.param == "lstm":
    model = LSTM(vocab_size=VOCAB, embed_dim=16, hidden_dim=24, num_layers=1)
  else:
    model = Transformer(vocab_size=VOCAB, embed_dim=32, num_layers=2,
                        num_heads=2, mlp_dim=32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0),
                                    jnp.ones((1, 4), jnp.int32)))
  # Bias EOS up a little so samples end at varied lengths.
  params = jax.tree.map(lambda x: x, params)
  params["params"]["logits"]["kernel"] = params["params"]["logits"][
      "kernel"] * 3.0
  return model, params


def prompts():
  source = jnp.asarray([[0, 1, 5, 6, 2], [1, 7, 8, 9, 2], [0, 0, 1, 10, 2]],
                       jnp.int32)
  target = jnp.asarray([[5, 6, 7, EOS, 0, 0], [8, 9, EOS, 0, 0, 0],
                        [10, 11, 5, 6, 7, EOS]], jnp.int32)
  return source, target, jnp.asarray([4, 3, 6], jnp.int32)


def test_sampling_reproducible_and_eos_stops(model_params):
  model, params = model_params
  source, target, m = prompts()
  f = lambda key: decode.sample_with_rewards(
      model, params, source, target, m, key, max_len=8, num_samples=3)
  a, b = f(jax.random.PRNGKey(3)), f(jax.random.PRNGKey(3))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  c = f(jax.random.PRNGKey(4))
  assert not np.array_equal(a["tokens"], c["tokens"])
  tokens, lengths = np.asarray(a["tokens"]), np.asarray(a["lengths"])
  assert tokens.shape == (9, 8)
  for row, n in zip(tokens, lengths):
    eos = np.flatnonzero(row == EOS)
    if eos.size:
      assert n == eos[0] + 1 and np.all(row[n:] == PAD)
    else:
      assert n == 8


def test_in_loop_rewards_equal_instant_rewards(model_params):
  model, params = model_params
  source, target, m = prompts()
  out = decode.sample_with_rewards(model, params, source, target, m,
                                   jax.random.PRNGKey(0), max_len=8,
                                   num_samples=4, temperature=1.5)
  tgt = jnp.repeat(target, 4, axis=0)
  mm = jnp.repeat(m, 4)
  want = rewards.instant_rewards(out["tokens"], tgt,
                                 pred_lengths=out["lengths"],
                                 target_lengths=mm)
  np.testing.assert_array_equal(out["rewards"], want)
  ed = rewards.levenshtein(out["tokens"], tgt, pred_lengths=out["lengths"],
                           target_lengths=mm)
  np.testing.assert_array_equal(out["edit_distance"], ed)
  np.testing.assert_array_equal(np.asarray(out["rewards"]).sum(-1), -ed)


def test_greedy_sampling_matches_generate(model_params):
  model, params = model_params
  source, target, m = prompts()
  out = decode.sample_with_rewards(model, params, source, target, m,
                                   jax.random.PRNGKey(0), max_len=6,
                                   temperature=0.0)
  tokens, lengths = decode.generate(model, params, source, max_len=6)
  np.testing.assert_array_equal(out["tokens"], tokens)
  np.testing.assert_array_equal(out["lengths"], lengths)


def test_top_k_and_top_p_restrict_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 300)
  k2 = {int(decode._pick(logits, k, 1.0, 2)[0]) for k in keys}
  assert k2 == {0, 1}
  p = {int(decode._pick(logits, k, 1.0, 0, 0.7)[0]) for k in keys}
  assert p == {0, 1}
  assert {int(decode._pick(logits, k, 1.0, 0, 0.1)[0]) for k in keys} == {0}


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
