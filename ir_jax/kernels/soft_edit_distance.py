"""Pallas kernels for the soft edit distance wavefront (forward and backward).

Same recursion (the shared `diagonal_cell`) and length semantics as the XLA
`diagonals` path of `ir_jax.rewards.soft`. Layout: the padded cost grid is
skewed so anti-diagonal d is a [R, TB] slab (rows i on sublanes, pairs on
the 128 lanes); the kernel's grid is (pair tiles, diagonal blocks):

  * a program owns TB = 128 pairs (the lane axis) and walks the diagonals
    in blocks of K (the "arbitrary", sequential grid axis), so Pallas
    pipelines the next block's costs in and the previous block's
    probabilities out while the current one runs;
  * the two live diagonals (forward) or the six flow accumulators
    (backward) stay in VMEM scratch across blocks: nothing but the costs
    in and the probabilities out touches HBM.

Rows are padded to a multiple of 8 (sublanes) and shifted with
`pltpu.roll` (jnp.roll semantics; lowers to a TPU rotate). On CPU the
kernels run in interpret mode. VMEM holds 2 x 4 blocks of [K, R, 128] plus
~12 [R, 128] carries and temporaries, so lengths are bounded by VMEM:
N ~ 4k on v5e/v6e (128 MiB), ~1k on 16 MiB parts (K is chosen to fit).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ir_jax.rewards.soft import _BIG, diagonal_cell

LANES = 128
SUBLANES = 8
_VMEM_BUDGET = 24 * 2 ** 20   # Pipelined blocks; carries come on top.


def _down(r, rows, fill):
  """r[i] -> r[i - 1] along rows, `fill` at i = 0."""
  return jnp.where(rows == 0, fill, pltpu.roll(r, 1, 0))


def _up(r, rows, last):
  """r[i] -> r[i + 1] along rows, 0 at the last row."""
  return jnp.where(rows == last, 0.0, pltpu.roll(r, r.shape[0] - 1, 0))


def _forward_kernel(c_ref, nm_ref, prm_ref, out_ref, ps_ref, pi_ref, pd_ref,
                    r2_ref, r1_ref):
  block, num_rows, tile = c_ref.shape
  k = pl.program_id(1)
  gamma, ins, dele = prm_ref[0], prm_ref[1], prm_ref[2]
  n, m = nm_ref[0:1, :], nm_ref[1:2, :]
  rows = lax.broadcasted_iota(jnp.int32, (num_rows, tile), 0)

  @pl.when(k == 0)
  def _():
    r2_ref[...] = jnp.full((num_rows, tile), _BIG, jnp.float32)
    r1_ref[...] = jnp.full((num_rows, tile), _BIG, jnp.float32)
    out_ref[...] = jnp.zeros((1, tile), jnp.float32)

  def body(t, carry):
    r2, r1, out = carry
    d = k * block + t
    r, (p_sub, p_ins, p_del) = diagonal_cell(
        _down(r2, rows, _BIG), _down(r1, rows, _BIG), r1,
        c_ref[t].astype(jnp.float32), d, rows, gamma, ins, dele)
    ps_ref[t], pi_ref[t], pd_ref[t] = p_sub, p_ins, p_del
    hit = (rows == n) & (d == n + m)
    out = out + jnp.sum(jnp.where(hit, r, 0.0), axis=0, keepdims=True)
    return r1, r, out

  r2, r1, out = lax.fori_loop(0, block, body,
                              (r2_ref[...], r1_ref[...], out_ref[...]))
  r2_ref[...], r1_ref[...], out_ref[...] = r2, r1, out


def _backward_kernel(ps_ref, pi_ref, pd_ref, nm_ref, g_ref, acc_ref,
                     q2s_ref, q1s_ref, q1i_ref, q1d_ref, ai_ref, ad_ref):
  block, num_rows, tile = ps_ref.shape
  k = pl.program_id(1)
  first = (pl.num_programs(1) - 1 - k) * block   # Diagonal of row 0 here.
  n, m = nm_ref[0:1, :], nm_ref[1:2, :]
  rows = lax.broadcasted_iota(jnp.int32, (num_rows, tile), 0)
  seed_at = rows == n
  carries = (q2s_ref, q1s_ref, q1i_ref, q1d_ref, ai_ref, ad_ref)

  @pl.when(k == 0)
  def _():
    for ref in carries:
      ref[...] = jnp.zeros((num_rows, tile), jnp.float32)

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


def padded_rows(num_pred: int) -> int:
  """Rows R of the skewed layout: N + 1 rounded up to the sublane count."""
  return -(-(num_pred + 1) // SUBLANES) * SUBLANES


def diagonal_block(num_rows: int, num_diag: int, budget: int = _VMEM_BUDGET
                   ) -> int:
  """K: diagonals per grid step so 2 x 4 pipelined [K, R, 128] f32 blocks
  fit the budget (at least 1, at most all diagonals)."""
  per_diag = 2 * 4 * num_rows * LANES * 4
  return int(max(1, min(num_diag, budget // per_diag, 64)))


def _vmem_limit(num_rows: int, block: int) -> int:
  plane = num_rows * LANES * 4
  need = 2 * 4 * block * plane + 16 * plane + 2 * 2 ** 20
  return int(min(max(need, 32 * 2 ** 20), 120 * 2 ** 20))


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


def _compiler_params(num_rows, block, interpret):
  if interpret is True:
    return None
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "arbitrary"),
      vmem_limit_bytes=_vmem_limit(num_rows, block))


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def forward(skewed, n, m, gamma, ins, dele, *, interpret, block=None):
  """skewed f32|bf16[D, R, B] costs (R = padded_rows(N)) -> (R[n, m] f32[B],
  probabilities 3 x f32[D', R, B] with D' = D rounded up to the block)."""
  num_diag, num_rows, batch = skewed.shape
  block = block or diagonal_block(num_rows, num_diag)
  blocks = -(-num_diag // block)
  lane = _lane_tile(batch)
  tiles = -(-batch // lane)
  skewed = _pad(_pad(skewed, 0, blocks * block), 2, tiles * lane)
  nm = _pad(jnp.stack([n, m]).astype(jnp.int32), 1, tiles * lane)
  prm = jnp.stack([gamma, ins, dele]).astype(jnp.float32)
  plane = jax.ShapeDtypeStruct((blocks * block, num_rows, tiles * lane),
                               jnp.float32)
  spec = pl.BlockSpec((block, num_rows, lane), lambda b, k: (k, 0, b))
  lanes = pl.BlockSpec((2, lane), lambda b, k: (0, b))
  out, *probs = pl.pallas_call(
      _forward_kernel,
      grid=(tiles, blocks),
      in_specs=[spec, lanes, pl.BlockSpec(memory_space=pltpu.SMEM)],
      out_specs=[pl.BlockSpec((1, lane), lambda b, k: (0, b)), spec, spec,
                 spec],
      out_shape=[jax.ShapeDtypeStruct((1, tiles * lane), jnp.float32),
                 plane, plane, plane],
      scratch_shapes=[pltpu.VMEM((num_rows, lane), jnp.float32)] * 2,
      compiler_params=_compiler_params(num_rows, block, interpret),
      interpret=interpret)(skewed, nm, prm)
  return out[0, :batch], tuple(p[..., :batch] for p in probs)


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def backward(probs, n, m, *, interpret, block=None):
  """Expected-alignment flows from `forward`'s probabilities:
  (substitution flows f32[D', R, B], dR/dins f32[B], dR/ddel f32[B])."""
  num_diag, num_rows, batch = probs[0].shape
  block = block or diagonal_block(num_rows, num_diag)
  if num_diag % block:
    raise ValueError(f"{num_diag} diagonals do not split into blocks of "
                     f"{block}; pass forward's block.")
  blocks = num_diag // block
  lane = _lane_tile(batch)
  tiles = -(-batch // lane)
  # Padded pairs get n = m = 0 and zero probabilities: no flow.
  probs = [_pad(p, 2, tiles * lane) for p in probs]
  nm = _pad(jnp.stack([n, m]).astype(jnp.int32), 1, tiles * lane)
  spec = pl.BlockSpec((block, num_rows, lane),
                      lambda b, k: (blocks - 1 - k, 0, b))
  flows, acc = pl.pallas_call(
      _backward_kernel,
      grid=(tiles, blocks),
      in_specs=[spec, spec, spec, pl.BlockSpec((2, lane), lambda b, k: (0, b))],
      out_specs=[spec, pl.BlockSpec((2, lane), lambda b, k: (0, b))],
      out_shape=[jax.ShapeDtypeStruct((num_diag, num_rows, tiles * lane),
                                      jnp.float32),
                 jax.ShapeDtypeStruct((2, tiles * lane), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((num_rows, lane), jnp.float32)] * 6,
      compiler_params=_compiler_params(num_rows, block, interpret),
      interpret=interpret)(*probs, nm)
  return flows[..., :batch], acc[0, :batch], acc[1, :batch]
