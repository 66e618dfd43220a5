"""Exact Levenshtein distance, prefix tables and per-token instant rewards.

Conventions shared by every function here:

* `pred: int[..., N]` is the prediction (rows `i`), `target: int[..., M]` the
  reference (columns `j`); any leading batch dims `...`, equal for both.
* `pred_lengths`, `target_lengths`: optional `int[...]`; None means full
  length. Traced values outside `[0, N]` (resp. `[0, M]`) are clamped.
  Tokens at or past a length never change a result.
* Unit costs: substitution, insertion (extra prediction token) and deletion
  (missing target token) all cost 1.
* `D[k, j] = ED(pred[:k], target[:j])`, so `D[k, 0] = k`, `D[0, j] = j` and
  `D[k, j] = min(D[k-1, j-1] + [pred[k-1] != target[j-1]],
                 D[k-1, j] + 1, D[k, j-1] + 1)`.
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from ir_jax.kernels import dispatch
from ir_jax.kernels import levenshtein as kernels
from ir_jax.kernels.batching import fold_vmap
from ir_jax.kernels.recursions import advance_block
from ir_jax.rewards import _checks

_WORD = 32
# Prediction steps x words up to which the step loop is unrolled in Python.
_MAX_UNROLLED_BLOCKS = 128
_MAX_BULK_MASK_BYTES = 1 << 28


def _prepare(pred, target, pred_lengths, target_lengths):
  """Validates arguments; returns (pred, target, n, m, batch_shape)."""
  pred = _checks.tokens("pred", pred)
  target = _checks.tokens("target", target)
  batch = _checks.same_batch(("pred", "target"),
                             (pred.shape[:-1], target.shape[:-1]))
  n = _checks.lengths("pred_lengths", pred_lengths, batch, pred.shape[-1])
  m = _checks.lengths("target_lengths", target_lengths, batch,
                      target.shape[-1])
  return pred, target, n, m, batch


# ----------------------------------------------------------------------------
# Bit-parallel exact distance (Myers 1999, block form as in Hyyro 2003/edlib).
# ----------------------------------------------------------------------------


def _column_step(pv, mv, eq, last_word, last_bit, unroll_words):
  """Advances all words of one prediction token.

  Shapes: `pv, mv, eq: uint32[W, B]`; `last_word, last_bit: [B]` locate the
  row `m - 1` whose horizontal delta changes the score. Returns new
  `(pv, mv)` and the score delta `int32[B]`. `unroll_words` unrolls the
  word loop in Python (only for fully unrolled problems: inside a step
  `lax.scan`, XLA:CPU runs an unrolled word chain 4-14x slower than a word
  scan, measured at 128-256 tokens).
  """
  num_words, batch = pv.shape
  hin = jnp.ones((batch,), jnp.int32)  # D[k, 0] = k: +1 enters every column.

  def word(w, pv_w, mv_w, eq_w, hin):
    pv_w, mv_w, ph, mh, hout = advance_block(pv_w, mv_w, eq_w, hin)
    bit = ((ph >> last_bit) & 1).astype(jnp.int32) - (
        (mh >> last_bit) & 1).astype(jnp.int32)
    delta = jnp.where(last_word == w, bit, 0)
    return pv_w, mv_w, hout, delta

  if unroll_words or num_words == 1:
    new_pv, new_mv, delta = [], [], jnp.zeros((batch,), jnp.int32)
    for w in range(num_words):
      pv_w, mv_w, hin, d = word(w, pv[w], mv[w], eq[w], hin)
      if num_words > 1:
        # Without the barrier XLA:CPU fuses the word chain into one loop
        # body that recomputes shared producers per consumer (3-10x slower).
        pv_w, mv_w, hin = lax.optimization_barrier((pv_w, mv_w, hin))
      new_pv.append(pv_w)
      new_mv.append(mv_w)
      delta = delta + d
    return jnp.stack(new_pv), jnp.stack(new_mv), delta

  def body(carry, xs):
    hin, delta = carry
    w, pv_w, mv_w, eq_w = xs
    pv_w, mv_w, hin, d = word(w, pv_w, mv_w, eq_w, hin)
    return (hin, delta + d), (pv_w, mv_w)

  (_, delta), (pv, mv) = lax.scan(
      body, (hin, jnp.zeros((batch,), jnp.int32)),
      (jnp.arange(num_words), pv, mv, eq))
  return pv, mv, delta


def levenshtein(pred: jax.Array,
                target: jax.Array,
                *,
                pred_lengths: Optional[jax.Array] = None,
                target_lengths: Optional[jax.Array] = None,
                implementation: str = "auto") -> jax.Array:
  """Exact unit-cost edit distance of integer token sequences.

  Bit-parallel (Myers 1999; multi-word blocks as in Hyyro 2003): the target
  is held as `W = ceil(M / 32)` uint32 words of vertical DP deltas and each
  prediction token updates all of them with ~15 word operations, vectorized
  over the batch. Work is `O(N * W)` word ops per pair instead of `O(N * M)`
  cell updates, and any vocabulary size works since the match masks are
  built from token comparisons, not a per-symbol table.

  Args:
    pred: int[..., N] prediction tokens.
    target: int[..., M] target tokens.
    pred_lengths: optional int[...] valid prediction lengths (clamped).
    target_lengths: optional int[...] valid target lengths (clamped).
    implementation: "xla" (the loop below), "pallas" (the same algorithm as
      one Pallas kernel, `ir_jax.kernels.levenshtein`: Mosaic TPU, or Mosaic
      GPU on Hopper+ for M <= 3200; interpret mode on CPU) or "auto"
      (Pallas on TPU and GPU where it runs, XLA on CPU).

  Returns:
    int32[...] distances `ED(pred[:n], target[:m])`.

  >>> import jax.numpy as jnp
  >>> levenshtein(jnp.array([[1, 2, 3], [1, 2, 4]]),
  ...             jnp.array([[1, 3, 3], [1, 2, 4]])).tolist()
  [1, 0]
  >>> int(levenshtein(jnp.array([1, 2, 3, 4]), jnp.array([1, 2, 3, 0]),
  ...                 target_lengths=jnp.array(3)))   # "1234" vs "123"
  1
  """
  pred, target, n, m, batch = _prepare(pred, target, pred_lengths,
                                       target_lengths)
  num_pred, num_target = pred.shape[-1], target.shape[-1]
  kernel = dispatch.levenshtein_kernel(implementation, num_target)
  if num_target == 0:
    return n
  if num_pred == 0:
    return m
  pred = pred.reshape(-1, num_pred)
  n_flat, m_flat = n.reshape(-1), m.reshape(-1)
  if kernel is not None:
    platform, interpret = kernel
    run = fold_vmap(functools.partial(kernels.levenshtein, platform=platform,
                                      interpret=interpret), 4)
    return run(pred, target.reshape(-1, num_target), n_flat,
               m_flat).reshape(batch)
  size = pred.shape[0]
  num_words = -(-num_target // _WORD)
  pad = num_words * _WORD - num_target
  # Bits past m - 1 only ever carry information upwards (to higher rows), so
  # padding rows can hold anything; the score reads row m - 1 alone.
  words = jnp.pad(target.reshape(size, num_target), ((0, 0), (0, pad)))
  words = words.reshape(size, num_words, _WORD).transpose(1, 2, 0)  # [W,32,B]
  shifts = jnp.arange(_WORD, dtype=jnp.uint32)[:, None]
  last = jnp.maximum(m_flat - 1, 0)
  last_word = last // _WORD
  last_bit = (last % _WORD).astype(jnp.uint32)

  unroll = num_pred * num_words <= _MAX_UNROLLED_BLOCKS

  def match_words(tokens):  # [..., B] -> uint32[..., W, B]
    hits = tokens[..., None, None, :].astype(words.dtype) == words
    return jnp.sum(hits.astype(jnp.uint32) << shifts, axis=-2,
                   dtype=jnp.uint32)

  def step(carry, xs):
    pv, mv, score = carry
    eq, i = xs
    if eq.ndim == 1:  # Tokens: masks built in the loop to bound memory.
      eq = match_words(eq)
    new_pv, new_mv, delta = _column_step(pv, mv, eq, last_word, last_bit,
                                         unroll)
    active = i < n_flat
    pv = jnp.where(active[None], new_pv, pv)
    mv = jnp.where(active[None], new_mv, mv)
    return (pv, mv, jnp.where(active, score + delta, score)), None

  carry = (jnp.full((num_words, size), 0xFFFFFFFF, jnp.uint32),
           jnp.zeros((num_words, size), jnp.uint32), m_flat)
  # Match masks for all steps in one bulk op are 2-7x faster on CPU than
  # building them inside the loop; fall back when they would be large.
  bulk = num_pred * num_words * size * 4 <= _MAX_BULK_MASK_BYTES
  xs = match_words(pred.T) if bulk else pred.T
  if unroll:
    # Short problems: a fully unrolled loop lets XLA fuse across steps.
    for i in range(num_pred):
      carry, _ = step(carry, (xs[i], i))
  else:
    carry, _ = lax.scan(step, carry, (xs, jnp.arange(num_pred)), unroll=2)
  score = carry[2]
  score = jnp.where(m_flat == 0, n_flat, score)
  return score.reshape(batch)


# ----------------------------------------------------------------------------
# Row-by-row DP: prefix tables, incremental rows, instant rewards, OCD.
# ----------------------------------------------------------------------------


def edit_row_init(target: jax.Array,
                  target_lengths: Optional[jax.Array] = None) -> jax.Array:
  """First DP row `D[0, j] = j` for an empty prediction.

  Args:
    target: int[..., M] target tokens.
    target_lengths: optional int[...]; accepted for symmetry with
      `edit_row_step` (row 0 does not depend on it).

  Returns:
    int32[..., M + 1].
  """
  target = _checks.tokens("target", target)
  _checks.lengths("target_lengths", target_lengths, target.shape[:-1],
                  target.shape[-1])
  row = jnp.arange(target.shape[-1] + 1, dtype=jnp.int32)
  return jnp.broadcast_to(row, target.shape[:-1] + row.shape)


def _row_step(row, token, target, m):
  """`D[k+1, :]` from `D[k, :]` (no checks); shapes as `edit_row_step`."""
  num_target = target.shape[-1]
  j = jnp.arange(num_target)
  # Target padding is a token that never matches, so columns past m do not
  # depend on the padding's contents.
  match = (target == token[..., None]) & (j < m[..., None])
  from_prev = jnp.minimum(row[..., :-1] + 1 - match.astype(jnp.int32),
                          row[..., 1:] + 1)
  t = jnp.concatenate([row[..., :1] + 1, from_prev], axis=-1)
  # D[k+1, j] = min_{l <= j} t[l] + (j - l): the deletion chain is a prefix
  # minimum, so the row needs no sequential loop over j.
  cols = jnp.arange(num_target + 1, dtype=jnp.int32)
  return lax.cummin(t - cols, axis=t.ndim - 1) + cols


def edit_row_step(row: jax.Array,
                  token: jax.Array,
                  target: jax.Array,
                  target_lengths: Optional[jax.Array] = None) -> jax.Array:
  """Advances the DP by one prediction token in O(M): `D[k, :] -> D[k+1, :]`.

  Made for decoding loops: carry `row` in the loop state, start it with
  `edit_row_init` and feed each sampled token. Columns past `target_lengths`
  treat the padding as tokens that never match.

  Args:
    row: int32[..., M + 1] the row `D[k, :]`.
    token: int[...] the prediction token `pred[k]`.
    target: int[..., M] target tokens.
    target_lengths: optional int[...] valid target lengths (clamped).

  Returns:
    int32[..., M + 1] the row `D[k + 1, :]`.
  """
  target = _checks.tokens("target", target)
  token = _checks.tokens("token", token, min_rank=0)
  batch = _checks.same_batch(("target", "token", "row"),
                             (target.shape[:-1], token.shape, row.shape[:-1]))
  if row.shape[-1] != target.shape[-1] + 1:
    raise ValueError(f"`row` must have {target.shape[-1] + 1} columns "
                     f"(target length + 1), got {row.shape[-1]}.")
  m = _checks.lengths("target_lengths", target_lengths, batch,
                      target.shape[-1])
  return _row_step(row.astype(jnp.int32), token, target, m)


def _scan_rows(pred, target, n, m, emit: Callable):
  """Scans DP rows over `pred`; returns `emit(row)` for k = 0..N stacked.

  Rows past `n` repeat row `n`. Output leaves have a new axis -2 of N + 1
  if `emit` returns [..., X] arrays, placed after the batch dims.
  """
  row0 = edit_row_init(target)

  def step(row, xs):
    token, k = xs
    new = _row_step(row, token, target, m)
    row = jnp.where((k < n)[..., None], new, row)
    return row, emit(row)

  pred_t = jnp.moveaxis(pred, -1, 0)
  _, rows = lax.scan(step, row0, (pred_t, jnp.arange(pred.shape[-1])))
  first = jax.tree.map(lambda x: x[None], emit(row0))
  rows = jax.tree.map(lambda a, b: jnp.concatenate([a, b], 0), first, rows)
  batch_ndim = pred.ndim - 1
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, batch_ndim), rows)


def prefix_edit_distances(pred: jax.Array,
                          target: jax.Array,
                          *,
                          pred_lengths: Optional[jax.Array] = None,
                          target_lengths: Optional[jax.Array] = None
                          ) -> jax.Array:
  """All prefix distances `D[k, j] = ED(pred[:k], target[:j])`.

  Args:
    pred: int[..., N]; target: int[..., M]; lengths as in `levenshtein`.

  Returns:
    int32[..., N + 1, M + 1]. Rows `k > n` repeat row `n`; columns `j > m`
    are distances to the target padded with never-matching tokens.

  >>> import jax.numpy as jnp
  >>> prefix_edit_distances(jnp.array([1, 2]), jnp.array([1, 3])).tolist()
  [[0, 1, 2], [1, 0, 1], [2, 1, 1]]
  """
  pred, target, n, m, _ = _prepare(pred, target, pred_lengths, target_lengths)
  return _scan_rows(pred, target, n, m, lambda row: row)


def _row_potential(row, m):
  """(min_{j <= m} row[j], row[m]) for a row int32[..., M + 1]."""
  cols = jnp.arange(row.shape[-1])
  masked = jnp.where(cols <= m[..., None], row, jnp.iinfo(jnp.int32).max)
  at_m = jnp.take_along_axis(row, m[..., None], axis=-1)[..., 0]
  return masked.min(-1), at_m


def instant_rewards(pred: jax.Array,
                    target: jax.Array,
                    *,
                    pred_lengths: Optional[jax.Array] = None,
                    target_lengths: Optional[jax.Array] = None) -> jax.Array:
  """Per-token rewards whose sum is minus the edit distance.

  Potential-based shaping (Ng et al. 1999) with `phi_k = -min_{j<=m} D[k, j]`,
  the best any completion of `pred[:k]` can still reach:

    r_k = phi_{k+1} - phi_k               for k < n - 1,
    r_{n-1} = -D[n, m] - phi_{n-1}        (the last valid token),
    r_k = 0                               for k >= n.

  Since `phi_0 = 0`, `sum_k r_k = -ED(pred[:n], target[:m])`. With unit costs
  every non-final reward is 0 or -1 (the row minimum grows by at most one).
  Memory is O(M) per pair: rows are scanned, not stored.

  Args:
    pred: int[..., N]; target: int[..., M]; lengths as in `levenshtein`.

  Returns:
    float32[..., N].

  >>> import jax.numpy as jnp
  >>> # "1 4 2 3" against "1 2 3": only the stray 4 costs (-1, the ED).
  >>> instant_rewards(jnp.array([1, 4, 2, 3]), jnp.array([1, 2, 3])).tolist()
  [0.0, -1.0, 0.0, 0.0]
  >>> # Stopping early: the missing 3 is charged at the last token.
  >>> instant_rewards(jnp.array([1, 2]), jnp.array([1, 2, 3])).tolist()
  [0.0, -1.0]
  """
  pred, target, n, m, _ = _prepare(pred, target, pred_lengths, target_lengths)
  row_min, at_m = _scan_rows(pred, target, n, m,
                             lambda row: _row_potential(row, m))
  phi = -row_min.astype(jnp.float32)                    # [..., N + 1]
  k = jnp.arange(pred.shape[-1])
  last = k == (n[..., None] - 1)
  nxt = jnp.where(last, -at_m[..., 1:].astype(jnp.float32), phi[..., 1:])
  return jnp.where(k < n[..., None], nxt - phi[..., :-1], 0.0)


def optimal_completion_targets(pred: jax.Array,
                               target: jax.Array,
                               *,
                               vocab_size: int,
                               eos_id: int,
                               pred_lengths: Optional[jax.Array] = None,
                               target_lengths: Optional[jax.Array] = None
                               ) -> jax.Array:
  """Optimal next tokens after each prediction prefix (OCD, Sabour et al. 2019).

  For each prefix length k = 0..N the set
  `{target[j] : j < m, D[k, j] == min_{j' <= m} D[k, j']}`, plus `eos_id` when
  `D[k, m]` attains the minimum: appending any of these keeps the best
  reachable edit distance of `pred[:k]`. Prefixes past `n` repeat prefix `n`.

  Args:
    pred: int[..., N]; target: int[..., M]; lengths as in `levenshtein`.
    vocab_size: size V of the output vocabulary axis.
    eos_id: the end-of-sequence token, in [0, V).

  Returns:
    bool[..., N + 1, V].

  >>> import jax.numpy as jnp
  >>> t = optimal_completion_targets(jnp.array([1, 4]), jnp.array([1, 2]),
  ...                                vocab_size=5, eos_id=0)
  >>> [jnp.flatnonzero(row).tolist() for row in t]   # After "", "1", "1 4".
  [[1], [2], [0, 2]]
  """
  if not isinstance(vocab_size, int) or vocab_size <= 0:
    raise ValueError(f"`vocab_size` must be a positive int, got {vocab_size}.")
  if not 0 <= int(eos_id) < vocab_size:
    raise ValueError(f"`eos_id` must be in [0, vocab_size={vocab_size}), "
                     f"got {eos_id}.")
  pred, target, n, m, _ = _prepare(pred, target, pred_lengths, target_lengths)
  cols = jnp.arange(target.shape[-1])
  tgt = jnp.clip(target, 0, vocab_size - 1)

  def scatter(tokens, hit):  # [M], [M] -> [V] for one pair
    return jnp.zeros((vocab_size,), jnp.int32).at[tokens].max(hit)

  for _ in range(target.ndim - 1):
    scatter = jax.vmap(scatter)

  def emit(row):
    best, at_m = _row_potential(row, m)
    hit = (row[..., :-1] == best[..., None]) & (cols < m[..., None])
    mask = scatter(tgt, hit.astype(jnp.int32)) > 0
    return mask.at[..., eos_id].set(mask[..., eos_id] | (at_m == best))

  return _scan_rows(pred, target, n, m, emit)
