"""The Pallas TPU soft-edit-distance kernel (interpret mode, TPU semantics,
AOT compiles) against the XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from ir_jax import rewards
from ir_jax.rewards import soft
from ir_jax import aot
from ir_jax.kernels import soft_edit_distance as kernels
from pallas_vs_xla import both


@pytest.mark.parametrize("batch,n_max,m_max,gamma", [
    (5, 0, 4, 0.3), (5, 1, 1, 10.0), (3, 7, 5, 1e-3), (3, 7, 5, 10.0),
    (129, 6, 9, 1e-3),    # Two lane tiles (128 + 1), the second padded.
    (2, 127, 129, 1e-3),  # Lengths around the 128 tile size, over the
    (2, 127, 129, 0.3),   # whole gamma range.
    (2, 127, 129, 10.0),
])
def test_pallas_matches_xla(batch, n_max, m_max, gamma):
  rng = np.random.default_rng(batch + n_max)
  costs = jnp.asarray(rng.random((batch, n_max, m_max)), jnp.float32)
  n = rng.integers(0, n_max + 1, batch)
  m = rng.integers(0, m_max + 1, batch)
  (v1, g1, gg1), (v2, g2, gg2) = both(costs, gamma, n, m)
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g2, g1, atol=1e-4)
  np.testing.assert_allclose(gg2, gg1, rtol=1e-4, atol=1e-4)


def test_pallas_bfloat16_costs():
  rng = np.random.default_rng(0)
  costs = jnp.asarray(rng.random((4, 9, 8)), jnp.bfloat16)
  n, m = np.array([9, 3, 0, 5]), np.array([8, 8, 2, 0])
  (v1, g1, _), (v2, g2, _) = both(costs, 0.5, n, m)
  assert g2.dtype == jnp.bfloat16
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g2, np.float32),
                             np.asarray(g1, np.float32), atol=1e-2)


def test_implementation_is_validated():
  with pytest.raises(ValueError, match="implementation"):
    rewards.soft_edit_distance(jnp.zeros((1, 2, 2)), implementation="cuda")


def _skewed(costs):
  _, num_pred, num_target = costs.shape
  rows = kernels.padded_rows(num_pred)
  skewed = soft._skew_lanes(costs, rows, rows + num_target)
  # The same layout as the XLA wavefront's skew of the padded grid.
  grid = jnp.pad(costs, ((0, 0), (1, rows - 1 - num_pred), (1, 0)))
  np.testing.assert_array_equal(skewed, soft._skew(grid, rows + num_target))
  return skewed


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_diagonal_blocks_give_identical_results(block):
  """The wavefront split over several grid steps (carries in VMEM scratch,
  probabilities recomputed per block in the backward) equals one block
  holding every diagonal: the forward bit for bit, the gradients bit for
  bit on jax 0.10 and to an ulp on jax 0.12, whose interpreter compiles the
  per-block recomputation differently (1 of 1600 entries, 7e-9)."""
  rng = np.random.default_rng(block)
  costs = jnp.asarray(rng.random((4, 13, 9)), jnp.float32)
  n, m = jnp.array([13, 5, 0, 8]), jnp.array([9, 9, 4, 0])
  sk = _skewed(costs)
  d = sk.shape[0]
  args = (sk, n, m, 0.7, 0.9, 1.1)
  one = kernels.forward(*args, interpret=True, block=d)
  blk = kernels.forward(*args, interpret=True, block=block)
  np.testing.assert_array_equal(blk[0], one[0])
  assert blk[1].shape[0] == -(-d // block)       # One checkpoint a block.
  g_one = kernels.backward(sk, one[1], *args[1:], interpret=True, block=d)
  g_blk = kernels.backward(sk, blk[1], *args[1:], interpret=True, block=block)
  for got, want in zip(g_blk, g_one):
    np.testing.assert_allclose(got[:d], want[:d], rtol=2e-7, atol=1e-8)


def test_tpu_interpret_mode_matches_xla():
  """Mosaic TPU semantics (pltpu.InterpretParams: VMEM/SMEM, grid order,
  uninitialised memory as NaN) on CPU, values and gradients vs XLA."""
  rng = np.random.default_rng(7)
  costs = jnp.asarray(rng.random((3, 12, 10)), jnp.float32)
  n, m = np.array([12, 4, 0]), np.array([10, 10, 3])
  (v1, g1, gg1), (v2, g2, gg2) = both(
      costs, 0.5, n, m, kernel_for=("tpu", pltpu.InterpretParams()))
  np.testing.assert_allclose(v2, v1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g2, g1, atol=1e-4)
  np.testing.assert_allclose(gg2, gg1, rtol=1e-4, atol=1e-4)


needs_libtpu = pytest.mark.tpu_compile   # Skipped without libtpu (conftest).


TPU_SHAPES = {"v5e:2x2": [(512, 64), (512, 256), (128, 1024)],
              "v6e:2x2": [(512, 256), (128, 2048)],
              "v5p:2x2x1": [(512, 1024), (128, 2048)]}


@needs_libtpu
@pytest.mark.slow
@pytest.mark.smoke
@pytest.mark.parametrize("topology", sorted(TPU_SHAPES))
def test_kernel_compiles_for_tpu_with_auto_dispatch(topology):
  """AOT: forward + backward lower with Mosaic for three TPU generations,
  and implementation="auto" picks the kernel when the mesh is a TPU's."""
  device = aot.topology_devices(topology)[:1]
  mesh = jax.make_mesh((1,), ("x",), devices=device,
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def loss(c, n, m):
    return rewards.soft_edit_distance(c, 1.0, pred_lengths=n,
                                      target_lengths=m).sum()

  for batch, length in TPU_SHAPES[topology]:
    spec = lambda *s, dt=jnp.int32: jax.ShapeDtypeStruct(s, dt,
                                                         sharding=replicated)
    with jax.set_mesh(mesh):
      lowered = jax.jit(jax.value_and_grad(loss)).lower(
          spec(batch, length, length, dt=jnp.float32), spec(batch),
          spec(batch))
    assert lowered.as_text().count("tpu_custom_call") == 2  # fwd + bwd
    mem = lowered.compile(aot.FAST_OPTIONS).memory_analysis()
    assert mem.temp_size_in_bytes < aot.chip_of(topology).hbm_bytes
