"""Which platform's kernels a trace is for: TPU, GPU or CPU (interpret).

`target_platform()` is read at trace time by the reward functions that have
Pallas kernels (`soft_edit_distance`, `levenshtein`); `lowering_for`
overrides it for cross-lowering from a host without that accelerator.
"""

import contextlib
import contextvars
import functools
import json
import os
from typing import Optional

import jax

_LOWERING_FOR = contextvars.ContextVar("ir_jax_lowering_for", default=None)


@contextlib.contextmanager
def lowering_for(platform: str, interpret=False):
  """Selects the kernels of `platform` ("tpu", "gpu" or "cpu") whatever the
  host, for cross-lowering, e.g. on a CPU host

    with lowering_for("gpu"):
      jax.export.export(jax.jit(f), platforms=["cuda"])(*args)

  lowers the Mosaic GPU kernel. `interpret` (True or a Pallas interpret
  params object) runs that platform's kernel code in interpret mode here
  instead (how the tests check the GPU kernel on CPU)."""
  if platform not in ("tpu", "gpu", "cpu"):
    raise ValueError(f"platform must be 'tpu', 'gpu' or 'cpu', got "
                     f"{platform!r}.")
  token = _LOWERING_FOR.set((platform, interpret))
  try:
    yield
  finally:
    _LOWERING_FOR.reset(token)


def target_platform() -> str:
  """The platform being compiled for: `lowering_for`'s if set, else the
  devices of the mesh in context (`jax.set_mesh`, also inside jit and
  shard_map; an AOT compile for a TPU topology from a CPU host says "tpu"),
  else the default backend."""
  override = _LOWERING_FOR.get()
  if override is not None:
    return override[0]
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None)
  if not mesh.empty and device is not None:
    return device.platform
  return jax.default_backend()


def pallas_interpret():
  """Interpret mode off the accelerators (CPU): Pallas runs the kernel body
  as JAX ops, so tests exercise the exact kernel code here."""
  override = _LOWERING_FOR.get()
  if override is not None:
    return override[1]
  return target_platform() not in ("tpu", "gpu")


def gpu_is_hopper() -> bool:
  """Mosaic GPU needs compute capability >= 9.0 (H100/H200 and newer). True
  when lowering for a GPU from a host without one (`lowering_for`)."""
  if jax.default_backend() != "gpu":
    return True
  capability = getattr(jax.devices()[0], "compute_capability", "9.0")
  return float(capability) >= 9.0


@functools.lru_cache(maxsize=None)
def mosaic_gpu_kernels() -> bool:
  """Whether this jax has the Mosaic GPU API the GPU kernels are written on
  (`plgpu.kernel` with `plgpu.emit_pipeline`, kernels/gpu_grid.py): jax
  0.10.2 and 0.12.x both lower it for CUDA. (jax 0.12 no longer lowers the
  `pl.pallas_call` form these kernels had before.)"""
  try:
    # pylint: disable=g-import-not-at-top
    from jax.experimental.pallas import mosaic_gpu as plgpu
  except ImportError:
    return False
  return all(hasattr(plgpu, name) for name in
             ("kernel", "emit_pipeline", "copy_smem_to_gmem",
              "wait_smem_to_gmem", "commit_smem"))


def mosaic_gpu_interpreter() -> bool:
  """Whether this jax can run the GPU kernels in interpret mode off a GPU
  (the Mosaic GPU interpreter, `plgpu.InterpretGPUParams`: jax >= 0.12);
  without it they only lower."""
  from jax.experimental.pallas import mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  return hasattr(plgpu, "InterpretGPUParams")


def _verified_kinds() -> dict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "verified_gpu.json")
  with open(path) as f:
    return dict(json.load(f)["kinds"])


# GPU kinds where the Mosaic GPU kernels passed their tests against XLA on
# the device ({kind: {"date", "jax", ...}}; kernels/verified_gpu.json,
# written by benchmarks/device_check.sh). Empty: none has been run yet.
VERIFIED_GPU_KINDS = _verified_kinds()


def gpu_kind() -> Optional[str]:
  """The GPU's `device_kind` ("NVIDIA H100 80GB HBM3"); None off a GPU
  backend (a cross-lowering from a host without one)."""
  if jax.default_backend() != "gpu":
    return None
  return str(jax.devices()[0].device_kind)


def gpu_verified() -> bool:
  """Whether `auto` may run the Mosaic GPU kernels: the GPU's kind is in
  `VERIFIED_GPU_KINDS`. Cross-lowering for a GPU from another host
  (`lowering_for("gpu")`) is an explicit request for its kernels: True."""
  kind = gpu_kind()
  return kind is None or kind in VERIFIED_GPU_KINDS
