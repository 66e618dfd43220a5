"""Pallas kernel for the exact bit-parallel Levenshtein distance (TPU, GPU).

Why a kernel: `ir_jax.rewards.levenshtein` is Myers' bit-vector algorithm,
N prediction steps x W = ceil(M / 32) words, each ~15 integer ops over the
batch. Its inputs are token ids, so at memory bandwidth it would take
microseconds; as an XLA loop it is N x W dependent steps of a few tiny ops,
each a loop iteration with its own launch/sync cost on an accelerator (B=512,
N=M=1024: 32k iterations). The kernel runs the whole step x word chain in
on-chip memory, one program per tile of pairs.

Layout: pairs on a [P, 128] tile (P <= 8 sublanes x 128 lanes on TPU; on
GPU P = 1, a pair per thread of a 128-thread block); the match masks
`eq[i, w]` (which target rows of word w equal pred[i]) are built in XLA,
one fused compare, and streamed in blocks of K steps (the sequential grid
axis) while the vertical delta words pv/mv (int32[W, P, 128]) and the score
stay in scratch memory (VMEM / SMEM). The word update is the XLA path's
`recursions.advance_block` on int32 words (logical shifts: identical bits to
its uint32 words).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.experimental.pallas import tpu as pltpu

from ir_jax.kernels.gpu_grid import grid_call
from ir_jax.kernels.recursions import advance_block

LANES = 128
WORD = 32
_BUDGET = {"tpu": 8 * 2 ** 20,      # eq blocks (double-buffered) per program.
           "gpu": 64 * 2 ** 10}
# On-chip memory for pv, mv and two eq blocks of one step (4 words per
# tile): 200 KiB of a Hopper block's SMEM, 56 MiB of VMEM (v5p has 64).
_ON_CHIP = {"gpu": 200 * 2 ** 10, "tpu": 56 * 2 ** 20}


def _srl(x, bits):
  return lax.shift_right_logical(x, jnp.asarray(bits, x.dtype))


def _kernel(k, num_k, eq_ref, meta_ref, out_ref, pv_ref, mv_ref, score_ref):
  """Grid step k of num_k (the sequential axis): K steps of the chain."""
  block, num_words = eq_ref.shape[:2]
  n, last_word, last_bit = meta_ref[0], meta_ref[1], meta_ref[2]

  @pl.when(k == 0)
  def _():
    pv_ref[...] = jnp.full(pv_ref.shape, -1, jnp.int32)
    mv_ref[...] = jnp.zeros(mv_ref.shape, jnp.int32)
    score_ref[...] = meta_ref[3]   # m: D[0, m].

  def step(t, _):
    active = k * block + t < n

    def word(w, carry):
      hin, delta = carry
      pv, mv, ph, mh, hout = advance_block(pv_ref[w], mv_ref[w],
                                            eq_ref[t, w], hin)
      pv_ref[w] = jnp.where(active, pv, pv_ref[w])
      mv_ref[w] = jnp.where(active, mv, mv_ref[w])
      bit = (_srl(ph, last_bit) & 1) - (_srl(mh, last_bit) & 1)
      return hout, delta + jnp.where(last_word == w, bit, 0)

    # D[i, 0] = i: +1 enters every column. (Derived from a loaded value so
    # that, on GPU, the loop carry keeps the loaded array's layout.)
    zeros = 0 * n
    _, delta = lax.fori_loop(0, num_words, word, (zeros + 1, zeros))
    score_ref[...] = score_ref[...] + jnp.where(active, delta, 0)

  lax.fori_loop(0, block, step, None)

  @pl.when(k == num_k - 1)
  def _():
    out_ref[...] = score_ref[...]


def _grid_kernel(*refs):
  """`_kernel` under pl.pallas_call (TPU): the step from the grid."""
  _kernel(pl.program_id(1), pl.num_programs(1), *refs)


def match_masks(pred, target, num_words):
  """eq int32[N, W, B]: bit b of word w set where target[32 w + b] equals
  pred[i] (padding columns never match: m bounds the score row)."""
  batch, num_target = target.shape
  words = jnp.pad(target, ((0, 0), (0, num_words * WORD - num_target)),
                  constant_values=-1).reshape(batch, num_words, WORD)
  hits = pred.T[:, :, None, None] == words[None]            # [N, B, W, 32]
  shifts = jnp.arange(WORD, dtype=jnp.uint32)
  eq = jnp.sum(hits.astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)
  return lax.bitcast_convert_type(eq, jnp.int32).transpose(0, 2, 1)


def _tile(batch, platform):
  """Rows P of a [P, 128] tile of pairs and the padded batch: up to 8
  sublanes on TPU; one row on GPU (a pair per thread of a 128-thread
  block, more blocks over the SMs)."""
  rows = -(-batch // LANES)
  sub = min(rows, 8 if platform == "tpu" else 1)
  return sub, -(-rows // sub) * sub * LANES


def max_target_length(platform: str) -> int:
  """Longest target the kernel takes: pv/mv and two eq blocks of one step
  on chip (a widest [8, 128] tile on TPU, one 128-pair row on GPU), and on
  GPU at most 256 words (a TMA box)."""
  words = _ON_CHIP[platform] // (4 * _tile(LANES * 8, platform)[0] * LANES *
                                 4)
  return (min(words, 256) if platform == "gpu" else words) * WORD


def _compiler_params(interpret, vmem_bytes):
  if interpret:
    return None
  return pltpu.CompilerParams(
      dimension_semantics=("parallel", "arbitrary"),
      vmem_limit_bytes=int(min(max(vmem_bytes + 4 * 2 ** 20, 32 * 2 ** 20),
                               60 * 2 ** 20)))


@functools.partial(jax.jit, static_argnames=("platform", "interpret", "block"))
def levenshtein(pred, target, n, m, *, platform="tpu", interpret=False,
                block=None):
  """pred int[B, N], target int[B, M] (N, M >= 1), n/m int32[B] clamped
  lengths -> int32[B] = ED(pred[:n], target[:m]). `platform` picks the
  scratch memory space ("tpu": VMEM, "gpu": SMEM)."""
  batch, num_pred = pred.shape
  num_words = -(-target.shape[1] // WORD)
  sub, padded = _tile(batch, platform)
  tile_bytes = num_words * sub * LANES * 4
  block = block or int(max(1, min(num_pred, 256,
                                  _BUDGET[platform] // 2 // tile_bytes)))
  steps = -(-num_pred // block) * block
  pad = padded - batch
  eq = match_masks(pred, target, num_words)                 # [N, W, B]
  eq = jnp.pad(eq, ((0, steps - num_pred), (0, 0), (0, pad)))
  eq = eq.reshape(steps, num_words, padded // LANES, LANES)
  last = jnp.maximum(m - 1, 0)
  meta = jnp.stack([n, last // WORD, last % WORD, m]).astype(jnp.int32)
  meta = jnp.pad(meta, ((0, 0), (0, pad))).reshape(4, padded // LANES, LANES)
  scratch = plgpu.SMEM if platform == "gpu" else pltpu.VMEM
  grid = (padded // (sub * LANES), steps // block)
  specs = dict(
      in_specs=[pl.BlockSpec((block, num_words, sub, LANES),
                             lambda b, k: (k, 0, b, 0)),
                pl.BlockSpec((4, sub, LANES), lambda b, k: (0, b, 0))],
      out_shape=[jax.ShapeDtypeStruct((padded // LANES, LANES), jnp.int32)],
      scratch_shapes=[scratch((num_words, sub, LANES), jnp.int32),
                      scratch((num_words, sub, LANES), jnp.int32),
                      scratch((sub, LANES), jnp.int32)])
  out_spec = pl.BlockSpec((sub, LANES), lambda b, k: (b, 0))
  if platform == "gpu":
    call = grid_call(_kernel, grid=grid, out_specs=[out_spec],
                     interpret=interpret, name="levenshtein", **specs)
  else:
    call = pl.pallas_call(
        _grid_kernel, grid=grid, out_specs=[out_spec],
        compiler_params=_compiler_params(interpret,
                                         (2 + 2 * block) * tile_bytes),
        interpret=interpret, **specs)
  (out,) = call(eq, meta)

  # m = 0 reads no row: the distance is n.
  return jnp.where(m == 0, n, out.reshape(-1)[:batch])
