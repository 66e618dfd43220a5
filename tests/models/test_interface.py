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


def test_cache_decoding_equals_full_forward(model_and_params):
  model, params = model_and_params
  tokens, valid = tokens_and_valid()
  full, _ = model.apply(params, tokens, valid)
  cache = model.init_cache(3, 11)
  outs = []
  logits, cache = model.apply(params, tokens[:, :5], valid[:, :5], cache)
  outs.append(logits)
  for t in range(5, 11):
    logits, cache = model.apply(params, tokens[:, t:t + 1],
                                valid[:, t:t + 1], cache)
    outs.append(logits)
  stepwise = jnp.concatenate(outs, axis=1)
  np.testing.assert_allclose(np.asarray(stepwise)[np.asarray(valid)],
                             np.asarray(full)[np.asarray(valid)], atol=1e-5)
