"""Both model kinds, one interface: shapes, causal and padding masks, cache
decoding == full forward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax.models import LSTM, Transformer


VOCAB = 23


def make(kind, **kw):
  if kind == "lstm":
    return LSTM(vocab_size=VOCAB, embed_dim=16, hidden_dim=24, num_layers=2)
  return Transformer(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4,
                     mlp_dim=48, **kw)


KINDS = [("transformer", {}), ("transformer", {"scan_layers": True,
                                               "remat": True}), ("lstm", {})]


@pytest.fixture(params=KINDS, ids=["transformer", "transformer_scan", "lstm"])
def model_and_params(request):
  kind, kw = request.param
  model = make(kind, **kw)
  tokens = jnp.ones((2, 7), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens))
  return model, params


def tokens_and_valid(batch=3, length=11, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(5, VOCAB, (batch, length)), jnp.int32)
  valid = jnp.ones((batch, length), bool).at[0, :4].set(False).at[1, :1].set(
      False)
  return tokens, valid


def test_shapes_and_finite(model_and_params):
  model, params = model_and_params
  tokens, valid = tokens_and_valid()
  logits, cache = model.apply(params, tokens, valid)
  assert logits.shape == (3, 11, VOCAB) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  np.testing.assert_array_equal(cache["position"], valid.sum(1))


def test_causal(model_and_params):
  model, params = model_and_params
  tokens, valid = tokens_and_valid()
  base, _ = model.apply(params, tokens, valid)
  changed, _ = model.apply(params, tokens.at[:, 8].set(5), valid)
  np.testing.assert_allclose(base[:, :8], changed[:, :8], atol=1e-6)
  assert not np.allclose(base[:, 8:], changed[:, 8:])


def test_left_padding_is_invisible(model_and_params):
  model, params = model_and_params
  tokens, _ = tokens_and_valid(batch=1, length=6)
  pad = jnp.zeros((1, 5), jnp.int32) + 3
  padded = jnp.concatenate([pad, tokens], axis=1)
  valid = jnp.arange(11)[None] >= 5
  full, _ = model.apply(params, tokens)
  with_pad, _ = model.apply(params, padded, valid)
  np.testing.assert_allclose(with_pad[:, 5:], full, atol=1e-5)


def assert_cached_decoding_is_full_forward(model, params, tokens, valid,
                                           prefill):
  """Prefill `prefill` slots, then one token a call: the full forward."""
  full, _ = model.apply(params, tokens, valid)
  cache = model.init_cache(*tokens.shape)
  outs = []
  logits, cache = model.apply(params, tokens[:, :prefill], valid[:, :prefill],
                              cache)
  outs.append(logits)
  for t in range(prefill, tokens.shape[1]):
    logits, cache = model.apply(params, tokens[:, t:t + 1],
                                valid[:, t:t + 1], cache)
    outs.append(logits)
  stepwise = jnp.concatenate(outs, axis=1)
  np.testing.assert_allclose(np.asarray(stepwise)[np.asarray(valid)],
                             np.asarray(full)[np.asarray(valid)], atol=1e-5)


def test_cache_decoding_equals_full_forward(model_and_params):
  model, params = model_and_params
  assert_cached_decoding_is_full_forward(model, params, *tokens_and_valid(),
                                         prefill=5)


@pytest.mark.parametrize("scan", [False, True])
def test_prefix_lm_mask_and_cache(scan):
  """prefix_len=P: slots < P see each other both ways, later slots stay
  causal, and prefilling the P source slots then decoding one token at a
  time equals the full forward."""
  p = 5
  model = make("transformer", prefix_len=p, scan_layers=scan)
  tokens, valid = tokens_and_valid()
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, valid))
  base, _ = model.apply(params, tokens, valid)
  # A later source token changes the earlier source slots' outputs (the
  # causal model's would not move), ...
  changed, _ = model.apply(params, tokens.at[:, p - 1].set(5), valid)
  assert not np.allclose(base[:, 1:p - 1], changed[:, 1:p - 1], atol=1e-4)
  causal = make("transformer", scan_layers=scan)
  c_base, _ = causal.apply(params, tokens, valid)
  c_changed, _ = causal.apply(params, tokens.at[:, p - 1].set(5), valid)
  np.testing.assert_allclose(c_base[:, :p - 1], c_changed[:, :p - 1], atol=1e-6)
  # ... a target token changes nothing before it, ...
  later, _ = model.apply(params, tokens.at[:, 8].set(5), valid)
  np.testing.assert_allclose(base[:, :8], later[:, :8], atol=1e-6)
  assert not np.allclose(base[:, 8:], later[:, 8:])
  # ... and cached decoding after a P-slot prefill is the full forward.
  assert_cached_decoding_is_full_forward(model, params, tokens, valid,
                                         prefill=p)
