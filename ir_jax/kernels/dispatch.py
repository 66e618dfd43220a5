"""Which code computes a reward: one policy for every Pallas kernel.

`implementation` is "xla", "pallas" or "auto":

* "pallas" runs the target platform's kernel (interpret mode on CPU) and
  raises, saying why, when the kernel cannot take the problem;
* "auto" runs the kernel on TPU, and on a GPU whose kind is in
  `platform.VERIFIED_GPU_KINDS` (the Mosaic GPU kernels passed their tests
  there), where it can take the problem; XLA everywhere else (CPU, GPUs
  not verified or older than Hopper, past the on-chip bounds), saying so
  once when it falls back on an accelerator;
* "xla" never runs a kernel.

The platform is `platform.target_platform()` at trace time, so the forward
and backward of a custom VJP agree and a cross-lowering picks the kernels
of the platform it lowers for.
"""

import sys
from typing import Optional, Tuple

import jax

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
  on_chip = platform.target_platform() in ("tpu", "gpu")
  if implementation == "auto" and on_chip and not problem:
    return kernel
  if implementation == "auto" and on_chip:
    _note_once(f"The Pallas {name} kernel is not used ({problem}): XLA "
               "computes it.")
  return None


_NOTED = set()


def _note_once(message: str) -> None:
  if message not in _NOTED:
    _NOTED.add(message)
    print(message, file=sys.stderr)


def _hopper_problem(forced: bool = True) -> str:
  """Why the Mosaic GPU kernels cannot run ("" if they can); `auto`
  (not forced) also needs a verified GPU kind."""
  if not platform.gpu_is_hopper():
    return "Mosaic GPU needs compute capability >= 9.0 (Hopper)"
  if not platform.mosaic_gpu_kernels():
    return (f"jax {jax.__version__} has no Mosaic GPU plgpu.kernel / "
            "emit_pipeline (the API of these kernels)")
  if not forced and not platform.gpu_verified():
    return (f"its Mosaic GPU kernel has not been verified on "
            f"{platform.gpu_kind()} (ir_jax/kernels/verified_gpu.json, "
            "written by benchmarks/device_check.sh; "
            "implementation='pallas' runs it anyway)")
  return ""


def describe(implementation: str) -> str:
  """One line: which code computes the reward kernels of a run, and why."""
  target = platform.target_platform()
  if implementation == "xla":
    return "Reward kernels: XLA (implementation='xla')."
  if target == "gpu":
    problem = _hopper_problem(forced=implementation == "pallas")
    if problem:
      return f"Reward kernels: XLA on this GPU ({problem})."
    return (f"Reward kernels: Mosaic GPU (Pallas) where a problem fits, XLA "
            f"past the bounds (implementation={implementation!r}, "
            f"{platform.gpu_kind() or 'cross-lowering'}).")
  if target == "tpu":
    return ("Reward kernels: Mosaic TPU (Pallas) where a problem fits, XLA "
            f"past the bounds (implementation={implementation!r}).")
  if implementation == "pallas":
    return "Reward kernels: Pallas in interpret mode on the CPU (slow)."
  return "Reward kernels: XLA (no Pallas kernels on the CPU)."


def levenshtein_kernel(implementation: str, num_target: int
                       ) -> Optional[Tuple[str, object]]:
  """None (XLA) or the exact kernel's (platform "tpu" | "gpu", interpret)
  for targets of `num_target` tokens."""
  kind = "gpu" if platform.target_platform() == "gpu" else "tpu"
  problem = _hopper_problem(implementation == "pallas") if kind == "gpu" \
      else ""
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
    problem = _hopper_problem(implementation == "pallas")
    if not problem and num_pred > soft_gpu.max_pred_length():
      problem = (f"{num_pred} tokens (the shorter side) do not fit shared "
                 f"memory (at most {soft_gpu.max_pred_length()})")
  elif target == "tpu" and not soft_tpu.fits_vmem(num_pred, batch):
    problem = f"{num_pred} tokens (the shorter side) do not fit VMEM"
  kernel = ("pallas_gpu" if target == "gpu" else "pallas_tpu",
            platform.pallas_interpret())
  return _select(implementation, "soft-edit-distance", kernel, problem)
