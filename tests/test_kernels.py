"""Pallas soft-edit-distance kernels (interpret mode) against the XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import rewards
from ir_jax.rewards import soft


def both(costs, gamma, n, m, kernel_for=None):
  """(XLA, Pallas) values and gradients; `kernel_for="gpu"` runs the Mosaic
  GPU kernel in interpret mode whatever the host, ("tpu", params) the TPU
  kernel with those interpret params."""
  def run(impl):
    f = lambda c, g: rewards.soft_edit_distance(
        c, g, pred_lengths=n, target_lengths=m, implementation=impl,
        layout="diagonals", insertion_cost=0.9, deletion_cost=1.1)
    value = f(costs, gamma)
    g_costs, g_gamma = jax.grad(lambda c, g: f(c, g).sum(), argnums=(0, 1))(
        costs, jnp.float32(gamma))
    return value, g_costs, g_gamma
  if kernel_for is None:
    return run("xla"), run("pallas")
  platform, interpret = ((kernel_for, True) if isinstance(kernel_for, str)
                         else kernel_for)
  with soft.lowering_for(platform, interpret=interpret):
    return run("xla"), run("pallas")


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


# ---------------------------------------------- blocking, TPU semantics, AOT

from jax.experimental.pallas import tpu as pltpu  # noqa: E402

from ir_jax import aot  # noqa: E402
from ir_jax.kernels import soft_edit_distance as kernels  # noqa: E402


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
  holding every diagonal, bit for bit."""
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
  np.testing.assert_array_equal(g_blk[0][:d], g_one[0][:d])
  np.testing.assert_array_equal(g_blk[1], g_one[1])
  np.testing.assert_array_equal(g_blk[2], g_one[2])


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


def test_auto_dispatch_by_target_platform():
  if jax.default_backend() == "cpu":
    assert soft._resolve_layout("auto", "auto") == "rows"
    assert soft._resolve_layout("diagonals", "auto") == "diagonals"
    assert soft._resolve_layout("auto", "pallas") == ("pallas_tpu", True)
  with soft.lowering_for("tpu"):
    assert soft._resolve_layout("auto", "auto", 4096) == ("pallas_tpu", False)
    assert soft._resolve_layout("diagonals", "auto") == "diagonals"
    # A diagonal past VMEM (~5.7k rows x 128 pairs): XLA, or a clear error.
    assert soft._resolve_layout("auto", "auto", 8000, 128) == "diagonals"
    assert soft._resolve_layout("auto", "auto", 8000, 8) == ("pallas_tpu",
                                                             False)
    with pytest.raises(ValueError, match="VMEM"):
      soft._resolve_layout("auto", "pallas", 8000, 128)
  with soft.lowering_for("gpu"):
    assert soft._resolve_layout("auto", "auto", 256) == ("pallas_gpu", False)
    # Past shared memory: XLA's wavefront, and a clear error when forced.
    assert soft._resolve_layout("auto", "auto", 4096) == ("pallas_gpu",
                                                          False)
    assert soft._resolve_layout("auto", "auto", 4608) == "diagonals"
    with pytest.raises(ValueError, match="shared memory"):
      soft._resolve_layout("auto", "pallas", 4608)
  with pytest.raises(ValueError, match="platform"):
    with soft.lowering_for("cuda"):
      pass


# ------------------------------------------------ Mosaic GPU kernel (Hopper)

from ir_jax.kernels import soft_edit_distance_gpu as gpu_kernels  # noqa: E402


@pytest.mark.parametrize("batch,n_max,m_max,gamma", [
    (5, 0, 4, 0.3), (5, 1, 1, 10.0), (3, 7, 5, 1e-3),
    (2, 127, 129, 0.3),   # Rows around the 128-row chunk: 1 and 2 chunks.
])
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
    (8, 4607, 2),      # The longest (226 KiB).
    (8, 4608, 0),      # Past it: auto lowers XLA's wavefront.
])
def test_gpu_kernel_lowers_with_mosaic_gpu(batch, length, calls):
  """jax.export for CUDA from this CPU host: forward + backward go through
  the Mosaic GPU lowering (layouts, TMA boxes, SMEM refs) as two
  mosaic_gpu custom calls under implementation="auto"."""
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


needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason="libtpu not installed: pip install -e '.[tpu-aot]'")

# (batch, N = M): several 128-row tiles and many diagonal blocks, up to the
# ~2k rows a whole diagonal of 128 pairs allows in VMEM.
TPU_SHAPES = {"v5e:2x2": [(512, 64), (512, 256), (128, 1024)],
              "v6e:2x2": [(512, 256), (128, 2048)],
              "v5p:2x2x1": [(512, 1024), (128, 2048)]}


@needs_libtpu
@pytest.mark.slow
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


# ------------------------------------- exact Levenshtein kernel (TPU, GPU)

from ir_jax.kernels import levenshtein as exact_kernel  # noqa: E402
from ir_jax.rewards import exact  # noqa: E402


def _python_ed(a, b):
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
  return row[-1]


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize("batch,n_max,m_max,vocab", [
    (5, 7, 9, 3), (3, 1, 1, 2),
    (130, 40, 70, 4),    # Two 128-pair rows on TPU, three 32-bit words.
    (9, 33, 64, 2),      # A word boundary exactly at 64; many matches.
])
def test_exact_kernel_matches(platform, batch, n_max, m_max, vocab):
  """The kernel's code for either platform (interpret mode) against the XLA
  loop and a plain Python DP, lengths from 0 to full, diagonal step blocks
  of 1, 3 and the default."""
  rng = np.random.default_rng(batch + n_max)
  pred = rng.integers(0, vocab, (batch, n_max))
  target = rng.integers(0, vocab, (batch, m_max))
  n = rng.integers(0, n_max + 1, batch)
  m = rng.integers(0, m_max + 1, batch)
  n[:2], m[:2] = (n_max, 0), (0, m_max)
  want = rewards.levenshtein(pred, target, pred_lengths=n, target_lengths=m,
                             implementation="xla")
  for i in range(min(batch, 6)):
    assert int(want[i]) == _python_ed(pred[i, :n[i]], target[i, :m[i]])
  args = [jnp.asarray(x, jnp.int32) for x in (pred, target, n, m)]
  for block in (None, 1, 3):
    got = exact_kernel.levenshtein(*args, platform=platform, interpret=True,
                                   block=block)
    np.testing.assert_array_equal(got, want)
  with rewards.lowering_for(platform, interpret=True):
    got = rewards.levenshtein(pred, target, pred_lengths=n, target_lengths=m,
                              implementation="pallas")
  np.testing.assert_array_equal(got, want)


def test_exact_kernel_dispatch_and_gpu_lowering():
  """auto: XLA on CPU, the kernel on TPU and on GPU up to 3200 target
  tokens; the GPU kernel lowers with Mosaic GPU (jax.export for CUDA)."""
  if jax.default_backend() == "cpu":
    assert exact._kernel_choice("auto", 64) is None
    assert exact._kernel_choice("pallas", 64) == ("tpu", True)  # Interpret.
  with pytest.raises(ValueError, match="implementation"):
    exact._kernel_choice("triton", 64)
  with rewards.lowering_for("tpu"):
    assert exact._kernel_choice("auto", 8192) == ("tpu", False)
  limit = exact_kernel.max_target_length("gpu")
  with rewards.lowering_for("gpu"):
    assert exact._kernel_choice("auto", limit) == ("gpu", False)
    assert exact._kernel_choice("auto", limit + 1) is None
    with pytest.raises(ValueError, match="does not run here"):
      exact._kernel_choice("pallas", limit + 1)
    for batch, length in ((512, 1024), (64, limit)):
      spec = jax.ShapeDtypeStruct((batch, length), jnp.int32)
      exported = jax.export.export(
          jax.jit(rewards.levenshtein), platforms=["cuda"])(spec, spec)
      assert exported.mlir_module().count("custom_call @mosaic_gpu") == 1


@needs_libtpu
@pytest.mark.slow
def test_exact_kernel_compiles_for_tpu():
  """AOT with libtpu: levenshtein under a v5e mesh lowers to the Mosaic
  kernel (auto) and compiles, B=512 at N=M=1024 and B=64 at 4096."""
  device = aot.topology_devices("v5e:2x2")[:1]
  mesh = jax.make_mesh((1,), ("x",), devices=device,
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  for batch, length in ((512, 1024), (64, 4096)):
    spec = jax.ShapeDtypeStruct((batch, length), jnp.int32,
                                sharding=replicated)
    with jax.set_mesh(mesh):
      lowered = jax.jit(rewards.levenshtein).lower(spec, spec)
    assert lowered.as_text().count("tpu_custom_call") == 1
    mem = lowered.compile(aot.FAST_OPTIONS).memory_analysis()
    assert mem.temp_size_in_bytes < aot.chip_of("v5e:2x2").hbm_bytes


def test_gpu_kernels_under_vmap():
  """Mosaic GPU takes no vmapped grid: under jax.vmap the mapped axis is
  folded into the kernels' batch (one launch), or mapped in sequence when a
  scalar such as gamma is vmapped; values match XLA and it still lowers."""
  rng = np.random.default_rng(5)
  pred, target = rng.integers(0, 3, (2, 3, 20)), rng.integers(0, 3, (2, 3, 40))
  lev = jax.vmap(lambda p, t: rewards.levenshtein(p, t,
                                                  implementation="pallas"))
  costs = jnp.asarray(rng.random((3, 2, 9, 7)), jnp.float32)
  soft_vg = lambda impl: jax.value_and_grad(
      lambda c, g: rewards.soft_edit_distance(c, g, implementation=impl).sum())
  want = jax.vmap(soft_vg("xla"), in_axes=(0, None))(costs, 0.5)
  distances = rewards.levenshtein(pred, target)
  with rewards.lowering_for("gpu", interpret=True):
    np.testing.assert_array_equal(lev(pred, target), distances)
    for gamma, axis in ((0.5, None), (jnp.full((3,), 0.5), 0)):
      got = jax.vmap(soft_vg("pallas"), in_axes=(0, axis))(costs, gamma)
      np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
      np.testing.assert_allclose(got[1], want[1], atol=1e-5)
  with rewards.lowering_for("gpu"):
    spec = jax.ShapeDtypeStruct((4, 64, 100), jnp.int32)
    text = jax.export.export(jax.jit(jax.vmap(rewards.levenshtein)),
                             platforms=["cuda"])(spec, spec).mlir_module()
    assert text.count("custom_call @mosaic_gpu") == 1
    spec = jax.ShapeDtypeStruct((3, 8, 64, 64), jnp.float32)
    text = jax.export.export(
        jax.jit(jax.vmap(soft_vg("auto"), in_axes=(0, None))),
        platforms=["cuda"])(spec, 0.5).mlir_module()
    assert text.count("custom_call @mosaic_gpu") == 2
