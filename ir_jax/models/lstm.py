"""Stacked LSTM LM with the Transformer's interface (Flax Linen).

`__call__(tokens, valid, cache=None) -> (logits, cache)`: the cache is the
per-layer LSTM carry, so decoding feeds one token at a time exactly like the
Transformer's KV cache. Padded positions leave the carry unchanged, which
makes left-padded prompts equivalent to unpadded ones (the reason for a
masked `nn.scan` over `nn.OptimizedLSTMCell` rather than `nn.RNN`, whose
`seq_lengths` assume right padding).

`bidirectional_source=True` adds a bidirectional-LSTM source encoder: the
source (every token up to the first SEP) is read in both directions, and
the final states, projected, are concatenated to every decoder input. The
summary is computed once (at prefill when decoding) and kept in the cache.
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ir_jax.data.vocab import EOS, PAD, SEP
from ir_jax.models import prompting

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
  bidirectional_source: bool = False
  dtype: Any = jnp.float32
  prompt_length: int = 0    # > 0: a learned soft prompt of this many slots.
  pad_id: int = PAD         # Tokenizer ids (ir_jax.models.special_ids).
  eos_id: int = EOS

  def init_cache(self, batch: int, slots: int = 0) -> Cache:
    """Zero carries, stacked over layers (`slots` is unused: O(1) state)."""
    shape = (self.num_layers, batch, self.hidden_dim)
    cache = {"c": jnp.zeros(shape, self.dtype),
             "h": jnp.zeros(shape, self.dtype),
             "position": jnp.zeros((batch,), jnp.int32)}
    if self.bidirectional_source:
      cache["context"] = jnp.zeros((batch, self.hidden_dim), self.dtype)
      cache["has_context"] = jnp.zeros((batch,), bool)
    return cache

  def _source_summary(self, x, tokens, valid):
    """Bidirectional LSTM over the source part; returns f32[B, hidden]."""
    is_sep = tokens == SEP
    in_source = valid & (jnp.cumsum(is_sep, axis=1) - is_sep == 0)
    scan = nn.scan(_MaskedLSTM, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    zeros = jnp.zeros((x.shape[0], self.hidden_dim), self.dtype)
    (_, fwd), _ = scan(self.hidden_dim, self.dtype, name="source_fwd")(
        (zeros, zeros), (x, in_source))
    (_, bwd), _ = scan(self.hidden_dim, self.dtype, name="source_bwd")(
        (zeros, zeros), (x[:, ::-1], in_source[:, ::-1]))
    return nn.Dense(self.hidden_dim, dtype=self.dtype, name="source_proj",
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.lecun_normal(), ("mlp", "mlp_out")))(
                            jnp.concatenate([fwd, bwd], axis=-1))

  @nn.compact
  def __call__(self, tokens, valid=None, cache: Optional[Cache] = None,
               deterministic: bool = True, num_logits: int = 0
               ) -> Tuple[jax.Array, Cache]:
    """(logits float32[B, L, V], the carry after these tokens);
    `num_logits` = n > 0: logits of the last n positions only."""
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    valid = valid.astype(bool)
    if cache is None:
      cache = self.init_cache(tokens.shape[0])
    x = nn.Embed(self.vocab_size, self.embed_dim, name="embed",
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(1.0), ("vocab", "embed")))(tokens)
    x = prompting.with_prompt(self, x, tokens)
    x = nn.with_logical_constraint(x.astype(self.dtype),
                                   ("batch", "length", "act_embed"))
    new_context = {}
    if self.bidirectional_source:
      summary = self._source_summary(x, tokens, valid)
      has = cache["has_context"]
      context = jnp.where(has[:, None], cache["context"], summary)
      new_context = {"context": context,
                     "has_context": has | valid.any(axis=1)}
      x = jnp.concatenate(
          [x, jnp.broadcast_to(context[:, None], x.shape[:2] +
                               context.shape[-1:])], axis=-1)
    scan = nn.scan(_MaskedLSTM, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    cs, hs = [], []
    for i in range(self.num_layers):
      (c, h), x = scan(self.hidden_dim, self.dtype, name=f"lstm_{i}")(
          (cache["c"][i], cache["h"][i]), (x, valid))
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
      cs.append(c)
      hs.append(h)
    if num_logits:
      x = x[:, -num_logits:]
    logits = nn.DenseGeneral(
        self.vocab_size, dtype=jnp.float32, name="logits",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("mlp", "vocab")))(x)
    new = {"c": jnp.stack(cs), "h": jnp.stack(hs),
           "position": cache["position"] + valid.sum(1).astype(jnp.int32),
           **new_context}
    return logits, new
