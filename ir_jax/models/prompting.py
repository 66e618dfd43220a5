"""Prompt slots: the P positions right after BOS in a source.

Sources are laid out [PAD.., BOS, slot_1 .. slot_P, symbols.., SEP]
(`ir_jax.data.tasks`). A hand-designed prompt (a task tag) or a searched
discrete prompt writes token ids into the slots (`fill_slots`); a soft
prompt replaces the slots' embeddings with learned vectors (`splice`, called
by the models right after the embedding lookup). Calls without a BOS (decode
steps, targets) are left untouched.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ir_jax.data.vocab import BOS, SPECIALS


def slot_index(tokens: jax.Array, length: int) -> jax.Array:
  """int32[B, L]: j at the j-th slot after the row's first BOS, else -1."""
  is_bos = tokens == BOS
  has_bos = is_bos.any(axis=1, keepdims=True)
  offset = (jnp.arange(tokens.shape[1])[None] -
            jnp.argmax(is_bos, axis=1)[:, None] - 1)
  return jnp.where(has_bos & (offset >= 0) & (offset < length), offset, -1)


def splice(x: jax.Array, tokens: jax.Array, prompt: jax.Array) -> jax.Array:
  """x[B, L, E] with the slot positions replaced by prompt[P, E] (or
  prompt[B, P, E], one prompt per row)."""
  idx = slot_index(tokens, prompt.shape[-2])
  safe = jnp.maximum(idx, 0)
  if prompt.ndim == 2:
    values = prompt[safe]
  else:
    values = jnp.take_along_axis(prompt, safe[..., None], axis=1)
  return jnp.where((idx >= 0)[..., None], values.astype(x.dtype), x)


def fill_slots(tokens: jax.Array, ids: jax.Array) -> jax.Array:
  """tokens[B, L] with the P slots set to ids int32[P] (or [B, P])."""
  idx = slot_index(tokens, ids.shape[-1])
  safe = jnp.maximum(idx, 0)
  values = ids[safe] if ids.ndim == 1 else jnp.take_along_axis(ids, safe, 1)
  return jnp.where(idx >= 0, values, tokens).astype(tokens.dtype)


def with_prompt(module: nn.Module, x: jax.Array, tokens: jax.Array):
  """A model's embeddings x[B, L, E] with its soft prompt (param "prompt",
  f32[P, E], P = module.prompt_length) spliced in; identity when P = 0.
  Called before any cast, so a prompt equal to embedding rows reproduces
  those tokens exactly."""
  if not module.prompt_length:
    return x
  prompt = module.param("prompt", nn.with_logical_partitioning(
      nn.initializers.normal(1.0), (None, None)),
      (module.prompt_length, module.embed_dim))
  return splice(x, tokens, prompt)


def symbol_ids(task) -> np.ndarray:
  """Token ids a prompt may use: every non-special symbol of the task."""
  return np.arange(len(SPECIALS), task.vocab.size, dtype=np.int32)


def init_soft_prompt(config, task, embedding: jax.Array) -> jax.Array:
  """f32[P, E] by `config.prompt.init`: "tag" = the task tag's embedding in
  every slot (P = 1 reproduces the hand tag exactly), "vocab" = embeddings
  of P random symbols (Lester et al., 2021), "random" = N(0, 1) like the
  embeddings. embedding: the frozen model's table f32[V, E]."""
  p = config.prompt
  rng = np.random.default_rng(config.seed)
  if p.init == "tag":
    if not task.prompt or task.prompt[0] < len(SPECIALS):
      raise ValueError("prompt.init='tag' needs data.tags=True.")
    ids = np.asarray(task.prompt, np.int32)
  elif p.init == "vocab":
    ids = rng.choice(symbol_ids(task), int(p.length))
  else:
    return jnp.asarray(rng.standard_normal(
        (int(p.length), embedding.shape[1])), jnp.float32)
  return jnp.asarray(embedding)[ids].astype(jnp.float32)
