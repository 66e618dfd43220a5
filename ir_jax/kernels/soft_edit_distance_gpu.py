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
  * blocked mode: the forward keeps R[n, m] (a 128-float accumulator) and
    saves, per block, the two diagonals it starts from; the backward
    re-reads the block's costs, recomputes its softmin probabilities into
    SMEM from that checkpoint and runs the expected-alignment recursion over
    them in reverse. SMEM holds ~7 K + 16 rows of R floats, so K = 1 fits
    to R = 2048 (197 KiB measured by the lowering); K itself aims at
    ~96 KiB, two blocks per SM (untuned: not yet run on a GPU);
  * long mode, past that: the forward saves every diagonal R[d] (one plane
    in HBM, a third of the XLA wavefront's three probability planes) and
    the backward takes one diagonal a step, single-buffered, recomputing
    the probabilities chunk by chunk from R[d - 1] and R[d - 2] (saved
    blocks [R / 128 + 1, 128] whose pad row makes R[i - 1] of chunk c their
    row c; R[d - 1] also copied into one flat SMEM row, where R[i] is a load
    at offset 1) and using them at once: ~13 rows of R floats, N <=
    `max_pred_length()` = 4223 (~225 KiB of the 227 KiB a Hopper block may
    use; the lowering checks it).

The shorter sequence is on the rows (`soft_edit_distance` transposes), and
`ir_jax.rewards.soft_edit_distance` takes the XLA wavefront beyond the
bound. Pallas inserts a warpgroup barrier around every SMEM store (auto
barriers), which orders the ring buffers between diagonals.

The grid runs on `plgpu.kernel` through `gpu_grid.grid_call` (jax 0.10.2
and 0.12.x lower it). Off the GPU the kernels run in the Mosaic GPU
interpreter (jax >= 0.12; how the tests check them), and
`jax.export(..., platforms=["cuda"])` lowers them through Mosaic GPU from
any host (tests/kernels/test_soft_edit_distance_gpu.py does).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ir_jax.kernels.gpu_grid import grid_call
from ir_jax.kernels.recursions import BIG, diagonal_cell, diagonal_rows

CHUNK = 128                     # Rows per vector op: one f32 per thread.
PARAMS = 32                     # Scalars padded to 128 bytes (TMA granule).
_SMEM_LIMIT = 200 * 2 ** 10     # Blocked mode, of the 227 KiB a Hopper
                                # block may use (the lowering checks 227).
_SMEM_BUDGET = 96 * 2 ** 10     # K's target: two blocks per SM (untuned).
_LONG_LIMIT = 222 * 2 ** 10     # Long mode, one block per SM.


def padded_rows(num_pred: int) -> int:
  """Rows R of the layout: N + 1 rounded up to the chunk size."""
  return -(-(num_pred + 1) // CHUNK) * CHUNK


def _blocked_bytes(num_rows: int, block: int) -> int:
  """SMEM of the blocked backward (the larger pass) for K = `block`:
  costs and flows double-buffered (4 K rows of R floats), three
  probability planes (3 K), row ids x2, and with a pad chunk each: two
  checkpoints x2, the R ring (3) and the flow rings (7)."""
  return 4 * (num_rows * (7 * block + 2) + 14 * (num_rows + CHUNK))


def _long_bytes(num_rows: int) -> int:
  """SMEM of the long backward (one diagonal a step, single-buffered):
  costs, flows, row ids, and with a pad chunk R[d - 1] (as fetched and as
  one flat row), R[d - 2] and the seven flow-ring rows."""
  return 4 * (3 * num_rows + 10 * (num_rows + CHUNK))


def _is_long(num_rows: int):
  """False (blocked mode), True (long mode) or None (does not fit)."""
  if _blocked_bytes(num_rows, 1) <= _SMEM_LIMIT:
    return False
  if _long_bytes(num_rows) <= _LONG_LIMIT:
    return True
  return None


def diagonal_block(num_rows: int, num_diag: int,
                   budget: int = _SMEM_BUDGET) -> int:
  """K: diagonals per grid step so the blocked backward's SMEM fits."""
  block = 1
  while block < min(num_diag, 64) and _blocked_bytes(num_rows,
                                                     block + 1) <= budget:
    block += 1
  return block


def max_pred_length() -> int:
  """Longest shorter-side sequence the kernels take (long mode)."""
  rows = CHUNK
  while _is_long(rows + CHUNK) is not None:
    rows += CHUNK
  return rows - 1


def _check_fits(num_rows):
  if _is_long(num_rows) is None:
    raise ValueError(
        f"Sequences of {num_rows - 1} tokens (the shorter side) do not fit "
        f"the GPU kernel's shared memory (at most {max_pred_length()}); use "
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
  of buf_ref [3, R + CHUNK] at rows 1..R (row 0 stays `BIG`, the
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


def _ring_io(saved_ref, prefix, buf_ref, slots, save):
  """Copies ring slots (whole, pad row included: [R + CHUNK] flat) to or
  from saved_ref[*prefix, j] ([R / CHUNK + 1, CHUNK] each)."""
  def chunk(c):
    ring = pl.ds(c * CHUNK, CHUNK)
    for j, slot in enumerate(slots):
      if save:
        saved_ref[(*prefix, j, c)] = buf_ref[slot, ring]
      else:
        buf_ref[slot, ring] = saved_ref[(*prefix, j, c)]

  _chunks(buf_ref.shape[1] // CHUNK, chunk)


def _forward_kernel(k, num_k, c_ref, nm_ref, rows_ref, prm_ref, out_ref,
                    saved_ref, buf_ref, final_ref, *, long):
  """Blocked mode saves, per block, the two diagonals it starts from; long
  mode (K = 1) saves every diagonal R[d] after computing it."""
  _, block, _, _ = c_ref.shape
  n, final = nm_ref[0, 0], nm_ref[0, 0] + nm_ref[0, 1]
  first = k * block

  @pl.when(k == 0)
  def _():
    _fill(buf_ref, BIG)
    final_ref[...] = jnp.zeros((CHUNK,), jnp.float32)

  if not long:
    _ring_io(saved_ref, (0, 0), buf_ref, ((first + 1) % 3, (first + 2) % 3),
             save=True)

  def keep_final(t, d, c, rows, r, p):
    del t, c, p

    @pl.when(d == final)
    def _():
      final_ref[...] = final_ref[...] + jnp.where(rows == n, r, 0.0)

  _wavefront(c_ref, first, buf_ref, rows_ref, prm_ref, keep_final)
  if long:
    _ring_io(saved_ref, (0,), buf_ref, (first % 3,), save=True)

  # Index-invariant outputs are copied out after the last step: write them
  # then.
  @pl.when(k == num_k - 1)
  def _():
    out_ref[0] = final_ref[...]


def _flow_chunk(c, d, rows, probs, n, m, qs_ref, qi_ref, qd_ref, acc_ref):
  """The expected-alignment step for one chunk of diagonal d: E from the
  flow rings (E[i + 1] of d + 1, d + 2 read one row down), the seed at
  (n, m), the three flows into the rings; returns the substitution flow."""
  here = pl.ds(c * CHUNK, CHUNK)
  below = pl.ds(c * CHUNK + 1, CHUNK)
  e = (qs_ref[(d + 2) % 3, below] + qi_ref[(d + 1) % 2, below] +
       qd_ref[(d + 1) % 2, here])
  e = e + ((rows == n) & (d == n + m)).astype(jnp.float32)
  q_sub, q_ins, q_del = (e * p for p in probs)
  qs_ref[d % 3, here] = q_sub
  qi_ref[d % 2, here] = q_ins
  qd_ref[d % 2, here] = q_del
  acc_ref[0] = acc_ref[0] + q_ins
  acc_ref[1] = acc_ref[1] + q_del
  return q_sub


def _init_flows(qs_ref, qi_ref, qd_ref, acc_ref):
  # E of diagonals d + 1, d + 2 at rows 0..R-1, zeros beyond (the E[i + 1]
  # of the last row).
  for ref in (qs_ref, qi_ref, qd_ref):
    _fill(ref, 0.0)
  acc_ref[...] = jnp.zeros((2, CHUNK), jnp.float32)


def _backward_kernel(k, num_k, c_ref, ckpt_ref, nm_ref, rows_ref, prm_ref,
                     g_ref, acc_out_ref, buf_ref, ps_ref, pi_ref, pd_ref,
                     qs_ref, qi_ref, qd_ref, acc_ref):
  _, block, num_chunks, _ = c_ref.shape
  first = (num_k - 1 - k) * block   # Diagonal of slot 0 here.
  n, m = nm_ref[0, 0], nm_ref[0, 1]

  @pl.when(k == 0)
  def _():
    _init_flows(qs_ref, qi_ref, qd_ref, acc_ref)

  # Recompute this block's probabilities into SMEM from its checkpoint.
  _ring_io(ckpt_ref, (0, 0), buf_ref, ((first + 1) % 3, (first + 2) % 3),
           save=False)

  def keep_probs(t, d, c, rows, r, p):
    del d, rows, r
    for ref, value in zip((ps_ref, pi_ref, pd_ref), p):
      ref[t, c] = value

  _wavefront(c_ref, first, buf_ref, rows_ref, prm_ref, keep_probs)

  def diagonal(s, _):
    t = block - 1 - s
    d = first + t

    def chunk(c):
      probs = (ps_ref[t, c], pi_ref[t, c], pd_ref[t, c])
      g_ref[0, t, c] = _flow_chunk(c, d, rows_ref[c], probs, n, m, qs_ref,
                                   qi_ref, qd_ref, acc_ref)

    _chunks(num_chunks, chunk)

  lax.fori_loop(0, block, diagonal, None)

  @pl.when(k == num_k - 1)
  def _():
    acc_out_ref[0] = acc_ref[...]


def _backward_long_kernel(k, num_k, c_ref, r1_ref, r2_ref, nm_ref, rows_ref,
                          prm_ref, g_ref, acc_out_ref, qs_ref, qi_ref, qd_ref,
                          acc_ref, flat_ref):
  """One diagonal d a step, probabilities recomputed chunk by chunk from
  the saved R[d - 1], R[d - 2] (with the pad row, R[i - 1] of chunk c is
  row c of the fetched [R / 128 + 1, 128] block; R[i], one row further,
  is read from R[d - 1] copied into one flat SMEM row) and used at once."""
  _, _, num_chunks, _ = c_ref.shape
  d = num_k - 1 - k
  n, m = nm_ref[0, 0], nm_ref[0, 1]
  gamma, ins, dele = prm_ref[0], prm_ref[1], prm_ref[2]

  @pl.when(k == 0)
  def _():
    _init_flows(qs_ref, qi_ref, qd_ref, acc_ref)

  def flatten(c):
    flat_ref[pl.ds(c * CHUNK, CHUNK)] = r1_ref[0, 0, c]

  _chunks(num_chunks + 1, flatten)

  def chunk(c):
    lo = c * CHUNK
    rows = rows_ref[c]
    # R[-1], R[-2] are BIG. (d as a vector from the loaded row ids: a
    # scalar condition has no layout to broadcast under Mosaic GPU.)
    dv = rows * 0 + d
    big = lambda x, back: jnp.where(dv >= back, x, BIG)
    _, probs = diagonal_cell(
        big(r2_ref[0, 0, c], 2), big(r1_ref[0, 0, c], 1),
        big(flat_ref[pl.ds(lo + 1, CHUNK)], 1),
        c_ref[0, 0, c].astype(jnp.float32), d, rows, gamma, ins, dele)
    g_ref[0, 0, c] = _flow_chunk(c, d, rows, probs, n, m, qs_ref, qi_ref,
                                 qd_ref, acc_ref)

  _chunks(num_chunks, chunk)

  @pl.when(k == num_k - 1)
  def _():
    acc_out_ref[0] = acc_ref[...]


def skew(costs, num_rows, num_diag):
  """costs [B, N, M] -> [B, D, R] pair-major skew: row i of diagonal d holds
  costs[i - 1, d - i - 1] (zero off the grid); one gather."""
  batch, num_pred, num_target = costs.shape
  flat = jnp.concatenate([costs.reshape(batch, num_pred * num_target),
                          jnp.zeros((batch, 1), costs.dtype)], axis=1)
  return flat[:, diagonal_rows(num_rows, num_diag, num_pred, num_target)]


def unskew(flows, num_pred, num_target):
  """Inverse of `skew` on the grid: [B, D, R] -> [B, N, M]."""
  i = jnp.arange(num_pred)[:, None]
  j = jnp.arange(num_target)[None, :]
  return flows[:, i + j + 2, i + 1]


def _layout(num_pred, num_target, block, long):
  """(R, K, blocks, long): long mode when the blocked backward does not
  fit (or `long=True`), with K = 1."""
  num_rows = padded_rows(num_pred)
  _check_fits(num_rows)
  long = _is_long(num_rows) if long is None else long
  num_diag = num_rows + num_target
  if long:
    block = 1
  block = block or diagonal_block(num_rows, num_diag)
  return num_rows, block, -(-num_diag // block), long


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


@functools.partial(jax.jit, static_argnames=("interpret", "block", "long"))
def forward(costs, n, m, gamma, ins, dele, *, interpret, block=None,
            long=None):
  """costs [B, N, M] (f32 or bf16) -> (R[n, m] f32[B], saved diagonals):
  blocked mode f32[B, blocks, 2, R / 128 + 1, 128], the two diagonals each
  block of K starts from; long mode f32[B, D, R / 128 + 1, 128], every
  diagonal (row i at flat index i + 1, `BIG` around)."""
  batch, num_pred, num_target = costs.shape
  num_rows, block, blocks, long = _layout(num_pred, num_target, block, long)
  chunks = num_rows // CHUNK
  if long:
    saved = pl.BlockSpec((1, 1, chunks + 1, CHUNK), lambda b, k: (b, k, 0, 0))
    saved_shape = (batch, blocks, chunks + 1, CHUNK)
  else:
    saved = pl.BlockSpec((1, 1, 2, chunks + 1, CHUNK),
                         lambda b, k: (b, k, 0, 0, 0))
    saved_shape = (batch, blocks, 2, chunks + 1, CHUNK)
  out, saved = grid_call(
      functools.partial(_forward_kernel, long=long),
      grid=(batch, blocks),
      in_specs=[pl.BlockSpec((1, block, chunks, CHUNK),
                             lambda b, k: (b, k, 0, 0))]
      + _common_specs(chunks),
      out_specs=[pl.BlockSpec((1, CHUNK), lambda b, k: (b, 0)), saved],
      out_shape=[jax.ShapeDtypeStruct((batch, CHUNK), jnp.float32),
                 jax.ShapeDtypeStruct(saved_shape, jnp.float32)],
      scratch_shapes=[plgpu.SMEM((3, num_rows + CHUNK), jnp.float32),
                      plgpu.SMEM((CHUNK,), jnp.float32)],
      interpret=interpret, name="soft_edit_distance_forward")(
          *_inputs(costs, n, m, gamma, ins, dele, num_rows, blocks * block))
  return out.sum(-1), saved


@functools.partial(jax.jit, static_argnames=("interpret", "block", "long"))
def backward(costs, saved, n, m, gamma, ins, dele, *, interpret, block=None,
             long=None):
  """Expected-alignment flows from `forward`'s saved diagonals (same
  `costs`, `block` and `long`): (dR/dcosts f32[B, N, M], dR/dins f32[B],
  dR/ddel f32[B])."""
  batch, num_pred, num_target = costs.shape
  num_rows, block, blocks, long = _layout(num_pred, num_target, block, long)
  chunks = num_rows // CHUNK
  skewed, nm, rows, prm = _inputs(costs, n, m, gamma, ins, dele, num_rows,
                                  blocks * block)
  ring = lambda slots: plgpu.SMEM((slots, num_rows + CHUNK), jnp.float32)
  flow_rings = [ring(3), ring(2), ring(2), plgpu.SMEM((2, CHUNK),
                                                      jnp.float32)]
  spec = pl.BlockSpec((1, block, chunks, CHUNK),
                      lambda b, k: (b, blocks - 1 - k, 0, 0))
  acc_spec = pl.BlockSpec((1, 2, CHUNK), lambda b, k: (b, 0, 0))
  out_shape = [jax.ShapeDtypeStruct((batch, blocks * block, chunks, CHUNK),
                                    jnp.float32),
               jax.ShapeDtypeStruct((batch, 2, CHUNK), jnp.float32)]
  if long:
    diag = lambda back: pl.BlockSpec(
        (1, 1, chunks + 1, CHUNK),
        lambda b, k: (b, jnp.maximum(blocks - 1 - back - k, 0), 0, 0))
    flows, acc = grid_call(
        _backward_long_kernel,
        grid=(batch, blocks),
        in_specs=[spec, diag(1), diag(2)] + _common_specs(chunks),
        out_specs=[spec, acc_spec], out_shape=out_shape,
        scratch_shapes=flow_rings + [plgpu.SMEM((num_rows + CHUNK,),
                                                jnp.float32)],
        stages=1, interpret=interpret,
        name="soft_edit_distance_backward_long")(
            skewed, saved, saved, nm, rows, prm)
  else:
    plane = plgpu.SMEM((block, chunks, CHUNK), jnp.float32)
    flows, acc = grid_call(
        _backward_kernel,
        grid=(batch, blocks),
        in_specs=[spec, pl.BlockSpec(
            (1, 1, 2, chunks + 1, CHUNK),
            lambda b, k: (b, blocks - 1 - k, 0, 0, 0))]
        + _common_specs(chunks),
        out_specs=[spec, acc_spec], out_shape=out_shape,
        scratch_shapes=[ring(3), plane, plane, plane] + flow_rings,
        interpret=interpret, name="soft_edit_distance_backward")(
            skewed, saved, nm, rows, prm)
  acc = acc.sum(-1)
  flows = flows.reshape(batch, blocks * block, num_rows)
  return unskew(flows, num_pred, num_target), acc[:, 0], acc[:, 1]
