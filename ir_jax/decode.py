"""Jitted decoding for any ir_jax model: prefill a left-padded prompt, then a
`lax.scan` of single-token steps over the model's cache (KV for the
Transformer, carry for the LSTM). Nothing leaves the device until the end.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ir_jax.data.vocab import EOS, PAD


def lengths_from_eos(tokens: jax.Array) -> jax.Array:
  """int32[B]: index of the first EOS + 1 (EOS counted), or T if none."""
  is_eos = tokens == EOS
  first = jnp.argmax(is_eos, axis=1)
  return jnp.where(is_eos.any(1), first + 1, tokens.shape[1]).astype(jnp.int32)


def _pick(logits, rng, temperature, top_k):
  if temperature == 0.0:
    return logits.argmax(-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_len",
                                             "temperature", "top_k"))
def generate(model, params, source: jax.Array, rng: Optional[jax.Array] = None,
             *, max_len: int, temperature: float = 0.0, top_k: int = 0):
  """Generates `max_len` target tokens after each prompt.

  Args:
    model: a model from `ir_jax.models` (static).
    params: its variables ({"params": ...}).
    source: int32[B, P] left-padded prompts ending in SEP.
    rng: PRNG key (sampling only).
    max_len: target tokens to generate, EOS included.
    temperature: 0 for greedy, else sampling temperature.
    top_k: sample among the k most likely tokens (0 = all).

  Returns:
    tokens int32[B, max_len] (tokens after the first EOS are PAD) and their
    lengths int32[B] (EOS included).
  """
  batch, prompt = source.shape
  if rng is None:
    rng = jax.random.key(0)
  cache = model.init_cache(batch, prompt + max_len)
  logits, cache = model.apply(params, source, source != PAD, cache)
  rngs = jax.random.split(rng, max_len)
  first = _pick(logits[:, -1], rngs[0], temperature, top_k)

  def step(carry, key):
    token, cache = carry
    logits, cache = model.apply(params, token[:, None],
                                jnp.ones((batch, 1), bool), cache)
    nxt = _pick(logits[:, -1], key, temperature, top_k)
    return (nxt, cache), nxt

  _, rest = lax.scan(step, (first, cache), rngs[1:])
  tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
  lengths = lengths_from_eos(tokens)
  tokens = jnp.where(jnp.arange(max_len) < lengths[:, None], tokens, PAD)
  return tokens, lengths
