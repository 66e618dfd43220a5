"""Decoder-only pre-norm Transformer LM with RoPE and an explicit KV cache.

One code path serves training and decoding: a call writes the new keys and
values into a cache of `S` slots starting at `cache["index"]` and attends to
every valid slot at or before its own. Training passes no cache (a fresh one
the size of the input is used), decoding passes the cache returned by the
previous call; `decode_step == full forward` holds by construction.

Params carry logical axis names (`vocab`, `embed`, `mlp`, `heads`, and
`layers` when `scan_layers`) for the sharding rules of `ir_jax.parallel`.
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ir_jax.models import prompting

Cache = Dict[str, jax.Array]


def rope(x: jax.Array, positions: jax.Array, base: float = 10_000.0):
  """Rotary position embedding of x[B, L, H, Dh] at positions int[B, L]."""
  half = x.shape[-1] // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None, None].astype(jnp.float32) * freqs  # B L 1 h
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def _dense(features, axes, name, dtype, use_bias=False):
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), axes))


class Block(nn.Module):
  """Pre-norm attention + MLP block. Returns (x, this layer's new cache)."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float
  dtype: Any
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, positions, valid, layer_cache):
    deterministic = self.deterministic
    # x [B, L, E]; positions, valid [B, L]; layer_cache k/v [B, S, H, Dh],
    # valid [B, S], index [].
    norm = lambda name: nn.RMSNorm(dtype=self.dtype, name=name, scale_init=(
        nn.with_logical_partitioning(nn.initializers.ones, ("embed",))))
    h = norm("attn_norm")(x)
    # Projections to H * Dh features (head-major, so sharding the `heads`
    # axis over `tensor` splits whole heads), reshaped to [B, L, H, Dh].
    # Plain Dense: Flax's DenseGeneral evaluates boxed initializers on a
    # flattened shape, which breaks under active logical-axis rules.
    split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, self.head_dim))
    width = self.num_heads * self.head_dim
    q = split(_dense(width, ("embed", "heads"), "query", self.dtype)(h))
    k = split(_dense(width, ("embed", "heads"), "key", self.dtype)(h))
    v = split(_dense(width, ("embed", "heads"), "value", self.dtype)(h))
    q, k = rope(q, positions), rope(k, positions)
    index = layer_cache["index"]
    keys = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k.astype(
        layer_cache["k"].dtype), index, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v.astype(
        layer_cache["v"].dtype), index, axis=1)
    key_valid = jax.lax.dynamic_update_slice_in_dim(layer_cache["valid"],
                                                    valid, index, axis=1)
    slots = jnp.arange(keys.shape[1])
    query_slots = index + jnp.arange(x.shape[1])
    mask = (slots[None, :] <= query_slots[:, None])[None] & key_valid[:, None]
    # Padded queries with no visible key would softmax over nothing; they
    # are masked out of every loss, so let them see slot 0 instead of NaN.
    mask = mask.at[:, :, 0].set(mask[:, :, 0] | ~mask.any(-1))
    logits = jnp.einsum("blhd,bshd->bhls", q, keys.astype(q.dtype))
    logits = logits.astype(jnp.float32) / jnp.sqrt(self.head_dim)
    logits = jnp.where(mask[:, None], logits, -1e30)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
    attn = jnp.einsum("bhls,bshd->blhd", weights, values.astype(self.dtype))
    out = _dense(x.shape[-1], ("heads", "embed"), "out", self.dtype)(
        attn.reshape(attn.shape[:2] + (width,)))
    x = x + nn.Dropout(self.dropout)(out, deterministic=deterministic)
    h = norm("mlp_norm")(x)
    gate = _dense(self.mlp_dim, ("embed", "mlp"), "wi_gate", self.dtype)(h)
    up = _dense(self.mlp_dim, ("embed", "mlp"), "wi_up", self.dtype)(h)
    h = _dense(x.shape[-1], ("mlp", "embed"), "wo", self.dtype)(
        nn.silu(gate) * up)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    new_cache = {"k": keys, "v": values, "valid": key_valid,
                 "index": index + x.shape[1]}
    return x, new_cache


class _ScanBlock(Block):
  """Block with the (carry, xs) -> (carry, ys) signature `nn.scan` wants."""

  @nn.compact
  def __call__(self, x, layer_cache, positions, valid):
    return super().__call__(x, positions, valid, layer_cache)


class Transformer(nn.Module):
  """Causal LM. `__call__(tokens, valid, cache=None) -> (logits, cache)`.

  tokens, valid: int/bool[B, L]. Positions count valid tokens only, so a
  left-padded prompt starts at position 0. logits: float32[B, L, V].
  """
  vocab_size: int
  embed_dim: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  dropout: float = 0.0
  scan_layers: bool = False
  remat: bool = False
  dtype: Any = jnp.float32
  prompt_length: int = 0    # > 0: a learned soft prompt of this many slots.

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  def init_cache(self, batch: int, slots: int) -> Cache:
    """An empty cache of `slots` positions, stacked over layers."""
    shape = (self.num_layers, batch, slots, self.num_heads, self.head_dim)
    return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
            "valid": jnp.zeros((self.num_layers, batch, slots), bool),
            "index": jnp.zeros((self.num_layers,), jnp.int32),
            "position": jnp.zeros((batch,), jnp.int32)}

  @nn.compact
  def __call__(self, tokens, valid=None, cache: Optional[Cache] = None,
               deterministic: bool = True) -> Tuple[jax.Array, Cache]:
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    valid = valid.astype(bool)
    if cache is None:
      cache = self.init_cache(tokens.shape[0], tokens.shape[1])
    positions = cache["position"][:, None] + jnp.cumsum(valid, axis=1) - 1
    positions = jnp.maximum(positions, 0)
    embed = nn.Embed(
        self.vocab_size, self.embed_dim, name="embed",
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")))
    x = prompting.with_prompt(self, embed(tokens), tokens).astype(self.dtype)
    # Activations: batch over (data, fsdp), features whole. Without this XLA
    # copies the params' `embed`-over-fsdp sharding onto activations and
    # reshuffles them every layer.
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    layer_caches = {k: cache[k] for k in ("k", "v", "valid", "index")}
    kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim,
                  mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
                  deterministic=deterministic)
    if self.scan_layers:
      block = nn.remat(_ScanBlock) if self.remat else _ScanBlock
      x, new = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True,
                                                          "dropout": True},
          in_axes=(0, nn.broadcast, nn.broadcast), length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(
              **kwargs, name="layers")(x, layer_caches, positions, valid)
    else:
      block = nn.remat(Block) if self.remat else Block
      outs = []
      for i in range(self.num_layers):
        x, c = block(**kwargs, name=f"layer_{i}")(
            x, positions, valid, jax.tree.map(lambda a: a[i], layer_caches))
        outs.append(c)
      new = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    x = nn.RMSNorm(dtype=self.dtype, name="final_norm", scale_init=(
        nn.with_logical_partitioning(nn.initializers.ones, ("embed",))))(x)
    logits = _dense(self.vocab_size, ("embed", "vocab"), "logits",
                    jnp.float32)(x)
    new["position"] = cache["position"] + valid.sum(1).astype(jnp.int32)
    return logits, new
