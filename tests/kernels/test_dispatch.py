"""One dispatch policy: XLA or a kernel by implementation, platform and size."""

import jax
import jax.numpy as jnp
import pytest

from ir_jax import rewards
from ir_jax.rewards import soft
from ir_jax.kernels import levenshtein as exact_kernel
from ir_jax.kernels import dispatch
from ir_jax.kernels import platform


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
    assert soft._resolve_layout("auto", "auto", 4224) == "diagonals"
    with pytest.raises(ValueError, match="shared memory"):
      soft._resolve_layout("auto", "pallas", 4224)
  with pytest.raises(ValueError, match="platform"):
    with soft.lowering_for("cuda"):
      pass


@pytest.mark.smoke
def test_exact_kernel_dispatch_and_gpu_lowering():
  """auto: XLA on CPU, the kernel on TPU and on GPU up to 3200 target
  tokens; the GPU kernel lowers with Mosaic GPU (jax.export for CUDA)."""
  if jax.default_backend() == "cpu":
    assert dispatch.levenshtein_kernel("auto", 64) is None
    assert dispatch.levenshtein_kernel("pallas", 64) == ("tpu", True)  # Interpret.
  with pytest.raises(ValueError, match="implementation"):
    dispatch.levenshtein_kernel("triton", 64)
  with rewards.lowering_for("tpu"):
    assert dispatch.levenshtein_kernel("auto", 8192) == ("tpu", False)
  limit = exact_kernel.max_target_length("gpu")
  with rewards.lowering_for("gpu"):
    assert dispatch.levenshtein_kernel("auto", limit) == ("gpu", False)
    assert dispatch.levenshtein_kernel("auto", limit + 1) is None
    with pytest.raises(ValueError, match="does not run here"):
      dispatch.levenshtein_kernel("pallas", limit + 1)
    for batch, length in ((512, 1024), (64, limit)):
      spec = jax.ShapeDtypeStruct((batch, length), jnp.int32)
      exported = jax.export.export(
          jax.jit(rewards.levenshtein), platforms=["cuda"])(spec, spec)
      assert exported.mlir_module().count("custom_call @mosaic_gpu") == 1


def test_auto_runs_gpu_kernels_only_on_a_verified_kind(monkeypatch, capsys):
  """On a real GPU, auto takes the Mosaic GPU kernel only when the GPU's
  kind is in VERIFIED_GPU_KINDS (it took it on any Hopper); 'pallas' runs
  it anyway; the fallback is said once."""
  from ir_jax.kernels import platform
  monkeypatch.setattr(platform, "gpu_kind", lambda: "NVIDIA H100 80GB HBM3")
  monkeypatch.setattr(platform, "target_platform", lambda: "gpu")
  monkeypatch.setattr(platform, "pallas_interpret", lambda: False)
  monkeypatch.setattr(platform, "VERIFIED_GPU_KINDS", {})
  assert dispatch.levenshtein_kernel("auto", 64) is None
  assert dispatch.levenshtein_kernel("auto", 64) is None
  err = capsys.readouterr().err
  assert err.count("not been verified on NVIDIA H100 80GB HBM3") == 1
  assert dispatch.levenshtein_kernel("pallas", 64) == ("gpu", False)
  assert dispatch.soft_edit_distance_kernel("auto", 64) is None
  assert "XLA on this GPU" in dispatch.describe("auto")
  monkeypatch.setattr(platform, "VERIFIED_GPU_KINDS",
                      {"NVIDIA H100 80GB HBM3": {"date": "2026-12-06"}})
  assert dispatch.levenshtein_kernel("auto", 64) == ("gpu", False)
  assert dispatch.soft_edit_distance_kernel("auto", 64) == ("pallas_gpu",
                                                            False)
  assert "Mosaic GPU" in dispatch.describe("auto")
  # A jax without the Mosaic GPU kernel API: XLA, and why.
  monkeypatch.setattr(platform, "mosaic_gpu_kernels", lambda: False)
  assert dispatch.levenshtein_kernel("auto", 64) is None
  assert "has no Mosaic GPU plgpu.kernel" in dispatch.describe("auto")
  with pytest.raises(ValueError, match="has no Mosaic GPU plgpu.kernel"):
    dispatch.soft_edit_distance_kernel("pallas", 64)


def test_the_shipped_record_is_empty_and_cpu_says_xla():
  from ir_jax.kernels import platform
  assert platform.VERIFIED_GPU_KINDS == {}
  if jax.default_backend() == "cpu":
    assert dispatch.describe("auto") == (
        "Reward kernels: XLA (no Pallas kernels on the CPU).")
