"""The exact Levenshtein kernel (TPU and GPU code, interpret mode) against the
XLA loop and a plain Python DP; its TPU compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import rewards
from ir_jax import aot
from ir_jax.kernels import levenshtein as exact_kernel

from helpers import levenshtein


needs_libtpu = pytest.mark.tpu_compile   # Skipped without libtpu (conftest).


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
    assert int(want[i]) == levenshtein(pred[i, :n[i]], target[i, :m[i]])
  args = [jnp.asarray(x, jnp.int32) for x in (pred, target, n, m)]
  for block in (None, 1, 3):
    got = exact_kernel.levenshtein(*args, platform=platform, interpret=True,
                                   block=block)
    np.testing.assert_array_equal(got, want)
  with rewards.lowering_for(platform, interpret=True):
    got = rewards.levenshtein(pred, target, pred_lengths=n, target_lengths=m,
                              implementation="pallas")
  np.testing.assert_array_equal(got, want)


@needs_libtpu
@pytest.mark.slow
@pytest.mark.smoke
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
