"""gpu_grid.grid_call: pallas_call's (parallel, sequential) grid on
plgpu.kernel, run by the Mosaic GPU interpreter with its race detector
(TMA copies, SMEM slots and barriers simulated), and lowered for CUDA."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ir_jax.kernels import gpu_grid
from ir_jax.kernels import levenshtein as exact_kernel
from ir_jax.kernels import platform
from ir_jax.kernels import soft_edit_distance_gpu as soft_kernels

needs_interpreter = pytest.mark.skipif(
    not platform.mosaic_gpu_interpreter(),
    reason="no Mosaic GPU interpreter in this jax (< 0.12)")
C = 128


def _running_sum(x, *, stages, interpret):
  """x [B, S, C] -> (sum over S [B, C], prefix sums [B, S, C]): a carry
  in SMEM scratch across the sequential axis, an output that moves with k
  and one that does not."""
  batch, steps, _ = x.shape

  def kernel(k, num_k, x_ref, total_ref, prefix_ref, acc_ref):
    @pl.when(k == 0)
    def _():
      acc_ref[...] = jnp.zeros((C,), jnp.float32)

    acc_ref[...] = acc_ref[...] + x_ref[0, 0]
    prefix_ref[0, 0] = acc_ref[...]

    @pl.when(k == num_k - 1)
    def _():
      total_ref[0] = acc_ref[...]

  return gpu_grid.grid_call(
      kernel, grid=(batch, steps),
      in_specs=[pl.BlockSpec((1, 1, C), lambda b, k: (b, k, 0))],
      out_specs=[pl.BlockSpec((1, C), lambda b, k: (b, 0)),
                 pl.BlockSpec((1, 1, C), lambda b, k: (b, k, 0))],
      out_shape=[jax.ShapeDtypeStruct((batch, C), jnp.float32),
                 jax.ShapeDtypeStruct((batch, steps, C), jnp.float32)],
      scratch_shapes=[plgpu.SMEM((C,), jnp.float32)], stages=stages,
      interpret=interpret)(x)


@needs_interpreter
@pytest.mark.parametrize("stages", [1, 2])
def test_grid_call_carries_state_and_writes_every_block(stages):
  x = jnp.asarray(np.random.default_rng(0).random((3, 5, C)), jnp.float32)
  params = plgpu.InterpretGPUParams(detect_races=True)
  total, prefix = _running_sum(x, stages=stages, interpret=params)
  np.testing.assert_allclose(total, x.sum(1), rtol=1e-6)
  np.testing.assert_allclose(prefix, jnp.cumsum(x, 1), rtol=1e-6)


@needs_interpreter
def test_kernels_have_no_races():
  """The soft edit distance (blocked K = 3 and long mode, forward and
  backward) and Levenshtein kernels under the interpreter's race detector:
  no TMA copy overlaps a read or write of the same SMEM (it raises)."""
  params = plgpu.InterpretGPUParams(detect_races=True)
  rng = np.random.default_rng(1)
  costs = jnp.asarray(rng.random((2, 5, 3)), jnp.float32)
  n, m = jnp.array([5, 2]), jnp.array([3, 3])
  args = (costs, n, m, 0.7, 0.9, 1.1)
  want = None
  for block, long in ((3, False), (None, True)):
    kw = dict(interpret=params, block=block, long=long)
    value, saved = soft_kernels.forward(*args, **kw)
    got = (value, *soft_kernels.backward(costs, saved, *args[1:], **kw))
    want = want or got
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)
  pred = jnp.asarray(rng.integers(0, 3, (5, 9)), jnp.int32)
  target = jnp.asarray(rng.integers(0, 3, (5, 40)), jnp.int32)
  lengths = jnp.array([9, 0, 4, 9, 1]), jnp.array([40, 3, 0, 17, 40])
  got = exact_kernel.levenshtein(pred, target, *lengths, platform="gpu",
                                 interpret=params, block=2)
  np.testing.assert_array_equal(got, exact_kernel.levenshtein(
      pred, target, *lengths, platform="tpu", interpret=True))


@pytest.mark.smoke
def test_grid_call_lowers_for_cuda():
  """One mosaic_gpu custom call, on jax 0.10.2 and 0.12.x."""
  spec = jax.ShapeDtypeStruct((3, 5, C), jnp.float32)
  for stages in (1, 2):
    fn = functools.partial(_running_sum, stages=stages, interpret=None)
    text = jax.export.export(jax.jit(fn), platforms=["cuda"])(
        spec).mlir_module()
    assert text.count("custom_call @mosaic_gpu") == 1


def test_interpret_params():
  assert gpu_grid.interpret_params(None) is None
  assert gpu_grid.interpret_params(False) is None
  if platform.mosaic_gpu_interpreter():
    params = plgpu.InterpretGPUParams(detect_races=True)
    assert gpu_grid.interpret_params(params) is params
    assert isinstance(gpu_grid.interpret_params(True),
                      plgpu.InterpretGPUParams)
  else:
    with pytest.raises(RuntimeError, match="interpret"):
      gpu_grid.interpret_params(True)
