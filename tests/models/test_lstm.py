"""The LSTM: the bidirectional source encoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ir_jax.models import LSTM


VOCAB = 23


def test_lstm_bidirectional_source_encoder():
  model = LSTM(vocab_size=VOCAB, embed_dim=8, hidden_dim=16, num_layers=2,
               bidirectional_source=True)
  sep = 2
  tokens = jnp.asarray([[0, 0, 1, 7, 8, sep, 9, 10, 11],
                        [1, 12, 13, 14, sep, 15, 16, 3, 0]], jnp.int32)
  valid = tokens != 0
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), tokens, valid))
  full, _ = model.apply(params, tokens, valid)
  cache = model.init_cache(2)
  outs = []
  logits, cache = model.apply(params, tokens[:, :6], valid[:, :6], cache)
  outs.append(logits)
  for t in range(6, 9):
    logits, cache = model.apply(params, tokens[:, t:t + 1], valid[:, t:t + 1],
                                cache)
    outs.append(logits)
  v = np.asarray(valid)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1))[v],
                             np.asarray(full)[v], atol=1e-5)
  # The encoder reads the whole source: a later source token changes the
  # logits at earlier source positions too; target positions stay causal.
  changed, _ = model.apply(params, tokens.at[0, 4].set(5), valid)
  assert not np.allclose(changed[0, 2], full[0, 2])
  later, _ = model.apply(params, tokens.at[0, 8].set(5), valid)
  np.testing.assert_allclose(later[0, :8], full[0, :8], atol=1e-6)
