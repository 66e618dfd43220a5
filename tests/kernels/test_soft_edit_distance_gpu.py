"""The Mosaic GPU soft-edit-distance kernel: interpret mode against XLA (the
Mosaic GPU interpreter, jax >= 0.12) and its lowering for CUDA from a CPU
host (jax 0.10.2 and 0.12.x)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import rewards
from ir_jax.rewards import soft
from ir_jax.kernels import platform
from ir_jax.kernels import soft_edit_distance_gpu as gpu_kernels
from pallas_vs_xla import both

needs_interpreter = pytest.mark.skipif(
    not platform.mosaic_gpu_interpreter(),
    reason="no Mosaic GPU interpreter in this jax (< 0.12)")


@pytest.mark.parametrize("batch,n_max,m_max,gamma", [
    (5, 0, 4, 0.3), (5, 1, 1, 10.0), (3, 7, 5, 1e-3),
    (2, 127, 129, 0.3),   # Rows around the 128-row chunk: 1 and 2 chunks.
])
@needs_interpreter
def test_gpu_kernel_matches_xla(batch, n_max, m_max, gamma):
  """The Mosaic GPU kernel's code (SMEM rings, row chunks, diagonal blocks)
  in interpret mode, through the custom VJP, against the XLA wavefront."""
  rng = np.random.default_rng(batch + n_max)
  costs = jnp.asarray(rng.random((batch, n_max, m_max)), jnp.float32)
  n = rng.integers(0, n_max + 1, batch)
  m = rng.integers(0, m_max + 1, batch)
  n[0], m[0] = n_max, m_max
  (v1, g1, gg1), (v2, g2, gg2) = both(costs, gamma, n, m, kernel_for="gpu")
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g2, g1, atol=1e-4)
  np.testing.assert_allclose(gg2, gg1, rtol=1e-4, atol=1e-4)


@needs_interpreter
def test_gpu_kernel_bfloat16_and_blocks():
  """bf16 costs; K = 1, 3, all diagonals in one block, and long mode (every
  diagonal saved, one a step, probabilities used as recomputed) agree bit
  for bit."""
  rng = np.random.default_rng(3)
  costs = jnp.asarray(rng.random((4, 13, 9)), jnp.bfloat16)
  n, m = jnp.array([13, 5, 0, 8]), jnp.array([9, 9, 4, 0])
  (v1, g1, _), (v2, g2, _) = both(costs, 0.5, n, m, kernel_for="gpu")
  assert g2.dtype == jnp.bfloat16
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g2, np.float32),
                             np.asarray(g1, np.float32), atol=1e-2)
  args = (costs.astype(jnp.float32), n, m, 0.7, 0.9, 1.1)
  diags = gpu_kernels.padded_rows(13) + 9
  outs = []
  for block, long in ((1, False), (3, False), (diags, False), (None, True)):
    kw = dict(interpret=True, block=block, long=long)
    value, saved = gpu_kernels.forward(*args, **kw)
    # One checkpoint (two diagonals) a block, or every diagonal.
    chunks = gpu_kernels.padded_rows(13) // gpu_kernels.CHUNK
    assert saved.shape[1:3] == ((diags, chunks + 1) if long else
                                (-(-diags // block), 2))
    outs.append((value, *gpu_kernels.backward(args[0], saved, *args[1:],
                                              **kw)))
  for other in outs[1:]:
    for a, b in zip(other, outs[0]):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch,length,calls", [
    (512, 256, 2), (64, 1024, 2),
    (8, 2047, 2),      # The longest in blocked mode (197 KiB of SMEM at
                       # K = 1; the lowering checks the 227 KiB limit).
    (8, 4096, 2),      # Long mode: one diagonal a step, single-buffered.
    (8, 4223, 2),      # The longest (~225 KiB).
    (8, 4224, 0),      # Past it: auto lowers XLA's wavefront.
])
@pytest.mark.smoke
def test_gpu_kernel_lowers_with_mosaic_gpu(batch, length, calls):
  """jax.export for CUDA from this CPU host, on jax 0.10.2 and 0.12.x:
  forward + backward go through the Mosaic GPU lowering (layouts, TMA
  boxes, SMEM refs, the 227 KiB shared-memory check) as two mosaic_gpu
  custom calls under implementation="auto"."""
  def loss(c, n, m):
    return rewards.soft_edit_distance(c, 1.0, pred_lengths=n,
                                      target_lengths=m).sum()

  spec = lambda *s, dt=jnp.int32: jax.ShapeDtypeStruct(s, dt)
  with soft.lowering_for("gpu"):
    exported = jax.export.export(
        jax.jit(jax.value_and_grad(loss)), platforms=["cuda"])(
            spec(batch, length, length, dt=jnp.float32), spec(batch),
            spec(batch))
  assert exported.mlir_module().count("custom_call @mosaic_gpu") == calls
