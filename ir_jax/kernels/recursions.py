"""The recursions every edit-distance implementation shares, XLA and Pallas.

One cell rule each, used by the XLA loops in `ir_jax.rewards` and by the
Pallas kernels here, so that every implementation computes the same numbers:

* `advance_block`: one 32-row block of Myers' (1999) bit-parallel column
  update of the exact Levenshtein DP (block form as in Hyyro 2003).
* `diagonal_cell`: one anti-diagonal of the soft edit distance recursion,
  R[i, j] = softmin_gamma(R[i-1, j-1] + c, R[i-1, j] + ins, R[i, j-1] + del),
  with its softmin probabilities (the backward's flows).
* `diagonal_rows`: where each cell of a diagonal reads its cost.
"""

import jax.numpy as jnp
from jax import lax

# Stand-in for +inf outside the DP grid: finite so that no inf - inf or
# 0 * inf appears in values or gradients, and far above any real distance.
BIG = 1e10


def advance_block(pv, mv, eq, hin):
  """One 32-row block of Myers' column update.

  `pv`/`mv` hold the +1/-1 vertical deltas of the block, `eq` the rows whose
  target token equals the current prediction token, `hin` in {-1, 0, 1} the
  horizontal delta entering the block's top. Returns the new vertical deltas,
  the (unshifted) horizontal delta bit-vectors and the delta leaving the
  bottom, which is the next block's `hin`. Words are uint32 here and int32
  in the Pallas kernel (`ir_jax.kernels.levenshtein`): same bits, since
  shifts are logical and additions wrap.
  """
  top_bit = lambda x: lax.shift_right_logical(x, x.dtype.type(31)).astype(
      jnp.int32)
  hneg = (hin < 0).astype(pv.dtype)
  hpos = (hin > 0).astype(pv.dtype)
  xv = eq | mv
  eq = eq | hneg
  xh = (((eq & pv) + pv) ^ pv) | eq
  ph = mv | ~(xh | pv)
  mh = pv & xh
  hout = top_bit(ph) - top_bit(mh)
  ph_shifted = (ph << 1) | hpos
  mh_shifted = (mh << 1) | hneg
  pv = mh_shifted | ~(xv | ph_shifted)
  mv = ph_shifted & xv
  return pv, mv, ph, mh, hout


def diagonal_cell(diag, up, left, c, d, rows, gamma, ins, dele):
  """One anti-diagonal d of the recursion, shared by XLA and Pallas paths.

  `diag`, `up`, `left` hold R[i-1, j-1], R[i-1, j] and R[i, j-1] for the
  cells (i, j = d - i) of the diagonal (rows i along axis 0, `BIG` off the
  grid); `c` their substitution costs; `rows` the row index i (broadcasts
  against them). Returns the diagonal of R and the softmin probabilities
  (substitution, insertion, deletion) of each cell.
  """
  sub, ins_, del_ = diag + c, up + ins, left + dele
  best = jnp.minimum(sub, jnp.minimum(ins_, del_))
  inv_gamma = 1.0 / gamma
  w_sub = jnp.exp((best - sub) * inv_gamma)
  w_ins = jnp.exp((best - ins_) * inv_gamma)
  w_del = jnp.exp((best - del_) * inv_gamma)
  total = w_sub + w_ins + w_del
  r = best - gamma * jnp.log(total)
  inv = 1.0 / total
  # Boundaries R[0, j] = j * del and R[i, 0] = i * ins come by a single
  # deletion / insertion chain, so their probability mass is one-hot. Cells
  # off the grid (j < 0 or j > M) stay finite and feed no valid cell.
  top, left_edge = rows == 0, rows == d
  edge = top | left_edge
  df = jnp.asarray(d, jnp.float32)
  r = jnp.where(top, df * dele, jnp.where(left_edge, df * ins, r))
  live = d > 0  # R[0, 0] has no predecessor.
  p = (jnp.where(edge, 0.0, w_sub * inv),
       jnp.where(edge, (left_edge & live).astype(jnp.float32), w_ins * inv),
       jnp.where(edge, (top & live).astype(jnp.float32), w_del * inv))
  return r, p


def diagonal_rows(num_rows, num_diag, num_pred, num_target):
  """int32[D, R]: flat index i * M + j of costs[i, j] at cell (row i + 1,
  column j + 1) of each diagonal; N * M (a zero row) off the grid."""
  i = jnp.arange(num_rows)[None, :] - 1
  j = jnp.arange(num_diag)[:, None] - i - 2
  inside = (i >= 0) & (i < num_pred) & (j >= 0) & (j < num_target)
  return jnp.where(inside, i * num_target + j, num_pred * num_target)
