"""Byte-level instant rewards for subword tokenizers.

A BPE token spells 1-10+ characters, so an edit distance over token ids
charges one edit for a token whatever it spells, and an empty answer
(distance = the target's token count) beats any long wrong one. These
rewards count edits over the UTF-8 **bytes** the tokens spell (for
byte-level BPE: exactly the decoded text's bytes), through a table

  token_bytes int32[V, L]        the bytes of each token (0-padded),
  token_byte_lengths int32[V]    how many (0 for special tokens and EOS),

built by `ir_jax.data.hf_tokenizer.token_byte_table`. The table is an
argument, not a constant: call these constructors inside the jitted step
with the table passed in (as `cosine_similarity`'s embedding table is), so
a 49k x 81 table is not baked into every compiled program.

The comparison rule, the same as evaluation's exact match and CER for
text tasks (`ir_jax.evaluate.text_scores`): the sample's bytes and the
target's bytes, both stripped of surrounding whitespace (space, tab,
newline, carriage return). So a target stored as " nedrag" (a leading
space is how BPE spells a word after a prompt) is matched by "nedrag" and
by " nedrag ". Inside the text every byte counts.

All keep the `InstantReward` protocol: `init(target, target_lengths)`
takes the target as token ids (EOS included, 0 bytes) and expands it to
bytes on device; `step(state, token, t)` advances one DP row over the
sampled token's bytes, looping to the longest token in the batch (not to
L); the rewards are potential-shaped, so the per-token rewards of a sample
plus `finish` sum to the sequence value:

* `char_edit_distance_reward`: sum = -Lev(bytes(sample), bytes(target));
* `char_error_reward`: sum = -min(Lev / max(|bytes(target)|, 1), 1), the
  character error rate clipped at 1, so an empty answer (CER 1) is never
  better than a wrong answer of any length (it ties those with CER >= 1);
* `char_exact_match`: 0 per token, `finish` = 1 when the bytes are equal.
"""

import dataclasses
import functools
from typing import Any, Tuple

import jax
import jax.numpy as jnp

from ir_jax.rewards import exact
from ir_jax.rewards._instant import InstantReward

_BIG = jnp.iinfo(jnp.int32).max
WHITESPACE = (9, 10, 13, 32)   # The bytes stripped at both ends.


def _is_space(b):
  return (b == 9) | (b == 10) | (b == 13) | (b == 32)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["token_bytes", "token_byte_lengths"],
                   meta_fields=["max_target_bytes"])
@dataclasses.dataclass(frozen=True)
class ByteTable:
  """The bytes each token spells, as a pytree for the train step's
  arguments: `token_bytes` int32[V, L] and `token_byte_lengths` int32[V]
  are arrays (traced), `max_target_bytes` a static bound on the bytes of
  any target (the DP row's width; `ir_jax.state.byte_table` computes it
  from the task's targets). 0: M * L, always enough, often 10x wider."""
  token_bytes: Any
  token_byte_lengths: Any
  max_target_bytes: int = 0


def target_bytes(target: jax.Array, target_lengths: jax.Array,
                 token_bytes: jax.Array, token_byte_lengths: jax.Array,
                 max_target_bytes: int = 0) -> Tuple[jax.Array, jax.Array]:
  """Token targets spelled as bytes, left-compacted.

  Args:
    target: int[B, M] token ids; target_lengths: int[B] (tokens past it
      are padding).
    token_bytes: int32[V, L]; token_byte_lengths: int32[V].
    max_target_bytes: the output width W (0: M * L). It must bound every
      target's bytes: bytes past it are dropped.

  Returns:
    (bytes int32[B, W], -1 past the length; lengths int32[B]), with
    surrounding whitespace (`WHITESPACE`) dropped.
  """
  batch, m = target.shape
  width = token_bytes.shape[1]
  n = token_byte_lengths[target]                               # [B, M]
  n = jnp.where(jnp.arange(m)[None] < target_lengths[:, None], n, 0)
  ends = jnp.cumsum(n, -1)
  starts = ends - n
  # Where the text starts and ends in the concatenated bytes (surrounding
  # whitespace dropped): from each byte's global position.
  spelled = token_bytes[target]                                # [B, M, L]
  j = jnp.arange(width)[None, None]
  text = (j < n[..., None]) & ~_is_space(spelled)
  pos = starts[..., None] + j
  first = jnp.where(text, pos, _BIG).min((1, 2))
  last = jnp.where(text, pos + 1, 0).max((1, 2))
  first = jnp.minimum(first, last)
  # Output slot k holds global byte first + k: a gather, not a scatter.
  out_width = max_target_bytes or m * width
  g = first[:, None] + jnp.arange(out_width)[None]             # [B, W]
  which = jnp.sum(ends[:, None, :] <= g[..., None], -1)        # token index
  which = jnp.minimum(which, m - 1)
  offset = g - jnp.take_along_axis(starts, which, -1)
  ids = jnp.take_along_axis(target, which, -1)
  byte = token_bytes[ids, jnp.clip(offset, 0, width - 1)]
  keep = g < last[:, None]
  return (jnp.where(keep, byte, -1).astype(jnp.int32),
          keep.sum(-1).astype(jnp.int32))


def _best(row, m):
  """min_{j <= m} D[k, j] (what any completion can still reach)."""
  cols = jnp.arange(row.shape[-1])
  return jnp.where(cols <= m[:, None], row, _BIG).min(-1)


def _at(row, m):
  return jnp.take_along_axis(row, m[:, None], axis=-1)[:, 0]


def _advance(state, token, token_bytes, token_byte_lengths):
  """The state after every byte of `token` int[B] (loops to the longest
  token of the batch). Leading whitespace is skipped; `held` keeps the row
  from before the current whitespace run, which `_final_row` uses, so
  trailing whitespace is dropped too."""
  spelled = token_bytes[token]                                 # [B, L]
  n = token_byte_lengths[token]
  target, m = state["target"], state["m"]

  def body(j, s):
    byte, real = spelled[:, j], j < n
    space = _is_space(byte)
    used = real & (s["started"] | ~space)        # Not leading whitespace.
    opens = used & space & ~s["in_space"]        # A whitespace run begins.
    new = exact.edit_row_step(s["row"], byte, target, m)
    return dict(
        s, row=jnp.where(used[:, None], new, s["row"]),
        held=jnp.where(opens[:, None], s["row"], s["held"]),
        in_space=jnp.where(used, space, s["in_space"]),
        started=s["started"] | (used & ~space))

  return jax.lax.fori_loop(0, n.max(), body, state)


def _final_row(state):
  """The DP row of the sample with its trailing whitespace dropped."""
  return jnp.where(state["in_space"][:, None], state["held"], state["row"])


def _reward(token_bytes, token_byte_lengths, max_target_bytes, potential,
            terminal, trailing=True):
  """An InstantReward over byte DP rows: step reward = potential change,
  finish = terminal(D[n, m], m) - potential(now). `trailing=False` takes
  the potential of the row without its trailing whitespace (`_final_row`),
  so whitespace is charged to the byte after it, never refunded at EOS."""
  row_of = (lambda s: s["row"]) if trailing else _final_row
  def init(target, target_lengths):
    target_b, m = target_bytes(target, target_lengths, token_bytes,
                               token_byte_lengths, max_target_bytes)
    row = exact.edit_row_init(target_b)
    false = jnp.zeros(m.shape, bool)
    return {"row": row, "held": row, "in_space": false, "started": false,
            "target": target_b, "m": m}

  def step(state, token, t):
    del t
    new = _advance(state, token, token_bytes, token_byte_lengths)
    m = state["m"]
    reward = potential(row_of(new), m) - potential(row_of(state), m)
    return new, reward.astype(jnp.float32)

  def finish(state):
    m = state["m"]
    return (terminal(_at(_final_row(state), m), m) -
            potential(row_of(state), m)).astype(jnp.float32)

  return InstantReward(init, step, finish)


def _checked(token_bytes, token_byte_lengths, max_target_bytes):
  if isinstance(token_bytes, ByteTable):
    table = token_bytes
    token_bytes, token_byte_lengths = table.token_bytes, table.token_byte_lengths
    max_target_bytes = max_target_bytes or table.max_target_bytes
  token_bytes = jnp.asarray(token_bytes)
  token_byte_lengths = jnp.asarray(token_byte_lengths)
  if token_bytes.ndim != 2 or token_byte_lengths.shape != token_bytes.shape[:1]:
    raise ValueError(
        f"token_bytes must be int[V, L] and token_byte_lengths int[V], got "
        f"{token_bytes.shape} and {token_byte_lengths.shape} "
        "(ir_jax.data.hf_tokenizer.token_byte_table builds both).")
  return (token_bytes.astype(jnp.int32), token_byte_lengths.astype(jnp.int32),
          int(max_target_bytes or 0))


def char_edit_distance_reward(token_bytes, token_byte_lengths=None, *,
                              max_target_bytes: int = 0) -> InstantReward:
  """Instant reward summing to minus the byte-level Levenshtein distance.

  With `phi_k = -min_{j <= m} D[k, j]` over the DP row of the sample's
  bytes so far against the target's bytes, the reward of a token is
  `phi_after - phi_before` and `finish` adds `-D[n, m] - phi_n`:

  .. math:: \\sum_t r_t = -\\mathrm{Lev}(\\mathrm{bytes}(y),
            \\mathrm{bytes}(y^*)),

  both stripped of surrounding whitespace (the module's comparison rule).

  Args:
    token_bytes: int32[V, L], each token's UTF-8 bytes (0-padded), or a
      `ByteTable` holding both arrays and the bound below.
    token_byte_lengths: int32[V] (0 for special tokens and EOS).
    max_target_bytes: static bound on every target's bytes, the DP row's
      width (0: M * L). The same arguments for the two rewards below.
  """
  table = _checked(token_bytes, token_byte_lengths, max_target_bytes)
  return _reward(*table, lambda row, m: -_best(row, m),
                 lambda d, m: -d)


def char_error_reward(token_bytes, token_byte_lengths=None, *,
                      max_target_bytes: int = 0,
                      clip: bool = True) -> InstantReward:
  """Bounded instant reward summing to `-min(Lev / max(|y*|, 1), 1)`.

  The potential is `psi_k = -min(min_j D[k, j] / max(m, 1), 1)` (psi_0 =
  0), so the sum telescopes to the clipped character error rate. An empty
  answer scores -1, the floor: it ties answers with CER >= 1 and loses to
  every answer with CER < 1, so GRPO cannot prefer it to trying.

  `clip=False` is the per-token credit's form (`ir_jax.objectives.credit`):
  the unclipped rate `-Lev / max(|y*|, 1)`, its potential taken without
  trailing whitespace, so every token's reward is <= 0 (0 exactly when an
  optimal completion stays reachable) and none is refunded at EOS.
  """
  table = _checked(token_bytes, token_byte_lengths, max_target_bytes)
  ceiling = 1.0 if clip else jnp.inf
  rate = lambda d, m: jnp.minimum(
      d.astype(jnp.float32) / jnp.maximum(m, 1).astype(jnp.float32), ceiling)
  return _reward(*table, lambda row, m: -rate(_best(row, m), m),
                 lambda d, m: -rate(d, m), trailing=clip)


def char_exact_match(token_bytes, token_byte_lengths=None, *,
                     max_target_bytes: int = 0) -> InstantReward:
  """1 at the end of a sample whose bytes equal the target's, else 0 (0 per
  token). Unlike `exact_match` (token ids), two tokenizations of the same
  text match."""
  table = _checked(token_bytes, token_byte_lengths, max_target_bytes)
  return _reward(*table, lambda row, m: jnp.zeros(m.shape, jnp.float32),
                 lambda d, m: (d == 0).astype(jnp.float32))


def byte_edit_distance_of(state) -> jax.Array:
  """int32[B]: the byte-level edit distance held by a char reward state
  (surrounding whitespace dropped)."""
  return _at(_final_row(state), state["m"])


__all__ = ["ByteTable", "WHITESPACE", "byte_edit_distance_of", "char_edit_distance_reward",
           "char_error_reward", "char_exact_match", "target_bytes"]
