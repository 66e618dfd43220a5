"""Differentiable soft edit distance (soft Levenshtein) with a custom VJP.

The recursion over a substitution-cost matrix `costs[..., N, M]` (rows `i`
index the prediction, columns `j` the target):

  R[0, 0] = 0,   R[i, 0] = i * insertion_cost,   R[0, j] = j * deletion_cost,
  R[i, j] = softmin_gamma(R[i-1, j-1] + costs[i-1, j-1],
                          R[i-1, j]   + insertion_cost,
                          R[i, j-1]   + deletion_cost),
  softmin_gamma(a) = -gamma * log(sum_k exp(-a_k / gamma)),

and the soft distance of a pair with lengths (n, m) is `R[n, m]`. As
gamma -> 0 it tends to the exact weighted edit distance; for gamma > 0,
`ED - gamma * log(#alignments) <= R[n, m] <= ED`.

Implementation: cells on one anti-diagonal `d = i + j` depend only on
diagonals d-1 and d-2, so the forward pass is a `lax.scan` over N + M
diagonals, each a vector op over `[N + 1, B]` (the wavefront: parallel work
even at batch 1). The forward stores the three softmin probabilities of every
cell; the backward is the expected-alignment recursion of Cuturi & Blondel
(2017), run over the diagonals in reverse with no autodiff tape:

  E[n, m] = 1,
  E[i, j] = E[i+1, j+1] P_sub[i+1, j+1] + E[i+1, j] P_ins[i+1, j]
            + E[i, j+1] P_del[i, j+1],
  dR[n, m] / dcosts[i-1, j-1] = E[i, j] P_sub[i, j].

The gradient w.r.t. gamma is free: R is 1-homogeneous in (costs,
insertion_cost, deletion_cost, gamma), so by Euler's theorem
`gamma dR/dgamma = R - <costs, dR/dcosts> - ins dR/dins - del dR/ddel`.
"""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ir_jax.kernels import dispatch, platform
from ir_jax.kernels import soft_edit_distance as tpu_kernels
from ir_jax.kernels import soft_edit_distance_gpu as gpu_kernels
from ir_jax.kernels.batching import fold_vmap
from ir_jax.kernels.recursions import BIG, diagonal_cell, diagonal_rows
from ir_jax.rewards import _checks

lowering_for = platform.lowering_for   # Also here: picks this module's kernels.


def _skew(x, num_diagonals):
  """x[B, N + 1, M + 1] -> y[D, N + 1, B] with y[d, i] = x[i, d - i] (0 off)."""
  rows = jnp.arange(x.shape[1])[:, None]
  cols = jnp.arange(num_diagonals)[None, :] - rows            # [N + 1, D]
  valid = (cols >= 0) & (cols < x.shape[2])
  y = jnp.take_along_axis(x, jnp.clip(cols, 0, x.shape[2] - 1)[None], axis=2)
  return jnp.where(valid[None], y, 0).transpose(2, 1, 0)


def _unskew(y, num_cols):
  """Inverse of `_skew`: y[D, N + 1, B] -> x[B, N + 1, M + 1]."""
  rows = jnp.arange(y.shape[1])[:, None]
  diags = rows + jnp.arange(num_cols)[None, :]                # [N + 1, M + 1]
  y = y.transpose(2, 1, 0)                                    # [B, N + 1, D]
  return jnp.take_along_axis(y, diags[None], axis=2)


def _shift_down(r, fill):
  """r[i] -> r[i - 1] along axis 0, with `fill` at i = 0."""
  return jnp.concatenate([jnp.full_like(r[:1], fill), r[:-1]], axis=0)


def _forward(costs, n, m, gamma, ins, dele):
  """Runs the wavefront. costs f32[B, N, M], n/m int32[B].

  Returns R[n, m] f32[B] and the softmin probabilities of every cell
  (substitution, insertion, deletion), each f32[D, N + 1, B] (skewed).
  """
  batch, num_pred, num_target = costs.shape
  num_diag = num_pred + num_target + 1
  # Cell (i, j) of the padded grid holds costs[i-1, j-1]; row/col 0 are unused.
  grid = jnp.pad(costs, ((0, 0), (1, 0), (1, 0)))
  skewed = _skew(grid, num_diag)                               # [D, N + 1, B]
  final_diag = n + m
  at_final = jnp.arange(num_pred + 1)[:, None] == n[None]      # [N + 1, B]
  rows = jnp.arange(num_pred + 1, dtype=jnp.int32)[:, None]

  def step(carry, xs):
    r2, r1, out = carry  # Diagonals d - 2 and d - 1, each [N + 1, B].
    c, d = xs
    r, p = diagonal_cell(_shift_down(r2, BIG), _shift_down(r1, BIG), r1, c,
                         d, rows, gamma, ins, dele)
    hit = at_final & (d == final_diag)[None]
    out = out + jnp.where(hit, r, 0.0).sum(0)
    return (r1, r, out), p

  big = jnp.full((num_pred + 1, batch), BIG, jnp.float32)
  ds = jnp.arange(num_diag, dtype=jnp.int32)
  (_, _, out), probs = lax.scan(
      step, (big, big, jnp.zeros((batch,), jnp.float32)), (skewed, ds))
  return out, probs


def _backward(probs, n, m, num_target):
  """Expected alignment from the forward's probabilities (3 x f32[D, N + 1, B]).

  Returns (dR/dcosts f32[B, N, M], dR/dins f32[B], dR/ddel f32[B]).
  """
  num_diag, num_rows, batch = probs[0].shape
  seed_diag = n + m
  pairs = jnp.arange(batch)

  def up(x):
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])], axis=0)

  def step(carry, xs):
    # Flows E * P of diagonals d + 2 (substitution part) and d + 1 (all
    # three parts), plus running sums of insertion/deletion flows.
    q2_sub, q1, acc_ins, acc_del = carry
    p, d = xs
    e = up(q2_sub) + up(q1[1]) + q1[2]
    e = e.at[n, pairs].add((d == seed_diag).astype(e.dtype))
    q = tuple(e * p_k for p_k in p)
    return (q1[0], q, acc_ins + q[1], acc_del + q[2]), q[0]

  zeros = jnp.zeros((num_rows, batch), jnp.float32)
  init = (zeros, (zeros, zeros, zeros), zeros, zeros)
  ds = jnp.arange(num_diag, dtype=jnp.int32)
  (_, _, acc_ins, acc_del), flows = lax.scan(step, init, (probs, ds),
                                             reverse=True)
  g_costs = _unskew(flows, num_target + 1)[:, 1:, 1:]
  return g_costs, acc_ins.sum(0), acc_del.sum(0)


def _softmin2(a, b, gamma, inv_gamma):
  """softmin_gamma of two arrays, shifted by their min for stability.

  Written with exp/log rather than log1p/abs: XLA:CPU runs it ~1.5x faster.
  """
  best = jnp.minimum(a, b)
  total = jnp.exp((best - a) * inv_gamma) + jnp.exp((best - b) * inv_gamma)
  return best - gamma * jnp.log(total)


def _forward_rows(costs, n, m, gamma, ins, dele):
  """Row-order forward: a scan over rows i, each with a scan over columns j.

  Per row, the two terms that do not depend on the row itself are combined
  in bulk (`t_j = softmin(R[i-1, j-1] + c, R[i-1, j] + ins)`), leaving the
  sequential chain `R[i, j] = softmin(t_j, R[i, j-1] + del)` to the inner
  scan. Every step is vectorized over the batch, which is what a CPU wants.

  Returns R[n, m] f32[B] and the substitution and insertion probabilities of
  every cell, each f32[N, M, B] (rows 1..N, columns 1..M).
  """
  batch, num_pred, num_target = costs.shape
  cols = jnp.arange(num_target + 1, dtype=jnp.float32)[:, None]
  at_m = jnp.arange(num_target + 1)[:, None] == m[None]         # [M + 1, B]
  row0 = jnp.broadcast_to(cols * dele, (num_target + 1, batch))
  out0 = jnp.where(n == 0, m * dele, 0.0)
  inv_gamma = 1.0 / gamma

  def row_step(carry, xs):
    prev, out = carry
    c, i = xs                                                   # [M, B], ()
    a_sub = prev[:-1] + c
    a_ins = prev[1:] + ins
    t = _softmin2(a_sub, a_ins, gamma, inv_gamma)
    first = jnp.broadcast_to(i * ins, (batch,))

    def cell(left, t_j):
      r = _softmin2(t_j, left + dele, gamma, inv_gamma)
      return r, r

    _, rest = lax.scan(cell, first, t)
    row = jnp.concatenate([first[None], rest], axis=0)
    # R <= each candidate, so these exponents are <= 0. The deletion
    # probability is 1 - p_sub - p_ins, left to the backward: one plane and
    # one exp per cell fewer.
    probs = tuple(jnp.exp((rest - a) * inv_gamma) for a in (a_sub, a_ins))
    out = jnp.where(i == n, jnp.where(at_m, row, 0.0).sum(0), out)
    return (row, out), probs

  rows = jnp.arange(1, num_pred + 1, dtype=jnp.float32)
  (_, out), probs = lax.scan(row_step, (row0, out0),
                             (costs.transpose(1, 2, 0), rows))
  return out, probs


def _backward_rows(probs, n, m, num_target):
  """Expected alignment for `_forward_rows` (rows in reverse, then columns).

  Returns (dR/dcosts f32[B, N, M], dR/dins f32[B], dR/ddel f32[B]).
  """
  p_sub, p_ins = probs                                          # [N, M, B]
  p_del = jnp.maximum(1.0 - p_sub - p_ins, 0.0)
  num_pred, _, batch = p_sub.shape
  at_m = (jnp.arange(num_target + 1)[:, None] == m[None]).astype(jnp.float32)
  zero_row = jnp.zeros((1, batch), jnp.float32)

  def into_row(f_sub, f_ins, i):
    """a_j = E[i+1, j+1] P_sub[i+1, j+1] + E[i+1, j] P_ins[i+1, j] + seed."""
    a = jnp.concatenate([f_sub[1:], zero_row], axis=0) + f_ins
    return a + at_m * (n == i)[None]

  def row_step(carry, xs):
    f_sub, f_ins, acc_ins, acc_del = carry          # Row i + 1: [M + 1, B].
    ps, pi, pd, i = xs
    a = into_row(f_sub, f_ins, i)

    def cell(e_right_del, ys):
      a_j, pd_j = ys
      e = a_j + e_right_del
      return e * pd_j, e

    flow_left, e = lax.scan(cell, jnp.zeros((batch,), jnp.float32),
                            (a[1:], pd), reverse=True)
    e_first = a[0] + flow_left  # R[i, 0] continues by insertion only.
    f_sub = jnp.concatenate([zero_row, e * ps], axis=0)
    f_ins = jnp.concatenate([e_first[None], e * pi], axis=0)
    return (f_sub, f_ins, acc_ins + f_ins.sum(0),
            acc_del + (e * pd).sum(0)), f_sub[1:]

  zeros = jnp.zeros((num_target + 1, batch), jnp.float32)
  acc = jnp.zeros((batch,), jnp.float32)
  rows = jnp.arange(1, num_pred + 1)
  (f_sub, f_ins, acc_ins, acc_del), g = lax.scan(
      row_step, (zeros, zeros, acc, acc), (p_sub, p_ins, p_del, rows),
      reverse=True)
  # Row 0 continues by deletion only: E[0, j] = a_j + E[0, j + 1].
  a0 = into_row(f_sub, f_ins, 0)[1:]
  e0 = jnp.cumsum(a0[::-1], axis=0)[::-1]
  return g.transpose(2, 0, 1), acc_ins, acc_del + e0.sum(0)


def _skew_lanes(costs, num_rows, num_diag):
  """costs f32[B, N, M] -> f32[D, R, B] (pairs on the minor axis): one
  transpose and one gather of B-vectors (off-grid cells read a zero row),
  no [B, N + 1, D] intermediate."""
  batch, num_pred, num_target = costs.shape
  flat = jnp.concatenate([
      costs.transpose(1, 2, 0).reshape(num_pred * num_target, batch),
      jnp.zeros((1, batch), costs.dtype)])
  return flat[diagonal_rows(num_rows, num_diag, num_pred, num_target)]


def _unskew_lanes(flows, num_pred, num_target):
  """Inverse of `_skew_lanes` on the grid: f32[D', R, B] -> f32[B, N, M]."""
  i = jnp.arange(num_pred)[:, None]
  j = jnp.arange(num_target)[None, :]
  out = flows[i + j + 2, i + 1]                               # [N, M, B]
  return out.transpose(2, 0, 1)


def _forward_pallas(costs, n, m, gamma, ins, dele, interpret):
  """The wavefront as a Pallas Mosaic-TPU kernel (ir_jax.kernels). Residuals:
  the (unskewed) costs the custom VJP keeps anyway and one pair of
  diagonals per block; the backward re-skews the costs and recomputes the
  probabilities block by block, so nothing of size D x R outlives the
  forward."""
  _, num_pred, num_target = costs.shape
  rows = tpu_kernels.padded_rows(num_pred)
  skewed = _skew_lanes(costs, rows, rows + num_target)
  value, ckpt = tpu_kernels.forward(skewed, n, m, gamma, ins, dele,
                                interpret=interpret)
  return value, (costs, ckpt, jnp.stack([gamma, ins, dele]))


def _backward_pallas(residuals, n, m, num_target, interpret):
  costs, ckpt, (gamma, ins, dele) = residuals
  num_pred = costs.shape[1]
  rows = tpu_kernels.padded_rows(num_pred)
  flows, g_ins, g_del = tpu_kernels.backward(
      _skew_lanes(costs, rows, rows + num_target), ckpt, n, m, gamma, ins,
      dele, interpret=interpret)
  return _unskew_lanes(flows, num_pred, num_target), g_ins, g_del


def _forward_pallas_gpu(costs, n, m, gamma, ins, dele, interpret):
  """The wavefront as a Mosaic GPU kernel (one pair per CUDA block); same
  residual scheme as the TPU kernel (every diagonal of R in long mode)."""
  run = fold_vmap(functools.partial(gpu_kernels.forward, interpret=interpret), 3)
  value, saved = run(costs, n, m, gamma, ins, dele)
  return value, (costs, saved, jnp.stack([gamma, ins, dele]))


def _backward_pallas_gpu(residuals, n, m, num_target, interpret):
  del num_target
  costs, saved, (gamma, ins, dele) = residuals
  run = fold_vmap(functools.partial(gpu_kernels.backward, interpret=interpret), 4)
  return run(costs, saved, n, m, gamma, ins, dele)


def _implementation(layout):
  """(forward, backward) of a resolved layout: "rows", "diagonals" or
  ("pallas_tpu" | "pallas_gpu", interpret)."""
  if isinstance(layout, tuple):
    name, interpret = layout
    fwd, bwd = {"pallas_tpu": (_forward_pallas, _backward_pallas),
                "pallas_gpu": (_forward_pallas_gpu, _backward_pallas_gpu)}[name]
    return (functools.partial(fwd, interpret=interpret),
            functools.partial(bwd, interpret=interpret))
  return {"diagonals": (_forward, _backward),
          "rows": (_forward_rows, _backward_rows)}[layout]


def _resolve_layout(layout, implementation="auto", num_pred=0, batch=1):
  """Which code runs: "rows", "diagonals" (XLA) or a Pallas kernel,
  ("pallas_tpu" | "pallas_gpu", interpret), fixed at trace time so the
  forward and backward of the custom VJP agree. "auto": the kernels on
  TPU (Mosaic, compiled for v5e, v5p, v6e in the tests) and Hopper GPUs
  (Mosaic GPU, lowered in the tests) where a diagonal fits on chip; XLA
  on CPU, older GPUs and past the on-chip bound."""
  dispatch.check_implementation(implementation)
  if layout not in ("auto", "rows", "diagonals"):
    raise ValueError(f"`layout` must be 'auto', 'rows' or 'diagonals', "
                     f"got {layout!r}.")
  kernel = dispatch.soft_edit_distance_kernel(
      implementation if layout == "auto" else
      ("pallas" if implementation == "pallas" else "xla"), num_pred, batch)
  if kernel is not None:
    return kernel
  target = platform.target_platform()
  if layout == "auto":
    # Measured in benchmarks/rewards.py: on CPU the batch-vectorized row
    # order wins; accelerators need the wavefront's per-step parallelism.
    return "rows" if target == "cpu" else "diagonals"
  return layout


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _soft_ed(costs, n, m, gamma, ins, dele, layout):
  return _implementation(layout)[0](costs, n, m, gamma, ins, dele)[0]


def _soft_ed_fwd(costs, n, m, gamma, ins, dele, layout):
  value, probs = _implementation(layout)[0](costs, n, m, gamma, ins, dele)
  return value, (probs, costs, n, m, gamma, ins, dele, value)


def _soft_ed_bwd(layout, res, g):
  probs, costs, n, m, gamma, ins, dele, value = res
  g_costs, g_ins, g_del = _implementation(layout)[1](probs, n, m,
                                                      costs.shape[-1])
  inner = (jnp.sum(g_costs * costs, axis=(1, 2)) + ins * g_ins +
           dele * g_del)
  g_gamma = (value - inner) / gamma
  int_zero = lambda x: jnp.zeros(x.shape, jax.dtypes.float0)
  return (g[:, None, None] * g_costs, int_zero(n), int_zero(m),
          jnp.sum(g * g_gamma), jnp.sum(g * g_ins), jnp.sum(g * g_del))


_soft_ed.defvjp(_soft_ed_fwd, _soft_ed_bwd)


def soft_edit_distance(costs: jax.Array,
                       gamma=1.0,
                       *,
                       pred_lengths: Optional[jax.Array] = None,
                       target_lengths: Optional[jax.Array] = None,
                       insertion_cost=1.0,
                       deletion_cost=1.0,
                       layout: str = "auto",
                       implementation: str = "auto") -> jax.Array:
  """Soft Levenshtein distance `R[n, m]` (recursion in the module docstring).

  Memory: the forward keeps the three float32 softmin-probability planes per
  pair, `3 N M` floats in row layout (`3 (N + M + 1) (N + 1)` skewed in the
  diagonal layout); the backward keeps no tape. Values and gradients stay
  finite for gamma in [1e-3, 1e2].

  Args:
    costs: float[..., N, M] substitution costs (float32 or bfloat16;
      accumulation is float32). Costs past the lengths are ignored.
    gamma: softmin temperature > 0, a Python float or a traced scalar.
    pred_lengths: optional int[...] valid rows n (clamped to [0, N]).
    target_lengths: optional int[...] valid columns m (clamped to [0, M]).
    insertion_cost: cost of an extra prediction token (float or scalar).
    deletion_cost: cost of a missing target token (float or scalar).
    layout: "diagonals" (the anti-diagonal wavefront: N + M steps, each a
      vector op over a whole diagonal), "rows" (N x M steps, each over the
      batch; fastest on CPU) or "auto" (rows on CPU, diagonals elsewhere).
    implementation: "xla" (the `layout` above), "pallas" (the wavefront as a
      Pallas kernel, `ir_jax.kernels`: Mosaic TPU, or Mosaic GPU on a
      Hopper GPU; interpret mode on CPU; it keeps the costs plus two
      diagonals per block, or every diagonal of R for long sequences on
      GPU, and recomputes the probabilities in the backward; the shorter
      sequence must fit on chip: ~5.7k tokens on TPU, 4223 on GPU) or
      "auto" (Pallas when compiling for TPU or a Hopper GPU while it fits,
      else XLA). `lowering_for` overrides the platform.

  Returns:
    float32[...] soft distances; differentiable w.r.t. costs, gamma and the
    insertion/deletion costs.

  >>> import jax.numpy as jnp
  >>> a, b = jnp.array([1, 2, 3]), jnp.array([1, 3])
  >>> costs = (a[:, None] != b[None, :]).astype(jnp.float32)   # 0/1 costs
  >>> round(float(soft_edit_distance(costs, 0.01)), 4)   # gamma -> 0: ED
  1.0
  >>> float(soft_edit_distance(costs, 1.0)) < 1.0   # Softmin is below min.
  True
  """
  costs = _checks.floats("costs", costs, min_rank=2)
  _checks.positive("gamma", gamma)
  batch = costs.shape[:-2]
  num_pred, num_target = costs.shape[-2:]
  n = _checks.lengths("pred_lengths", pred_lengths, batch, num_pred)
  m = _checks.lengths("target_lengths", target_lengths, batch, num_target)
  for name, value in (("gamma", gamma), ("insertion_cost", insertion_cost),
                      ("deletion_cost", deletion_cost)):
    if jnp.ndim(value) != 0:
      raise ValueError(f"`{name}` must be a scalar, got shape "
                       f"{jnp.shape(value)}.")
  size = math.prod(batch)
  flat = costs.reshape((size, num_pred, num_target)).astype(jnp.float32)
  n, m = n.reshape(-1), m.reshape(-1)
  rows = jnp.arange(num_pred)[None, :, None] < n[:, None, None]
  cols = jnp.arange(num_target)[None, None, :] < m[:, None, None]
  # Zeroing the padding keeps NaN/inf there out of the values and gradients.
  flat = jnp.where(rows & cols, flat, 0.0)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  ins, dele = f32(insertion_cost), f32(deletion_cost)
  resolved = _resolve_layout(layout, implementation,
                             min(num_pred, num_target), size)
  if resolved != "rows" and num_pred > num_target:
    # The wavefront's diagonals hold one cell per row: put the shorter
    # sequence on the rows (skewed planes of (N + M) x min(N, M) cells, not
    # (N + M) x N). R is symmetric under transposition with the insertion
    # and deletion costs swapped: R(C)[n, m] = R(C^T, ins<->del)[m, n].
    flat, n, m, ins, dele = flat.transpose(0, 2, 1), m, n, dele, ins
  value = _soft_ed(flat, n, m, f32(gamma), ins, dele, resolved)
  return value.reshape(batch)


def soft_alignment(costs: jax.Array,
                   gamma=1.0,
                   *,
                   pred_lengths: Optional[jax.Array] = None,
                   target_lengths: Optional[jax.Array] = None,
                   insertion_cost=1.0,
                   deletion_cost=1.0,
                   layout: str = "auto") -> jax.Array:
  """Expected alignment `dR[n, m] / dcosts`: float32[..., N, M] in [0, 1].

  Entry (i, j) is the probability, under the Gibbs distribution over
  alignments at temperature gamma, that prediction token i is aligned
  (matched or substituted) with target token j. Zero past the lengths.
  """
  def total(c):
    return soft_edit_distance(
        c, gamma, pred_lengths=pred_lengths, target_lengths=target_lengths,
        insertion_cost=insertion_cost, deletion_cost=deletion_cost,
        layout=layout).sum()
  costs = _checks.floats("costs", costs, min_rank=2)
  return jax.grad(total)(costs.astype(jnp.float32))


def soft_edit_distance_from_logits(logits: jax.Array,
                                   targets: jax.Array,
                                   gamma=1.0,
                                   *,
                                   pred_lengths: Optional[jax.Array] = None,
                                   target_lengths: Optional[jax.Array] = None,
                                   insertion_cost=1.0,
                                   deletion_cost=1.0,
                                   layout: str = "auto",
                                   implementation: str = "auto") -> jax.Array:
  """Soft edit distance with `costs[i, j] = 1 - softmax(logits[i])[targets[j]]`.

  The substitution cost is the probability mass the model puts on anything
  but target token j at position i, so a confident correct prediction costs
  0 and the whole expression is differentiable w.r.t. `logits`.

  Args:
    logits: float[..., N, V] prediction logits.
    targets: int[..., M] target token ids in [0, V).
    gamma, lengths, insertion_cost, deletion_cost, layout, implementation:
      as `soft_edit_distance`.

  Returns:
    float32[...].
  """
  logits = _checks.floats("logits", logits, min_rank=2)
  targets = _checks.tokens("targets", targets)
  _checks.same_batch(("logits", "targets"),
                     (logits.shape[:-2], targets.shape[:-1]))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  targets = jnp.clip(targets, 0, logits.shape[-1] - 1)
  index = jnp.broadcast_to(targets[..., None, :],
                           logits.shape[:-1] + targets.shape[-1:])
  costs = 1.0 - jnp.take_along_axis(probs, index, axis=-1)     # [..., N, M]
  return soft_edit_distance(costs, gamma, pred_lengths=pred_lengths,
                            target_lengths=target_lengths,
                            insertion_cost=insertion_cost,
                            deletion_cost=deletion_cost, layout=layout,
                            implementation=implementation)
