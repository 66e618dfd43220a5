"""Pallas kernels for the soft edit distance wavefront (forward and backward).

Same recursion (the shared `diagonal_cell`) and length semantics as the XLA
`diagonals` path of `ir_jax.rewards.soft`. Layout: the padded cost grid is
skewed so anti-diagonal d is a [R, TB] slab (rows i on sublanes, pairs on
the 128 lanes); the kernel's grid is (pair tiles, diagonal blocks):

  * a program owns TB = 128 pairs (the lane axis) and walks the diagonals
    in blocks of K (the "arbitrary", sequential grid axis), so Pallas
    pipelines the next block's costs in (and, backward, the previous
    block's flows out) while the current one runs;
  * the two live diagonals (forward) or the six flow accumulators
    (backward) stay in VMEM scratch across blocks; the forward writes only
    the value and, per block, the two diagonals it starts from; the
    backward re-reads the block's costs, recomputes its softmin
    probabilities into VMEM from that checkpoint and runs the
    expected-alignment recursion over them (no probability planes in HBM).

Rows are padded to a multiple of 8 (sublanes) and shifted with
`pltpu.roll` (jnp.roll semantics; lowers to a TPU rotate). On CPU the
kernels run in interpret mode. K is chosen so ~7 [K, R, 128] f32 planes fit
16 MiB of VMEM (K = 64 at short lengths, 4 at N = 1024, 1 from ~2k); HBM
holds the costs, their skewed copy and 2 R x B floats per block. A whole
diagonal of 128 pairs lives in VMEM, so the shorter sequence (the rows:
`soft_edit_distance` transposes) is bounded by ~5.7k tokens (`fits_vmem`;
v5p's 64 MiB); splitting diagonals into row blocks would lift that. At
such lengths K = 1 and the per-block checkpoints are two skewed planes, so
HBM binds first on 16 GiB chips (B=128, N=M=3000 needs ~17 GB on v5e).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ir_jax.kernels.recursions import BIG, diagonal_cell

LANES = 128
SUBLANES = 8
_VMEM_BUDGET = 16 * 2 ** 20   # Blocks and recomputed planes; carries on top.


def _down(r, rows, fill):
  """r[i] -> r[i - 1] along rows, `fill` at i = 0."""
  return jnp.where(rows == 0, fill, pltpu.roll(r, 1, 0))


def _up(r, rows, last):
  """r[i] -> r[i + 1] along rows, 0 at the last row."""
  return jnp.where(rows == last, 0.0, pltpu.roll(r, r.shape[0] - 1, 0))


def _wavefront(c_ref, first, r2, r1, rows, n, m, prm_ref, probs=None):
  """Runs the K diagonals of a block from the two before it (r2, r1);
  returns (r2, r1, R at (n, m) if it lies in the block). With `probs`
  (three [K, R, TB] refs) it stores the softmin probabilities."""
  gamma, ins, dele = prm_ref[0], prm_ref[1], prm_ref[2]

  def body(t, carry):
    r2, r1, out = carry
    d = first + t
    r, p = diagonal_cell(_down(r2, rows, BIG), _down(r1, rows, BIG), r1,
                         c_ref[t].astype(jnp.float32), d, rows, gamma, ins,
                         dele)
    if probs is not None:
      for ref, value in zip(probs, p):
        ref[t] = value
    hit = (rows == n) & (d == n + m)
    out = out + jnp.sum(jnp.where(hit, r, 0.0), axis=0, keepdims=True)
    return r1, r, out

  return lax.fori_loop(0, c_ref.shape[0], body,
                       (r2, r1, jnp.zeros((1, r1.shape[1]), jnp.float32)))


def _forward_kernel(c_ref, nm_ref, prm_ref, out_ref, ckpt_ref, r2_ref, r1_ref):
  block, num_rows, tile = c_ref.shape
  k = pl.program_id(1)
  n, m = nm_ref[0:1, :], nm_ref[1:2, :]
  rows = lax.broadcasted_iota(jnp.int32, (num_rows, tile), 0)

  @pl.when(k == 0)
  def _():
    r2_ref[...] = jnp.full((num_rows, tile), BIG, jnp.float32)
    r1_ref[...] = jnp.full((num_rows, tile), BIG, jnp.float32)
    out_ref[...] = jnp.zeros((1, tile), jnp.float32)

  # Checkpoint: the two diagonals this block starts from (the backward
  # recomputes the block's probabilities from them).
  ckpt_ref[0, 0], ckpt_ref[0, 1] = r2_ref[...], r1_ref[...]
  r2, r1, out = _wavefront(c_ref, k * block, r2_ref[...], r1_ref[...], rows,
                           n, m, prm_ref)
  r2_ref[...], r1_ref[...] = r2, r1
  out_ref[...] += out


def _backward_kernel(c_ref, ckpt_ref, nm_ref, prm_ref, g_ref, acc_ref,
                     ps_ref, pi_ref, pd_ref, q2s_ref, q1s_ref, q1i_ref,
                     q1d_ref, ai_ref, ad_ref):
  block, num_rows, tile = c_ref.shape
  k = pl.program_id(1)
  first = (pl.num_programs(1) - 1 - k) * block   # Diagonal of slot 0 here.
  n, m = nm_ref[0:1, :], nm_ref[1:2, :]
  rows = lax.broadcasted_iota(jnp.int32, (num_rows, tile), 0)
  seed_at = rows == n
  carries = (q2s_ref, q1s_ref, q1i_ref, q1d_ref, ai_ref, ad_ref)

  @pl.when(k == 0)
  def _():
    for ref in carries:
      ref[...] = jnp.zeros((num_rows, tile), jnp.float32)

  # Recompute this block's probabilities into VMEM from its checkpoint.
  _wavefront(c_ref, first, ckpt_ref[0, 0], ckpt_ref[0, 1], rows, n, m,
             prm_ref, probs=(ps_ref, pi_ref, pd_ref))

  def body(s, carry):
    q2_sub, q1_sub, q1_ins, q1_del, acc_ins, acc_del = carry
    t = block - 1 - s
    d = first + t
    e = (_up(q2_sub, rows, num_rows - 1) + _up(q1_ins, rows, num_rows - 1) +
         q1_del)
    e = e + (seed_at & (d == n + m)).astype(jnp.float32)
    q_sub, q_ins, q_del = e * ps_ref[t], e * pi_ref[t], e * pd_ref[t]
    g_ref[t] = q_sub
    return q1_sub, q_sub, q_ins, q_del, acc_ins + q_ins, acc_del + q_del

  out = lax.fori_loop(0, block, body, tuple(r[...] for r in carries))
  for ref, value in zip(carries, out):
    ref[...] = value

  @pl.when(k == pl.num_programs(1) - 1)
  def _():
    acc_ref[0:1, :] = jnp.sum(out[4], axis=0, keepdims=True)
    acc_ref[1:2, :] = jnp.sum(out[5], axis=0, keepdims=True)


def fits_vmem(num_pred: int, batch: int) -> bool:
  """Whether a diagonal of `num_pred` + 1 rows fits VMEM at K = 1. Measured
  with Mosaic for v5p (64 MiB): ~20 [R, lanes] f32 planes live at once
  (7008 rows x 128 lanes needed 71.9 MB; 5800 rows compiled); kept under
  56 MiB. Longer sequences take the XLA wavefront under "auto"."""
  plane = padded_rows(num_pred) * _lane_tile(batch) * 4
  return 20 * plane <= 56 * 2 ** 20


def padded_rows(num_pred: int) -> int:
  """Rows R of the skewed layout: N + 1 rounded up to the sublane count."""
  return -(-(num_pred + 1) // SUBLANES) * SUBLANES


def diagonal_block(num_rows: int, num_diag: int, budget: int = _VMEM_BUDGET
                   ) -> int:
  """K: diagonals per grid step so the backward's [K, R, 128] f32 blocks
  (costs and flows double-buffered, three recomputed probability planes)
  fit the budget (at least 1, at most all diagonals)."""
  per_diag = 7 * num_rows * LANES * 4
  return int(max(1, min(num_diag, budget // per_diag, 64)))


def _vmem_limit(num_rows: int, block: int, planes: int) -> int:
  """`planes` [K, R, 128] f32 buffers (double-buffered blocks, scratch) +
  ~24 [R, 128] carries, checkpoints and temporaries + slack, at most 60 MiB
  (v5p has 64 MiB of VMEM, v5e/v6e 128)."""
  plane = num_rows * LANES * 4
  need = planes * block * plane + 24 * plane + 4 * 2 ** 20
  return int(min(max(need, 32 * 2 ** 20), 60 * 2 ** 20))


def _lane_tile(batch: int) -> int:
  """128 pairs per program; a smaller batch is one full-width block."""
  return batch if batch < LANES else LANES


def _pad(x, axis, size):
  pad = size - x.shape[axis]
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _compiler_params(num_rows, block, interpret, planes):
  if interpret is True:
    return None
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "arbitrary"),
      vmem_limit_bytes=_vmem_limit(num_rows, block, planes))


def _layout(skewed, n, m, block):
  """Pads costs to whole diagonal blocks and lane tiles; returns (padded
  costs, padded [n; m], block, blocks, lane tile)."""
  num_diag, num_rows, batch = skewed.shape
  block = block or diagonal_block(num_rows, num_diag)
  blocks = -(-num_diag // block)
  lane = _lane_tile(batch)
  padded = -(-batch // lane) * lane
  skewed = _pad(_pad(skewed, 0, blocks * block), 2, padded)
  nm = _pad(jnp.stack([n, m]).astype(jnp.int32), 1, padded)
  return skewed, nm, block, blocks, lane


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def forward(skewed, n, m, gamma, ins, dele, *, interpret, block=None):
  """skewed f32[D, R, B] costs (R = padded_rows(N)) -> (R[n, m] f32[B],
  checkpoints f32[blocks, 2, R, B']: the two diagonals each block of K
  starts from, all `backward` needs besides the costs)."""
  batch = skewed.shape[2]
  skewed, nm, block, blocks, lane = _layout(skewed, n, m, block)
  _, num_rows, padded = skewed.shape
  prm = jnp.stack([gamma, ins, dele]).astype(jnp.float32)
  spec = pl.BlockSpec((block, num_rows, lane), lambda b, k: (k, 0, b))
  lanes = pl.BlockSpec((2, lane), lambda b, k: (0, b))
  out, ckpt = pl.pallas_call(
      _forward_kernel,
      grid=(padded // lane, blocks),
      in_specs=[spec, lanes, pl.BlockSpec(memory_space=pltpu.SMEM)],
      out_specs=[pl.BlockSpec((1, lane), lambda b, k: (0, b)),
                 pl.BlockSpec((1, 2, num_rows, lane),
                              lambda b, k: (k, 0, 0, b))],
      out_shape=[jax.ShapeDtypeStruct((1, padded), jnp.float32),
                 jax.ShapeDtypeStruct((blocks, 2, num_rows, padded),
                                      jnp.float32)],
      scratch_shapes=[pltpu.VMEM((num_rows, lane), jnp.float32)] * 2,
      compiler_params=_compiler_params(num_rows, block, interpret, planes=2),
      interpret=interpret)(skewed, nm, prm)
  return out[0, :batch], ckpt


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def backward(skewed, ckpt, n, m, gamma, ins, dele, *, interpret, block=None):
  """Expected-alignment flows, recomputing each block's softmin
  probabilities in VMEM from its checkpoint (same `skewed` and `block` as
  `forward`): (substitution flows f32[D', R, B], dR/dins, dR/ddel f32[B])."""
  batch = skewed.shape[2]
  skewed, nm, block, blocks, lane = _layout(skewed, n, m, block)
  num_diag, num_rows, padded = skewed.shape
  prm = jnp.stack([gamma, ins, dele]).astype(jnp.float32)
  spec = pl.BlockSpec((block, num_rows, lane),
                      lambda b, k: (blocks - 1 - k, 0, b))
  plane = pltpu.VMEM((block, num_rows, lane), jnp.float32)
  flows, acc = pl.pallas_call(
      _backward_kernel,
      grid=(padded // lane, blocks),
      in_specs=[spec,
                pl.BlockSpec((1, 2, num_rows, lane),
                             lambda b, k: (blocks - 1 - k, 0, 0, b)),
                pl.BlockSpec((2, lane), lambda b, k: (0, b)),
                pl.BlockSpec(memory_space=pltpu.SMEM)],
      out_specs=[spec, pl.BlockSpec((2, lane), lambda b, k: (0, b))],
      out_shape=[jax.ShapeDtypeStruct((num_diag, num_rows, padded),
                                      jnp.float32),
                 jax.ShapeDtypeStruct((2, padded), jnp.float32)],
      scratch_shapes=[plane] * 3 + [pltpu.VMEM((num_rows, lane),
                                               jnp.float32)] * 6,
      compiler_params=_compiler_params(num_rows, block, interpret, planes=7),
      interpret=interpret)(skewed, ckpt, nm, prm)
  return flows[..., :batch], acc[0, :batch], acc[1, :batch]
