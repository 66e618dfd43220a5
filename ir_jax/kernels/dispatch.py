"""Which code computes a reward: one policy for every Pallas kernel.

`implementation` is "xla", "pallas" or "auto":

* "pallas" runs the target platform's kernel (interpret mode on CPU) and
  raises, saying why, when the kernel cannot take the problem;
* "auto" runs the kernel on TPU and GPU where it can take the problem, and
  XLA everywhere else (CPU, GPUs older than Hopper, past the on-chip bounds);
* "xla" never runs a kernel.

The platform is `platform.target_platform()` at trace time, so the forward
and backward of a custom VJP agree and a cross-lowering picks the kernels
of the platform it lowers for.
"""

from typing import Optional, Tuple

from ir_jax.config import IMPLEMENTATIONS
from ir_jax.kernels import levenshtein as levenshtein_kernels
from ir_jax.kernels import platform
from ir_jax.kernels import soft_edit_distance as soft_tpu
from ir_jax.kernels import soft_edit_distance_gpu as soft_gpu


def check_implementation(implementation: str) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError("`implementation` must be 'auto', 'xla' or 'pallas', "
                     f"got {implementation!r}.")


def _select(implementation: str, name: str, kernel, problem: str):
  """`kernel` if the policy runs it, None for XLA; raises for a forced
  kernel that cannot run (`problem` says why)."""
  check_implementation(implementation)
  if implementation == "pallas":
    if problem:
      raise ValueError(f"The Pallas {name} kernel does not run here: "
                       f"{problem}; use implementation='xla' (or 'auto', "
                       "which falls back to it).")
    return kernel
  if (implementation == "auto" and not problem and
      platform.target_platform() in ("tpu", "gpu")):
    return kernel
  return None


def _hopper_problem() -> str:
  if not platform.gpu_is_hopper():
    return "Mosaic GPU needs compute capability >= 9.0 (Hopper)"
  return ""


def levenshtein_kernel(implementation: str, num_target: int
                       ) -> Optional[Tuple[str, object]]:
  """None (XLA) or the exact kernel's (platform "tpu" | "gpu", interpret)
  for targets of `num_target` tokens."""
  kind = "gpu" if platform.target_platform() == "gpu" else "tpu"
  problem = _hopper_problem() if kind == "gpu" else ""
  limit = levenshtein_kernels.max_target_length(kind)
  if not problem and num_target > limit:
    problem = (f"targets of {num_target} tokens exceed the {kind.upper()} "
               f"kernel's {limit}")
  return _select(implementation, "Levenshtein", (kind, platform.pallas_interpret()),
                 problem)


def soft_edit_distance_kernel(implementation: str, num_pred: int,
                              batch: int = 1) -> Optional[Tuple[str, object]]:
  """None (XLA) or the soft edit distance kernel's ("pallas_tpu" |
  "pallas_gpu", interpret) for `batch` pairs whose shorter side (the
  wavefront's rows) has `num_pred` tokens: a diagonal must fit on chip."""
  target = platform.target_platform()
  problem = ""
  if target == "gpu":
    problem = _hopper_problem()
    if not problem and num_pred > soft_gpu.max_pred_length():
      problem = (f"{num_pred} tokens (the shorter side) do not fit shared "
                 f"memory (at most {soft_gpu.max_pred_length()})")
  elif target == "tpu" and not soft_tpu.fits_vmem(num_pred, batch):
    problem = f"{num_pred} tokens (the shorter side) do not fit VMEM"
  kernel = ("pallas_gpu" if target == "gpu" else "pallas_tpu",
            platform.pallas_interpret())
  return _select(implementation, "soft-edit-distance", kernel, problem)
