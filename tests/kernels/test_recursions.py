"""The shared cell rules against the plain DP they vectorise."""

import itertools

import jax.numpy as jnp
import numpy as np

from ir_jax.kernels import recursions


def _column(pred_token, target, prev):
  """D[k] from D[k - 1] for one more prediction token (plain DP)."""
  col = [prev[0] + 1]
  for j, t in enumerate(target, 1):
    col.append(min(prev[j - 1] + (t != pred_token), prev[j] + 1, col[j - 1] + 1))
  return col


def test_advance_block_is_one_dp_column_per_token():
  """One 32-row word: the vertical deltas after each prediction token
  reproduce the DP column, and the bottom delta is its last difference."""
  rng = np.random.default_rng(0)
  target = rng.integers(0, 3, 32)
  pv, mv = jnp.uint32(0xFFFFFFFF), jnp.uint32(0)   # D[0, j] = j.
  col = list(range(33))
  for token in rng.integers(0, 3, 20):
    eq = jnp.uint32(sum(1 << j for j in range(32) if target[j] == token))
    pv, mv, _, _, hout = recursions.advance_block(pv, mv, eq, jnp.int32(1))
    new = _column(token, target, col)
    bits = lambda x: [(int(x) >> j) & 1 for j in range(32)]
    deltas = np.array(bits(pv)) - np.array(bits(mv))
    np.testing.assert_array_equal(deltas, np.diff(new))
    assert int(hout) == new[32] - col[32]
    col = new


def test_diagonal_cell_is_a_softmin_with_probabilities():
  rng = np.random.default_rng(1)
  diag, up, left, c = (jnp.asarray(rng.random(5), jnp.float32) for _ in range(4))
  rows = jnp.arange(1, 6)
  d = 8   # Interior cells: no edge of the grid.
  r, (p_sub, p_ins, p_del) = recursions.diagonal_cell(
      diag, up, left, c, d, rows, 0.5, 0.9, 1.1)
  a = np.stack([diag + c, up + 0.9, left + 1.1])
  want = -0.5 * np.log(np.exp(-a / 0.5).sum(0))
  np.testing.assert_allclose(r, want, rtol=1e-6)
  np.testing.assert_allclose(p_sub + p_ins + p_del, 1.0, rtol=1e-6)
  np.testing.assert_allclose(p_sub, np.exp((want - a[0]) / 0.5), rtol=1e-5)
  # Edges: R[0, j] = j * del, R[i, 0] = i * ins, one-hot predecessors.
  r, (p_sub, p_ins, p_del) = recursions.diagonal_cell(
      diag, up, left, c, 4, jnp.arange(5), 0.5, 0.9, 1.1)
  edges = np.array([0, 4])
  np.testing.assert_allclose(np.asarray(r)[edges], [4 * 1.1, 4 * 0.9],
                             rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(p_del)[edges], [1.0, 0.0])
  np.testing.assert_array_equal(np.asarray(p_ins)[edges], [0.0, 1.0])


def test_diagonal_rows_index_costs_and_a_zero_row():
  idx = np.asarray(recursions.diagonal_rows(5, 9, 3, 4))
  for d, row in itertools.product(range(9), range(5)):
    i, j = row - 1, d - row - 1
    inside = 0 <= i < 3 and 0 <= j < 4
    assert idx[d, row] == (i * 4 + j if inside else 12)
