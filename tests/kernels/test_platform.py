"""Which platform a trace is for: `lowering_for` overrides, nests, resets."""

import jax
import pytest

from ir_jax.kernels import platform


def test_lowering_for_overrides_and_resets():
  host = jax.default_backend()
  assert platform.target_platform() == host
  assert platform.pallas_interpret() == (host not in ("tpu", "gpu"))
  with platform.lowering_for("tpu"):
    assert platform.target_platform() == "tpu"
    assert platform.pallas_interpret() is False
    with platform.lowering_for("gpu", interpret=True):
      assert platform.target_platform() == "gpu"
      assert platform.pallas_interpret() is True
      assert platform.gpu_is_hopper() or host == "gpu"
    assert platform.target_platform() == "tpu"
  assert platform.target_platform() == host
  with pytest.raises(ValueError, match="platform must be"):
    with platform.lowering_for("cuda"):
      pass
