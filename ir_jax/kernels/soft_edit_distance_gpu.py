"""Mosaic GPU kernels (Hopper and newer) for the soft edit distance wavefront.

Same recursion (the shared `diagonal_cell`), length semantics and algorithm
as the Mosaic TPU kernels in `soft_edit_distance.py`; only the layout
differs, because a GPU thread block has no vector rotate and wants many
independent programs:

  * one pair per program (CUDA block of one warpgroup, 128 threads), so a
    batch of B pairs is B blocks spread over the SMs; the costs are skewed
    pair-major, `skewed[b, d, i] = costs[b, i - 1, d - i - 1]` (rows i of
    diagonal d contiguous), R rows padded to a multiple of 128;
  * the grid's second axis walks the diagonals in blocks of K (sequential:
    `plgpu.emit_pipeline` double-buffers the next block's costs into SMEM
    with TMA while the current block runs);
  * the live diagonals sit in SMEM ring buffers with a pad row, so the
    shifted neighbours R[i - 1] and E[i + 1] are plain loads at row offset
    -1 / +1 (a 128-row chunk per vector op, one f32 per thread);
  * forward writes the diagonal holding R[n, m] and, per block, the two
    diagonals it starts from; the backward re-reads the block's costs,
    recomputes its softmin probabilities into SMEM from that checkpoint
    and runs the expected-alignment recursion over them in reverse.

SMEM bounds the length: the backward keeps ~7 K + 22 rows of R floats, so
N <= `max_pred_length()` (1663 within 200 KiB of the 227 KiB a Hopper block
may use) at K = 1; `ir_jax.rewards.soft_edit_distance` falls back to XLA
beyond it. K itself aims at ~96 KiB, two blocks per SM (untuned: no device
has run this yet). Pallas inserts a warpgroup barrier around every SMEM
store (auto barriers), which orders the ring buffers between diagonals.

Off the GPU the kernels run in Pallas interpret mode (how the tests check
them), and `jax.export(..., platforms=["cuda"])` lowers them through Mosaic
GPU from any host (tests/test_kernels.py does). `pl.pallas_call` with
Mosaic GPU params is deprecated upstream in favour of `plgpu.kernel`; it is
kept because the generic interpret mode runs it.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ir_jax.rewards.soft import _BIG, diagonal_cell

CHUNK = 128                     # Rows per vector op: one f32 per thread.
PARAMS = 32                     # Scalars padded to 128 bytes (TMA granule).
_SMEM_LIMIT = 200 * 2 ** 10     # Of the 227 KiB a Hopper block may use.
_SMEM_BUDGET = 96 * 2 ** 10     # K's target: two blocks per SM (untuned).


def padded_rows(num_pred: int) -> int:
  """Rows R of the layout: N + 1 rounded up to the chunk size."""
  return -(-(num_pred + 1) // CHUNK) * CHUNK


def _smem_rows(block: int) -> int:
  """f32 rows of R floats the backward keeps in SMEM for K = `block`:
  costs and flows double-buffered (4 K), three probability planes (3 K),
  two checkpoints x2, accumulators x2 (out) + 2 (scratch), row ids x2,
  3 + 7 ring buffers (each one chunk longer, counted as +1 row)."""
  return 7 * block + 22


def diagonal_block(num_rows: int, num_diag: int,
                   budget: int = _SMEM_BUDGET) -> int:
  """K: diagonals per grid step so the backward's SMEM fits the budget."""
  return int(max(1, min(num_diag, 64,
                        (budget // (4 * num_rows) - 22) // 7)))


def max_pred_length(budget: int = _SMEM_LIMIT) -> int:
  """Longest prediction whose backward fits SMEM with K = 1."""
  rows = budget // (4 * _smem_rows(1)) // CHUNK * CHUNK
  return rows - 1


def _check_fits(num_rows):
  if 4 * num_rows * _smem_rows(1) > _SMEM_LIMIT:
    raise ValueError(
        f"Predictions of {num_rows - 1} tokens do not fit the GPU kernel's "
        f"shared memory (at most {max_pred_length()}); use "
        "implementation='xla' (or 'auto', which does).")


def _params(n, m, gamma, ins, dele, batch):
  """int32[B, 32] (n, m per pair) and f32[32] (gamma, ins, dele)."""
  nm = jnp.zeros((batch, PARAMS), jnp.int32)
  nm = nm.at[:, 0].set(n.astype(jnp.int32)).at[:, 1].set(m.astype(jnp.int32))
  prm = jnp.zeros((PARAMS,), jnp.float32).at[:3].set(
      jnp.stack([gamma, ins, dele]).astype(jnp.float32))
  return nm, prm


def _fill(ref, value):
  """Fills a [S, rows] SMEM ring buffer chunk by chunk."""
  for slot in range(ref.shape[0]):
    def body(c, _, slot=slot):
      ref[slot, pl.ds(c * CHUNK, CHUNK)] = jnp.full((CHUNK,), value,
                                                    jnp.float32)
    lax.fori_loop(0, ref.shape[1] // CHUNK, body, None)


def _chunks(num_chunks, fn):
  """Runs fn(c) for the row chunks [c CHUNK, (c + 1) CHUNK) of a diagonal
  (HBM blocks hold rows as [R / CHUNK, CHUNK]: a TMA box is <= 256 wide)."""
  lax.fori_loop(0, num_chunks, lambda c, _: fn(c), None)


def _wavefront(c_ref, first, buf_ref, rows_ref, prm_ref, on_chunk):
  """Runs the K diagonals of a block; diagonal d lives in ring slot d % 3
  of buf_ref [3, R + CHUNK] at rows 1..R (row 0 stays `_BIG`, the
  off-grid R[-1]). on_chunk(t, d, c, rows, r, probs) sees every chunk."""
  _, block, num_chunks, _ = c_ref.shape
  gamma, ins, dele = prm_ref[0], prm_ref[1], prm_ref[2]

  def diagonal(t, _):
    d = first + t
    new, prev, prev2 = d % 3, (d + 2) % 3, (d + 1) % 3

    def chunk(c):
      lo = c * CHUNK
      rows = rows_ref[c]
      r, p = diagonal_cell(buf_ref[prev2, pl.ds(lo, CHUNK)],
                           buf_ref[prev, pl.ds(lo, CHUNK)],
                           buf_ref[prev, pl.ds(lo + 1, CHUNK)],
                           c_ref[0, t, c].astype(jnp.float32),
                           d, rows, gamma, ins, dele)
      buf_ref[new, pl.ds(lo + 1, CHUNK)] = r
      on_chunk(t, d, c, rows, r, p)

    _chunks(num_chunks, chunk)

  lax.fori_loop(0, block, diagonal, None)


def _checkpoint_io(ckpt_ref, buf_ref, first, num_chunks, save):
  """Copies diagonals first - 2 and first - 1 between the ring and the
  block's checkpoint [1, 1, 2, R / CHUNK, CHUNK] (save: ring -> it)."""
  slots = ((first + 1) % 3, (first + 2) % 3)

  def chunk(c):
    ring = pl.ds(c * CHUNK + 1, CHUNK)
    for k, slot in enumerate(slots):
      if save:
        ckpt_ref[0, 0, k, c] = buf_ref[slot, ring]
      else:
        buf_ref[slot, ring] = ckpt_ref[0, 0, k, c]

  _chunks(num_chunks, chunk)


def _forward_kernel(c_ref, nm_ref, rows_ref, prm_ref, out_ref, ckpt_ref,
                    buf_ref, final_ref):
  _, block, num_chunks, _ = c_ref.shape
  k = pl.program_id(1)
  final = nm_ref[0, 0] + nm_ref[0, 1]

  @pl.when(k == 0)
  def _():
    _fill(buf_ref, _BIG)

  first = k * block
  _checkpoint_io(ckpt_ref, buf_ref, first, num_chunks, save=True)

  def keep_final(t, d, c, rows, r, p):
    del t, rows, p

    @pl.when(d == final)
    def _():
      final_ref[c] = r

  _wavefront(c_ref, first, buf_ref, rows_ref, prm_ref, keep_final)

  # Index-invariant outputs are copied out after the last step, from the
  # last step's pipeline slot: write them then.
  @pl.when(k == pl.num_programs(1) - 1)
  def _():
    _chunks(num_chunks,
            lambda c: out_ref.__setitem__((0, c), final_ref[c]))


def _backward_kernel(c_ref, ckpt_ref, nm_ref, rows_ref, prm_ref, g_ref,
                     acc_out_ref, buf_ref, ps_ref, pi_ref, pd_ref, qs_ref,
                     qi_ref, qd_ref, acc_ref):
  _, block, num_chunks, _ = c_ref.shape
  k = pl.program_id(1)
  first = (pl.num_programs(1) - 1 - k) * block   # Diagonal of slot 0 here.
  n, m = nm_ref[0, 0], nm_ref[0, 1]

  @pl.when(k == 0)
  def _():
    _fill(buf_ref, _BIG)
    # Flow rings: E of diagonals d + 1, d + 2 at rows 0..R-1, zeros beyond
    # (the E[i + 1] of the last row).
    for ref in (qs_ref, qi_ref, qd_ref):
      _fill(ref, 0.0)
    _chunks(num_chunks, lambda c: acc_ref.__setitem__(
        (slice(None), c), jnp.zeros((2, CHUNK), jnp.float32)))

  # Recompute this block's probabilities into SMEM from its checkpoint.
  _checkpoint_io(ckpt_ref, buf_ref, first, num_chunks, save=False)

  def keep_probs(t, d, c, rows, r, p):
    del d, rows, r
    for ref, value in zip((ps_ref, pi_ref, pd_ref), p):
      ref[t, c] = value

  _wavefront(c_ref, first, buf_ref, rows_ref, prm_ref, keep_probs)

  def diagonal(s, _):
    t = block - 1 - s
    d = first + t

    def chunk(c):
      rows, here, below = rows_ref[c], pl.ds(c * CHUNK, CHUNK), pl.ds(
          c * CHUNK + 1, CHUNK)
      e = (qs_ref[(d + 2) % 3, below] + qi_ref[(d + 1) % 2, below] +
           qd_ref[(d + 1) % 2, here])
      e = e + ((rows == n) & (d == n + m)).astype(jnp.float32)
      q_sub, q_ins, q_del = e * ps_ref[t, c], e * pi_ref[t, c], e * pd_ref[t, c]
      qs_ref[d % 3, here] = q_sub
      qi_ref[d % 2, here] = q_ins
      qd_ref[d % 2, here] = q_del
      g_ref[0, t, c] = q_sub
      acc_ref[0, c] = acc_ref[0, c] + q_ins
      acc_ref[1, c] = acc_ref[1, c] + q_del

    _chunks(num_chunks, chunk)

  lax.fori_loop(0, block, diagonal, None)

  @pl.when(k == pl.num_programs(1) - 1)
  def _():
    def chunk(c):
      for j in range(2):
        acc_out_ref[0, j, c] = acc_ref[j, c]
    _chunks(num_chunks, chunk)


def skew(costs, num_rows, num_diag):
  """costs [B, N, M] -> [B, D, R] pair-major skew: row i of diagonal d holds
  costs[i - 1, d - i - 1] (zero off the grid); one gather."""
  from ir_jax.rewards.soft import _diagonal_rows
  batch, num_pred, num_target = costs.shape
  flat = jnp.concatenate([costs.reshape(batch, num_pred * num_target),
                          jnp.zeros((batch, 1), costs.dtype)], axis=1)
  return flat[:, _diagonal_rows(num_rows, num_diag, num_pred, num_target)]


def unskew(flows, num_pred, num_target):
  """Inverse of `skew` on the grid: [B, D, R] -> [B, N, M]."""
  i = jnp.arange(num_pred)[:, None]
  j = jnp.arange(num_target)[None, :]
  return flows[:, i + j + 2, i + 1]


def _layout(num_pred, num_target, block):
  num_rows = padded_rows(num_pred)
  _check_fits(num_rows)
  num_diag = num_rows + num_target
  block = block or diagonal_block(num_rows, num_diag)
  return num_rows, block, -(-num_diag // block)


def _compiler_params(interpret):
  if interpret:
    return None
  return plgpu.CompilerParams(dimension_semantics=("parallel", "sequential"),
                              max_concurrent_steps=2)


def _chunked(x, num_rows):
  """[..., R] -> [..., R / CHUNK, CHUNK] (row chunks; TMA boxes <= 256)."""
  return x.reshape(*x.shape[:-1], num_rows // CHUNK, CHUNK)


def _inputs(costs, n, m, gamma, ins, dele, num_rows, num_diag):
  """Skewed, chunked costs [B, D, R / C, C], n/m int32[B, 32], row ids
  int32[R / C, C], gamma/ins/del f32[32]."""
  batch = costs.shape[0]
  nm, prm = _params(n, m, gamma, ins, dele, batch)
  rows = jnp.arange(num_rows, dtype=jnp.int32)
  return (_chunked(skew(costs, num_rows, num_diag), num_rows), nm,
          _chunked(rows, num_rows), prm)


def _common_specs(num_chunks):
  return [pl.BlockSpec((1, PARAMS), lambda b, k: (b, 0)),          # n, m
          pl.BlockSpec((num_chunks, CHUNK), lambda b, k: (0, 0)),  # row ids
          pl.BlockSpec((PARAMS,), lambda b, k: (0,))]        # gamma, ins, del


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def forward(costs, n, m, gamma, ins, dele, *, interpret, block=None):
  """costs [B, N, M] (f32 or bf16) -> (R[n, m] f32[B], checkpoints
  f32[B, blocks, 2, R / 128, 128]: the two diagonals each block of K
  starts from)."""
  batch, num_pred, num_target = costs.shape
  num_rows, block, blocks = _layout(num_pred, num_target, block)
  chunks = num_rows // CHUNK
  out, ckpt = pl.pallas_call(
      _forward_kernel,
      grid=(batch, blocks),
      in_specs=[pl.BlockSpec((1, block, chunks, CHUNK),
                             lambda b, k: (b, k, 0, 0))]
      + _common_specs(chunks),
      out_specs=[pl.BlockSpec((1, chunks, CHUNK), lambda b, k: (b, 0, 0)),
                 pl.BlockSpec((1, 1, 2, chunks, CHUNK),
                              lambda b, k: (b, k, 0, 0, 0))],
      out_shape=[jax.ShapeDtypeStruct((batch, chunks, CHUNK), jnp.float32),
                 jax.ShapeDtypeStruct((batch, blocks, 2, chunks, CHUNK),
                                      jnp.float32)],
      scratch_shapes=[plgpu.SMEM((3, num_rows + CHUNK), jnp.float32),
                      plgpu.SMEM((chunks, CHUNK), jnp.float32)],
      compiler_params=_compiler_params(interpret),
      interpret=interpret)(*_inputs(costs, n, m, gamma, ins, dele, num_rows,
                                    blocks * block))
  value = jnp.take_along_axis(out.reshape(batch, num_rows),
                              n.astype(jnp.int32)[:, None], axis=1)
  return value[:, 0], ckpt


@functools.partial(jax.jit, static_argnames=("interpret", "block"))
def backward(costs, ckpt, n, m, gamma, ins, dele, *, interpret, block=None):
  """Expected-alignment flows from `forward`'s checkpoints (same `costs`
  and `block`): (dR/dcosts f32[B, N, M], dR/dins f32[B], dR/ddel f32[B])."""
  batch, num_pred, num_target = costs.shape
  num_rows, block, blocks = _layout(num_pred, num_target, block)
  chunks = num_rows // CHUNK
  spec = pl.BlockSpec((1, block, chunks, CHUNK),
                      lambda b, k: (b, blocks - 1 - k, 0, 0))
  ring = lambda slots: plgpu.SMEM((slots, num_rows + CHUNK), jnp.float32)
  plane = plgpu.SMEM((block, chunks, CHUNK), jnp.float32)
  skewed, nm, rows, prm = _inputs(costs, n, m, gamma, ins, dele, num_rows,
                                  blocks * block)
  flows, acc = pl.pallas_call(
      _backward_kernel,
      grid=(batch, blocks),
      in_specs=[spec, pl.BlockSpec((1, 1, 2, chunks, CHUNK),
                                   lambda b, k: (b, blocks - 1 - k, 0, 0, 0))]
      + _common_specs(chunks),
      out_specs=[spec, pl.BlockSpec((1, 2, chunks, CHUNK),
                                    lambda b, k: (b, 0, 0, 0))],
      out_shape=[jax.ShapeDtypeStruct((batch, blocks * block, chunks, CHUNK),
                                      jnp.float32),
                 jax.ShapeDtypeStruct((batch, 2, chunks, CHUNK),
                                      jnp.float32)],
      scratch_shapes=[ring(3), plane, plane, plane, ring(3), ring(2),
                      ring(2), plgpu.SMEM((2, chunks, CHUNK), jnp.float32)],
      compiler_params=_compiler_params(interpret),
      interpret=interpret)(skewed, ckpt, nm, rows, prm)
  acc = acc.sum((-2, -1))
  flows = flows.reshape(batch, blocks * block, num_rows)
  return unskew(flows, num_pred, num_target), acc[:, 0], acc[:, 1]
