"""Jitted decoding for any ir_jax model: prefill a left-padded prompt, then a
`lax.scan` of single-token steps over the model's cache (KV for the
Transformer, carry for the LSTM). Nothing leaves the device until the end.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ir_jax import rewards
from ir_jax.data.vocab import EOS, PAD


def lengths_from_eos(tokens: jax.Array) -> jax.Array:
  """int32[B]: index of the first EOS + 1 (EOS counted), or T if none."""
  is_eos = tokens == EOS
  first = jnp.argmax(is_eos, axis=1)
  return jnp.where(is_eos.any(1), first + 1, tokens.shape[1]).astype(jnp.int32)


def _pick(logits, rng, temperature, top_k, top_p=1.0):
  """Greedy (temperature 0) or sampled next tokens from logits [B, V]."""
  if temperature == 0.0:
    return logits.argmax(-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    # Nucleus: keep the smallest prefix of the sorted distribution whose
    # mass reaches top_p (the most likely token is always kept).
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = before >= top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_len",
                                             "temperature", "top_k"))
def generate(model, params, source: jax.Array, rng: Optional[jax.Array] = None,
             *, max_len: int, temperature: float = 0.0, top_k: int = 0,
             allowed: Optional[jax.Array] = None):
  """Generates `max_len` target tokens after each prompt.

  Args:
    model: a model from `ir_jax.models` (static).
    params: its variables ({"params": ...}).
    source: int32[B, P] left-padded prompts ending in SEP.
    rng: PRNG key (sampling only).
    max_len: target tokens to generate, EOS included.
    temperature: 0 for greedy, else sampling temperature.
    top_k: sample among the k most likely tokens (0 = all).
    allowed: optional bool[V]: the only tokens that may be emitted (a
      task's target symbols and EOS); None allows every token.

  Returns:
    tokens int32[B, max_len] (tokens after the first EOS are PAD) and their
    lengths int32[B] (EOS included).
  """
  batch, prompt = source.shape
  if rng is None:
    rng = jax.random.key(0)
  restrict = ((lambda l: l) if allowed is None else
              (lambda l: jnp.where(allowed, l, -jnp.inf)))
  cache = model.init_cache(batch, prompt + max_len)
  logits, cache = model.apply(params, source, source != PAD, cache)
  rngs = jax.random.split(rng, max_len)
  first = _pick(restrict(logits[:, -1]), rngs[0], temperature, top_k)

  def step(carry, key):
    token, cache = carry
    logits, cache = model.apply(params, token[:, None],
                                jnp.ones((batch, 1), bool), cache)
    nxt = _pick(restrict(logits[:, -1]), key, temperature, top_k)
    return (nxt, cache), nxt

  _, rest = lax.scan(step, (first, cache), rngs[1:])
  tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
  lengths = lengths_from_eos(tokens)
  tokens = jnp.where(jnp.arange(max_len) < lengths[:, None], tokens, PAD)
  return tokens, lengths


@functools.partial(jax.jit, static_argnames=(
    "model", "max_len", "num_samples", "temperature", "top_k", "top_p"))
def sample_with_rewards(model, params, source: jax.Array, target: jax.Array,
                        target_lengths: jax.Array, rng: jax.Array, *,
                        max_len: int, num_samples: int = 1,
                        temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0):
  """Samples K continuations per prompt with per-token edit-distance rewards.

  The edit-distance DP row against the target is carried in the decoding
  loop: each sampled token advances it by `rewards.edit_row_step` (O(M)),
  which yields the potential-based instant reward of that token on the spot
  (`rewards.instant_rewards`' definition, the final term on the token that
  ends the sample). Target and samples both include EOS, which leaves the
  edit distance unchanged.

  Args:
    source: int32[B, P] prompts; target: int32[B, M] with EOS inside
      `target_lengths` (int32[B]).
    rng: PRNG key. temperature / top_k / top_p: as `generate` (temperature 0
      gives greedy, and then all K samples are equal).
    num_samples: K samples per prompt; outputs are ordered [b0 k0, b0 k1, ...].

  Returns:
    dict with tokens int32[B K, T] (PAD after the first EOS), lengths
    int32[B K] (EOS included), rewards float32[B K, T] (0 past the length;
    sum = -ED), edit_distance int32[B K].
  """
  source = jnp.repeat(source, num_samples, axis=0)
  target = jnp.repeat(target, num_samples, axis=0)
  m = jnp.repeat(target_lengths, num_samples, axis=0)
  batch, prompt = source.shape
  cols = jnp.arange(target.shape[1] + 1)

  def potential(row):
    return -jnp.min(jnp.where(cols <= m[:, None], row, 1 << 30), axis=-1)

  cache = model.init_cache(batch, prompt + max_len)
  logits, cache = model.apply(params, source, source != PAD, cache)
  logits = logits[:, -1]
  row = rewards.edit_row_init(target)
  done = jnp.zeros((batch,), bool)
  keys = jax.random.split(rng, max_len)

  def step(carry, xs):
    logits, cache, row, done = carry
    key, t = xs
    token = _pick(logits, key, temperature, top_k, top_p)
    token = jnp.where(done, PAD, token)
    new_row = rewards.edit_row_step(row, token, target, m)
    ends = (token == EOS) | (t == max_len - 1)
    at_m = jnp.take_along_axis(new_row, m[:, None], axis=1)[:, 0]
    nxt = jnp.where(ends, -at_m, potential(new_row))
    reward = jnp.where(done, 0, nxt - potential(row)).astype(jnp.float32)
    row = jnp.where(done[:, None], row, new_row)
    distance = jnp.where(ends & ~done, at_m, -1)
    logits, cache = model.apply(params, token[:, None], ~done[:, None], cache)
    return (logits[:, -1], cache, row, done | ends), (token, reward, distance)

  _, (tokens, rewards_, distance) = lax.scan(
      step, (logits, cache, row, done), (keys, jnp.arange(max_len)))
  tokens, rewards_ = tokens.T, rewards_.T
  return {"tokens": tokens, "lengths": lengths_from_eos(tokens),
          "rewards": rewards_, "edit_distance": distance.max(0)}
