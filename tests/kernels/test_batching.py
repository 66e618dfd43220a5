"""fold_vmap: kernels under jax.vmap fold the mapped axis into their batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import rewards
from ir_jax.kernels import platform

pytestmark = pytest.mark.smoke   # Also on jax 0.10 (Python 3.11) in CI.


def _soft_value_and_grad(impl):
  return jax.value_and_grad(
      lambda c, g: rewards.soft_edit_distance(c, g, implementation=impl).sum())


@pytest.mark.skipif(not platform.mosaic_gpu_interpreter(),
                    reason="no Mosaic GPU interpreter in this jax (< 0.12)")
def test_gpu_kernels_under_vmap():
  """Mosaic GPU takes no vmapped grid: under jax.vmap the mapped axis is
  folded into the kernels' batch (one launch), or mapped in sequence when a
  scalar such as gamma is vmapped; values match XLA (interpret mode)."""
  rng = np.random.default_rng(5)
  pred, target = rng.integers(0, 3, (2, 3, 20)), rng.integers(0, 3, (2, 3, 40))
  lev = jax.vmap(lambda p, t: rewards.levenshtein(p, t,
                                                  implementation="pallas"))
  costs = jnp.asarray(rng.random((3, 2, 9, 7)), jnp.float32)
  want = jax.vmap(_soft_value_and_grad("xla"), in_axes=(0, None))(costs, 0.5)
  distances = rewards.levenshtein(pred, target)
  with rewards.lowering_for("gpu", interpret=True):
    np.testing.assert_array_equal(lev(pred, target), distances)
    for gamma, axis in ((0.5, None), (jnp.full((3,), 0.5), 0)):
      got = jax.vmap(_soft_value_and_grad("pallas"), in_axes=(0, axis))(
          costs, gamma)
      np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
      np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_gpu_kernels_under_vmap_lower_for_cuda():
  """Under jax.vmap each kernel is still one Mosaic GPU launch (jax.export
  for CUDA from this host, on every jax line CI runs)."""
  with rewards.lowering_for("gpu"):
    spec = jax.ShapeDtypeStruct((4, 64, 100), jnp.int32)
    text = jax.export.export(jax.jit(jax.vmap(rewards.levenshtein)),
                             platforms=["cuda"])(spec, spec).mlir_module()
    assert text.count("custom_call @mosaic_gpu") == 1
    spec = jax.ShapeDtypeStruct((3, 8, 64, 64), jnp.float32)
    text = jax.export.export(
        jax.jit(jax.vmap(_soft_value_and_grad("auto"), in_axes=(0, None))),
        platforms=["cuda"])(spec, 0.5).mlir_module()
    assert text.count("custom_call @mosaic_gpu") == 2
