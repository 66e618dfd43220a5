"""Pallas kernels for the soft edit distance wavefront (forward and backward).

Same recursion (the shared `diagonal_cell`), length semantics and skewed
layout as the XLA `diagonals` path of `ir_jax.rewards.soft` (drop-in
replacements for its `_forward` / `_backward`): a program owns a tile of TB pairs (the
lane axis) and runs all N + M + 1 anti-diagonals in one `fori_loop`, so the
two live diagonals stay on chip instead of round-tripping through HBM per
step as XLA's loop does. On CPU the kernels run with `interpret=True`.

Status: correct in interpret mode (tested against the XLA path); the whole
[D, N + 1, TB] tile is one block, so lengths are bounded by on-chip memory
(no blocking over diagonals yet) and the kernels have not been lowered on a
TPU or GPU from this repository.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ir_jax.rewards.soft import _BIG, diagonal_cell
_LANES = 128


def _shift_down(r, rows, fill):
  """r[i] -> r[i - 1] along axis 0, `fill` at i = 0 (roll keeps shapes)."""
  return jnp.where(rows == 0, fill, jnp.roll(r, 1, axis=0))


def _shift_up(r, rows, last):
  """r[i] -> r[i + 1] along axis 0, 0 at the last row."""
  return jnp.where(rows == last, 0.0, jnp.roll(r, -1, axis=0))


def _forward_kernel(c_ref, nm_ref, prm_ref, out_ref, ps_ref, pi_ref, pd_ref):
  num_diag, num_rows, tile = c_ref.shape
  gamma, ins, dele = prm_ref[0, 0], prm_ref[0, 1], prm_ref[0, 2]
  n, m = nm_ref[0, :], nm_ref[1, :]
  rows = lax.broadcasted_iota(jnp.int32, (num_rows, tile), 0)
  at_n = rows == n[None, :]
  big = jnp.full((num_rows, tile), _BIG, jnp.float32)

  def body(d, carry):
    r2, r1, out = carry
    r, (p_sub, p_ins, p_del) = diagonal_cell(
        _shift_down(r2, rows, _BIG), _shift_down(r1, rows, _BIG), r1,
        c_ref[d], d, rows, gamma, ins, dele)
    ps_ref[d], pi_ref[d], pd_ref[d] = p_sub, p_ins, p_del
    hit = at_n & (d == n + m)[None, :]
    out = out + jnp.sum(jnp.where(hit, r, 0.0), axis=0)
    return r1, r, out

  _, _, out = lax.fori_loop(0, num_diag, body,
                            (big, big, jnp.zeros((tile,), jnp.float32)))
  out_ref[0, :] = out


def _backward_kernel(ps_ref, pi_ref, pd_ref, nm_ref, g_ref, acc_ref):
  num_diag, num_rows, tile = ps_ref.shape
  n, m = nm_ref[0, :], nm_ref[1, :]
  rows = lax.broadcasted_iota(jnp.int32, (num_rows, tile), 0)
  seed_at = rows == n[None, :]
  zeros = jnp.zeros((num_rows, tile), jnp.float32)

  def body(k, carry):
    q2_sub, q1_sub, q1_ins, q1_del, acc_ins, acc_del = carry
    d = num_diag - 1 - k
    e = (_shift_up(q2_sub, rows, num_rows - 1) +
         _shift_up(q1_ins, rows, num_rows - 1) + q1_del)
    e = e + (seed_at & (d == n + m)[None, :]).astype(jnp.float32)
    q_sub, q_ins, q_del = e * ps_ref[d], e * pi_ref[d], e * pd_ref[d]
    g_ref[d] = q_sub
    return q1_sub, q_sub, q_ins, q_del, acc_ins + q_ins, acc_del + q_del

  carry = lax.fori_loop(0, num_diag, body, (zeros,) * 6)
  acc_ref[0, :] = jnp.sum(carry[4], axis=0)
  acc_ref[1, :] = jnp.sum(carry[5], axis=0)


def _tile(batch):
  return batch if batch <= _LANES else _LANES


def _pad_lanes(x, size):
  pad = size - x.shape[-1]
  if not pad:
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


@functools.partial(jax.jit, static_argnames=("interpret",))
def forward(skewed, n, m, gamma, ins, dele, *, interpret: bool):
  """skewed f32[D, N + 1, B] (costs on diagonals) -> (R[n, m], probs)."""
  num_diag, num_rows, batch = skewed.shape
  tile = _tile(batch)
  padded = -(-batch // tile) * tile
  nm = _pad_lanes(jnp.stack([n, m]).astype(jnp.int32), padded)
  prm = jnp.stack([gamma, ins, dele]).astype(jnp.float32)[None]
  plane = jax.ShapeDtypeStruct((num_diag, num_rows, padded), jnp.float32)
  block = pl.BlockSpec((num_diag, num_rows, tile), lambda b: (0, 0, b))
  out, *probs = pl.pallas_call(
      _forward_kernel,
      grid=(padded // tile,),
      in_specs=[block, pl.BlockSpec((2, tile), lambda b: (0, b)),
                pl.BlockSpec((1, 3), lambda b: (0, 0))],
      out_specs=[pl.BlockSpec((1, tile), lambda b: (0, b)), block, block,
                 block],
      out_shape=[jax.ShapeDtypeStruct((1, padded), jnp.float32), plane, plane,
                 plane],
      interpret=interpret)(_pad_lanes(skewed, padded), nm, prm)
  return out[0, :batch], tuple(p[..., :batch] for p in probs)


@functools.partial(jax.jit, static_argnames=("interpret",))
def backward(probs, n, m, *, interpret: bool):
  """Expected-alignment flows: (sub flows f32[D, N + 1, B], g_ins, g_del)."""
  num_diag, num_rows, batch = probs[0].shape
  tile = _tile(batch)
  padded = -(-batch // tile) * tile
  nm = _pad_lanes(jnp.stack([n, m]).astype(jnp.int32), padded)
  # Padded pairs get n = m = 0 and zero probabilities: no flow.
  block = pl.BlockSpec((num_diag, num_rows, tile), lambda b: (0, 0, b))
  flows, acc = pl.pallas_call(
      _backward_kernel,
      grid=(padded // tile,),
      in_specs=[block, block, block, pl.BlockSpec((2, tile), lambda b: (0, b))],
      out_specs=[block, pl.BlockSpec((2, tile), lambda b: (0, b))],
      out_shape=[jax.ShapeDtypeStruct((num_diag, num_rows, padded),
                                      jnp.float32),
                 jax.ShapeDtypeStruct((2, padded), jnp.float32)],
      interpret=interpret)(*(_pad_lanes(p, padded) for p in probs), nm)
  return flows[..., :batch], acc[0, :batch], acc[1, :batch]
