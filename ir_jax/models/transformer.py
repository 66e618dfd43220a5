"""Decoder-only pre-norm Transformer LM with RoPE and an explicit KV cache.

One code path serves training and decoding: a call writes the new keys and
values into a cache of `S` slots starting at `cache["index"]` and attends to
every valid slot at or before its own. Training passes no cache (a fresh one
the size of the input is used), decoding passes the cache returned by the
previous call; `decode_step == full forward` holds by construction.

Params carry logical axis names (`vocab`, `embed`, `mlp`, `heads`, and
`layers` when `scan_layers`) for the sharding rules of `ir_jax.parallel`.

The defaults are the project's own LM (Llama-style: RMSNorm, RoPE, SwiGLU,
no biases). The other fields cover the pretrained families that
`ir_jax.models.hf` imports: grouped-query attention (`num_kv_heads`), an
explicit `head_dim`, `rope_theta` and Llama-3 `rope_scaling`, q/k/v biases
(Qwen2), q/k RMSNorm (Qwen3), tied embeddings, and GPT-2's block (LayerNorm
with biases, learned positions, GELU MLP).
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ir_jax.data.vocab import EOS, PAD
from ir_jax.models import prompting

Cache = Dict[str, jax.Array]


def rope_frequencies(head_dim: int, base: float = 10_000.0,
                     scaling: tuple = ()) -> np.ndarray:
  """float32[head_dim // 2]: theta_i = base^(-2i / head_dim), rescaled as
  Llama 3.1 does when `scaling` (sorted (key, value) pairs) has
  rope_type "llama3": wavelengths above original_max_position_embeddings /
  low_freq_factor are divided by `factor`, those below .. / high_freq_factor
  kept, and those between interpolated linearly in 1 / wavelength.

  Computed in float64 on the host (every argument is static) and rounded
  once to float32: an f32 `pow` on the device is off by several ulps, and
  the error of the angle `position x theta` grows with the position."""
  half = head_dim // 2
  freqs = float(base) ** (-np.arange(half, dtype=np.float64) / half)
  s = dict(scaling)
  if s.get("rope_type", "default") != "default":
    factor, low, high = (float(s["factor"]), float(s["low_freq_factor"]),
                         float(s["high_freq_factor"]))
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * np.pi / freqs
    scaled = np.where(wavelen > old / low, freqs / factor, freqs)
    smooth = (old / wavelen - low) / (high - low)
    mixed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    freqs = np.where(medium, mixed, scaled)
  return freqs.astype(np.float32)


# 2 pi as three float32 parts, the first two of 8 significant bits, so that
# k * part is exact for |k| < 2^16 (Cody & Waite's reduction).
_TWO_PI = (6.28125, 0.00193023681640625, 5.070363386039389e-06)


def reduce_angle(angles: jax.Array) -> jax.Array:
  """float32 angles reduced to [-pi, pi] with 2 pi carried to ~40 bits.

  XLA's float32 sin/cos lose accuracy on large arguments (at position 2,000
  the logits of a Llama drift 13x further from a float64 forward than
  transformers' own float32 ones); reduced first, they are accurate, and
  the only error left is the float32 rounding of `position x theta`, which
  transformers has too. Exact for |angle| < 2 pi x 2^16 (~411k rad)."""
  k = jnp.round(angles / (2 * np.pi))
  c1, c2, c3 = _TWO_PI
  return ((angles - k * c1) - k * c2) - k * c3


def rope(x: jax.Array, positions: jax.Array, base: float = 10_000.0,
         scaling: tuple = ()):
  """Rotary position embedding of x[B, L, H, Dh] at positions int[B, L]
  (the half-split convention: dims i and i + Dh/2 rotate together)."""
  half = x.shape[-1] // 2
  freqs = rope_frequencies(x.shape[-1], base, scaling)
  angles = positions[..., None, None].astype(jnp.float32) * freqs  # B L 1 h
  angles = reduce_angle(angles)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


LORA_TARGETS = ("query", "key", "value", "out", "wi_gate", "wi_up", "wo")


class LoRADense(nn.Module):
  """y = x W (+ b) + (alpha / r) x A B: a frozen-able Dense (`kernel`,
  `bias` named as nn.Dense's) plus a rank-r adapter. A [in, r] starts
  Gaussian (std 1/r), B [r, out] at zero, so the adapter starts as a no-op
  (Hu et al. 2021)."""
  features: int
  axes: Tuple[str, str]
  rank: int
  alpha: float
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), self.axes), (x.shape[-1],
                                                      self.features))
    a = self.param("lora_a", nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / self.rank), (self.axes[0], None)),
        (x.shape[-1], self.rank))
    b = self.param("lora_b", nn.with_logical_partitioning(
        nn.initializers.zeros, (None, self.axes[1])),
        (self.rank, self.features))
    bias = (self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros, self.axes[-1:]), (self.features,))
            if self.use_bias else None)
    x, kernel, a, b, bias = nn.dtypes.promote_dtype(x, kernel, a, b, bias,
                                                    dtype=self.dtype)
    y = x @ kernel + (self.alpha / self.rank) * ((x @ a) @ b)
    return y if bias is None else y + bias


def _dense(features, axes, name, dtype, use_bias=False, lora=None):
  """nn.Dense with logical axes; `lora=(rank, alpha)` adds an adapter."""
  if lora:
    return LoRADense(features, axes, lora[0], lora[1], use_bias, dtype,
                     name=name)
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             axes[-1:]))


def _norm(kind, eps, dtype, name, axis="embed", use_bias=False):
  """RMSNorm (`kind="rms"`) or LayerNorm (`"layer"`, GPT-2) with its
  scale (and bias) over the logical axis `axis`."""
  ones = nn.with_logical_partitioning(nn.initializers.ones, (axis,))
  if kind == "layer":
    return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name, use_bias=use_bias,
                        scale_init=ones, bias_init=nn.with_logical_partitioning(
                            nn.initializers.zeros, (axis,)))
  return nn.RMSNorm(epsilon=eps, dtype=dtype, name=name, scale_init=ones)


class Block(nn.Module):
  """Pre-norm attention + MLP block. Returns (x, this layer's new cache)."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  dropout: float
  dtype: Any
  deterministic: bool = True
  num_kv_heads: int = 0          # 0: num_heads (no grouping).
  norm: str = "rms"              # "rms" | "layer" (GPT-2, with biases).
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  rope_scaling: tuple = ()       # Sorted (key, value) pairs; () = none.
  use_rope: bool = True
  qkv_bias: bool = False         # Qwen2; GPT-2 has biases everywhere.
  qk_norm: bool = False          # Qwen3: RMSNorm of each head's q and k.
  mlp: str = "swiglu"            # "swiglu" | "gelu_tanh" (GPT-2).
  use_bias: bool = False         # Biases on every projection (GPT-2).
  lora_rank: int = 0             # > 0: LoRA adapters on `lora_targets`.
  lora_alpha: float = 16.0
  lora_targets: tuple = LORA_TARGETS
  prefix_len: int = 0            # > 0: slots < prefix_len see each other.
  cache_repeat: int = 1          # > 1: a prompt pass into K x the rows.

  @nn.compact
  def __call__(self, x, positions, valid, layer_cache):
    deterministic = self.deterministic
    # x [B, L, E]; positions, valid [B, L]; layer_cache k/v [B, S, KV, Dh],
    # valid [B, S], index [].
    norm = lambda name: _norm(self.norm, self.norm_eps, self.dtype, name,
                              use_bias=self.use_bias)
    kv_heads = self.num_kv_heads or self.num_heads
    h = norm("attn_norm")(x)
    # Projections to H * Dh features (head-major, so sharding the `heads`
    # axis over `tensor` splits whole heads), reshaped to [B, L, H, Dh].
    # Plain Dense: Flax's DenseGeneral evaluates boxed initializers on a
    # flattened shape, which breaks under active logical-axis rules.
    split = lambda t, n: t.reshape(t.shape[:2] + (n, self.head_dim))
    width = self.num_heads * self.head_dim
    bias = self.qkv_bias or self.use_bias
    lora = lambda name: ((self.lora_rank, self.lora_alpha) if self.lora_rank
                         and name in self.lora_targets else None)
    proj = lambda n, name: split(_dense(n * self.head_dim, ("embed", "heads"),
                                        name, self.dtype, bias,
                                        lora(name))(h), n)
    q, k, v = (proj(self.num_heads, "query"), proj(kv_heads, "key"),
               proj(kv_heads, "value"))
    if self.qk_norm:
      q = _norm("rms", self.norm_eps, self.dtype, "query_norm", "head_dim")(q)
      k = _norm("rms", self.norm_eps, self.dtype, "key_norm", "head_dim")(k)
    if self.use_rope:
      q = rope(q, positions, self.rope_theta, self.rope_scaling)
      k = rope(k, positions, self.rope_theta, self.rope_scaling)
    index = layer_cache["index"]
    k, v = k.astype(layer_cache["k"].dtype), v.astype(layer_cache["v"].dtype)
    rows = (lambda a: jnp.repeat(a, self.cache_repeat, axis=0)) \
        if self.cache_repeat > 1 else (lambda a: a)
    write = lambda name, a: jax.lax.dynamic_update_slice_in_dim(
        layer_cache[name], rows(a), index, axis=1)
    new_cache = {"k": write("k", k), "v": write("v", v),
                 "valid": write("valid", valid), "index": index + x.shape[1]}
    query_slots = index + jnp.arange(x.shape[1])
    if self.cache_repeat > 1:
      # A prompt pass into an empty cache of K x the rows (K samples of a
      # prompt): attention reads this chunk's own keys, and each row's
      # keys/values are written K times, one layer at a time, so no
      # [B K, P] copy of the whole cache exists beside it.
      keys, values, key_valid, slots = k, v, valid, query_slots
    else:
      keys, values, key_valid = (new_cache["k"], new_cache["v"],
                                 new_cache["valid"])
      slots = jnp.arange(keys.shape[1])
    visible = slots[None, :] <= query_slots[:, None]            # Causal.
    if self.prefix_len:  # Prefix LM: the source attends both ways.
      visible |= ((slots[None, :] < self.prefix_len) &
                  (query_slots[:, None] < self.prefix_len))
    mask = visible[None] & key_valid[:, None]
    # Padded queries with no visible key would softmax over nothing; they
    # are masked out of every loss, so let them see slot 0 instead of NaN.
    mask = mask.at[:, :, 0].set(mask[:, :, 0] | ~mask.any(-1))
    attn = _attend(q, keys, values, mask, self.dtype,
                   lambda w: nn.Dropout(self.dropout)(
                       w, deterministic=deterministic))
    out = _dense(x.shape[-1], ("heads", "embed"), "out", self.dtype,
                 self.use_bias, lora("out"))(
                     attn.reshape(attn.shape[:2] + (width,)))
    x = x + nn.Dropout(self.dropout)(out, deterministic=deterministic)
    h = norm("mlp_norm")(x)
    dense = lambda n, axes, name: _dense(n, axes, name, self.dtype,
                                         self.use_bias, lora(name))
    up = dense(self.mlp_dim, ("embed", "mlp"), "wi_up")(h)
    if self.mlp == "gelu_tanh":
      hidden = nn.gelu(up, approximate=True)
    else:
      hidden = nn.silu(dense(self.mlp_dim, ("embed", "mlp"), "wi_gate")(h)) * up
    h = dense(x.shape[-1], ("mlp", "embed"), "wo")(hidden)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    return x, new_cache


def _attend(q, keys, values, mask, dtype, dropout):
  """softmax(q k^T / sqrt(Dh)) v over the visible slots.

  q [B, L, H, Dh]; keys, values [B, S, KV, Dh] with H a multiple of KV
  (grouped-query attention: query head h reads KV head h // (H / KV));
  mask bool[B, L, S]. Returns [B, L, H, Dh].
  """
  b, l, h, d = q.shape
  kv = keys.shape[2]
  scale = jnp.sqrt(jnp.float32(d))
  if kv == h:
    logits = jnp.einsum("blhd,bshd->bhls", q, keys.astype(q.dtype))
    logits = logits.astype(jnp.float32) / scale
    logits = jnp.where(mask[:, None], logits, -1e30)
    weights = dropout(jax.nn.softmax(logits, axis=-1).astype(dtype))
    return jnp.einsum("bhls,bshd->blhd", weights, values.astype(dtype))
  qg = q.reshape(b, l, kv, h // kv, d)
  logits = jnp.einsum("blkgd,bskd->bkgls", qg, keys.astype(q.dtype))
  logits = logits.astype(jnp.float32) / scale
  logits = jnp.where(mask[:, None, None], logits, -1e30)
  weights = dropout(jax.nn.softmax(logits, axis=-1).astype(dtype))
  out = jnp.einsum("bkgls,bskd->blkgd", weights, values.astype(dtype))
  return out.reshape(b, l, h, d)


class _ScanBlock(Block):
  """Block with the (carry, xs) -> (carry, ys) signature `nn.scan` wants."""

  @nn.compact
  def __call__(self, x, layer_cache, positions, valid):
    return super().__call__(x, positions, valid, layer_cache)


class Transformer(nn.Module):
  """Causal LM. `__call__(tokens, valid, cache=None) -> (logits, cache)`.

  tokens, valid: int/bool[B, L]. Positions count valid tokens only, so a
  left-padded prompt starts at position 0 (and a right-padded one counts
  0, 1, ... like Hugging Face's). logits: float32[B, L, V].

  `prefix_len` = P > 0 makes it a prefix LM (T5's "prefix LM", UniLM): the
  first P slots (the task's left-padded source) attend to each other both
  ways, every later slot causally, i.e. slot i sees slot j iff j <= i or
  i, j < P. Decoding must then prefill exactly the P source slots in one
  call, as ir_jax.decode does (prompts are source_len wide).
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
  # Pretrained families (ir_jax.models.hf); the defaults are the LM above.
  num_kv_heads: int = 0     # Grouped-query attention; 0 = num_heads.
  head_size: int = 0        # Per-head width; 0 = embed_dim // num_heads.
  norm: str = "rms"         # "rms" | "layer".
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  rope_scaling: tuple = ()  # Sorted (key, value) pairs (rope_type llama3).
  max_positions: int = 0    # > 0: learned positions (GPT-2), no RoPE.
  qkv_bias: bool = False
  qk_norm: bool = False
  mlp: str = "swiglu"       # "swiglu" | "gelu_tanh".
  use_bias: bool = False
  tie_embeddings: bool = False
  # LoRA (ir_jax.models.lora): rank-r adapters on these projections.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple = LORA_TARGETS
  # The tokenizer's padding and end ids (ir_jax.models.special_ids): the
  # project vocabulary's, or a checkpoint's (data.task="text").
  pad_id: int = PAD
  eos_id: int = EOS
  prefix_len: int = 0       # > 0: prefix LM over the first prefix_len slots.

  @property
  def head_dim(self) -> int:
    return self.head_size or self.embed_dim // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  def init_cache(self, batch: int, slots: int) -> Cache:
    """An empty cache of `slots` positions, stacked over layers."""
    shape = (self.num_layers, batch, slots, self.kv_heads, self.head_dim)
    return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
            "valid": jnp.zeros((self.num_layers, batch, slots), bool),
            "index": jnp.zeros((self.num_layers,), jnp.int32),
            "position": jnp.zeros((batch,), jnp.int32)}

  @nn.compact
  def __call__(self, tokens, valid=None, cache: Optional[Cache] = None,
               deterministic: bool = True, num_logits: int = 0,
               cache_repeat: int = 1) -> Tuple[jax.Array, Cache]:
    """(logits float32[B, L, V], the cache after these tokens).

    `num_logits` = n > 0 applies the LM head at the last n positions only
    (logits float32[B, n, V]): the head is V x E per position, the largest
    matmul of a small LM's forward, and teacher forcing and prefill use
    only the positions that predict something.

    `cache_repeat` = K > 1: a prompt pass of B rows into an empty cache of
    B K rows; row b's keys and values fill rows b K .. b K + K - 1 (the
    layout of K samples a prompt), written layer by layer."""
    if valid is None:
      valid = jnp.ones(tokens.shape, bool)
    valid = valid.astype(bool)
    if cache is None:
      cache = self.init_cache(tokens.shape[0] * cache_repeat, tokens.shape[1])
    if cache["position"].shape[0] != tokens.shape[0] * cache_repeat:
      raise ValueError(f"Transformer: a cache of {cache['position'].shape[0]}"
                       f" rows for {tokens.shape[0]} rows x cache_repeat "
                       f"{cache_repeat}.")
    start = cache["position"][::cache_repeat]
    positions = start[:, None] + jnp.cumsum(valid, axis=1) - 1
    positions = jnp.maximum(positions, 0)
    embed = nn.Embed(
        self.vocab_size, self.embed_dim, name="embed",
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")))
    x = prompting.with_prompt(self, embed(tokens), tokens)
    if self.max_positions:
      x = x + nn.Embed(
          self.max_positions, self.embed_dim, name="position_embed",
          embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("length", "embed")))(positions)
    x = x.astype(self.dtype)
    # Activations: batch over (data, fsdp), features whole. Without this XLA
    # copies the params' `embed`-over-fsdp sharding onto activations and
    # reshuffles them every layer.
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    layer_caches = {k: cache[k] for k in ("k", "v", "valid", "index")}
    kwargs = dict(num_heads=self.num_heads, head_dim=self.head_dim,
                  mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
                  deterministic=deterministic)
    kwargs.update(num_kv_heads=self.num_kv_heads, norm=self.norm,
                  norm_eps=self.norm_eps, rope_theta=self.rope_theta,
                  rope_scaling=self.rope_scaling,
                  use_rope=not self.max_positions, qkv_bias=self.qkv_bias,
                  qk_norm=self.qk_norm, mlp=self.mlp, use_bias=self.use_bias,
                  lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
                  lora_targets=tuple(self.lora_targets),
                  prefix_len=self.prefix_len, cache_repeat=cache_repeat)
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
    if num_logits:
      x = x[:, -num_logits:]
    x = _norm(self.norm, self.norm_eps, self.dtype, "final_norm",
              use_bias=self.use_bias)(x)
    if self.tie_embeddings:
      logits = embed.attend(x.astype(jnp.float32))
    else:
      logits = _dense(self.vocab_size, ("embed", "vocab"), "logits",
                      jnp.float32)(x)
    new["position"] = cache["position"] + jnp.repeat(
        valid.sum(1).astype(jnp.int32), cache_repeat)
    return logits, new
