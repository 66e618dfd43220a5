"""Stacked LSTM LM with the Transformer's interface (Flax Linen).

`__call__(tokens, valid, cache=None) -> (logits, cache)`: the cache is the
per-layer LSTM carry, so decoding feeds one token at a time exactly like the
Transformer's KV cache. Padded positions leave the carry unchanged, which
makes left-padded prompts equivalent to unpadded ones.
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Cache = Dict[str, jax.Array]


class _MaskedLSTM(nn.Module):
  """One LSTM layer over time; carry frozen where `valid` is False."""
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, carry, inputs):
    x, valid = inputs                                   # [B, E], [B]
    cell = nn.OptimizedLSTMCell(
        self.features, dtype=self.dtype, name="cell",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")),
        recurrent_kernel_init=nn.with_logical_partitioning(
            nn.initializers.orthogonal(), (None, "mlp")))
    new_carry, y = cell(carry, x)
    carry = jax.tree.map(lambda n, o: jnp.where(valid[:, None], n, o),
                         new_carry, carry)
    return carry, y


class LSTM(nn.Module):
  """Causal stacked-LSTM LM; logits float32[B, L, V]."""
  vocab_size: int
  embed_dim: int = 128
  hidden_dim: int = 256
  num_layers: int = 2
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def init_cache(self, batch: int, slots: int = 0) -> Cache:
    """Zero carries, stacked over layers (`slots` is unused: O(1) state)."""
    zeros = jnp.zeros((self.num_layers, batch, self.hidden_dim), self.dtype)
    return {"c": zeros, "h": zeros,
            "position": jnp.zeros((batch,), jnp.int32)}

  @nn.compact
  def __call__(self, tokens, valid=None, cache: Optional[Cache] = None,
               deterministic: bool = True) -> Tuple[jax.Array, Cache]:
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    valid = valid.astype(bool)
    if cache is None:
      cache = self.init_cache(tokens.shape[0])
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed",
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(1.0), ("vocab", "embed")))(tokens)
    x = nn.with_logical_constraint(x.astype(self.dtype),
                                   ("batch", "length", "act_embed"))
    scan = nn.scan(_MaskedLSTM, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    cs, hs = [], []
    for i in range(self.num_layers):
      (c, h), x = scan(self.hidden_dim, self.dtype, name=f"lstm_{i}")(
          (cache["c"][i], cache["h"][i]), (x, valid))
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      cs.append(c)
      hs.append(h)
    logits = nn.DenseGeneral(
        self.vocab_size, dtype=jnp.float32, name="logits",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("mlp", "vocab")))(x)
    new = {"c": jnp.stack(cs), "h": jnp.stack(hs),
           "position": cache["position"] + valid.sum(1).astype(jnp.int32)}
    return logits, new
