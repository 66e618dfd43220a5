"""A (parallel, sequential) Pallas grid on Mosaic GPU's `plgpu.kernel`.

The GPU kernels here were written for `pl.pallas_call` with Mosaic GPU
compiler params: grid (B, S), axis 0 parallel (one CUDA block each), axis 1
sequential, every operand a `BlockSpec` with an index map (b, k). jax 0.12
no longer lowers that form (only `plgpu.kernel` and the deprecated Triton
backend); `grid_call` gives the kernels the same grid on the API both jax
lines lower (0.10.2 and 0.12.x):

  * `plgpu.kernel` with grid (B,) named "b": one CUDA block (a warpgroup)
    per b;
  * the sequential axis is `plgpu.emit_pipeline` over k: each input's
    block for (b, k) is copied GMEM -> SMEM by TMA, `stages` steps in
    flight (2: the next block lands while this one runs);
  * outputs are SMEM buffers the kernel writes; one whose block moves with
    k has `stages` slots and is copied SMEM -> GMEM by TMA after every step
    (the slot is reused only once its copy has read it), one whose block
    does not move is copied once, after the last step. (emit_pipeline's
    own output copies are predicated, which the Mosaic GPU interpreter does
    not run; these are not, so interpret mode runs this exact code.)

The kernel is called as kernel(k, num_k, *input_refs, *output_refs,
*scratch_refs), with the blocks' shapes as `pallas_call` would give them.

Interpret mode (the tests' path off a GPU) is the Mosaic GPU interpreter
(`plgpu.InterpretGPUParams`: SMEM, TMA copies and barriers simulated),
which jax >= 0.12 has; on older jax these kernels only lower.
"""

import functools
from typing import Any, Callable, Sequence

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu


def interpret_params(interpret: Any) -> Any:
  """`interpret` as `plgpu.kernel` takes it: None (compile for the GPU),
  the Mosaic GPU interpreter's params for True, or the params given."""
  if interpret is None or interpret is False:
    return None
  if interpret is not True:
    return interpret
  params = getattr(plgpu, "InterpretGPUParams", None)
  if params is None:
    raise RuntimeError(
        f"jax {jax.__version__} has no Mosaic GPU interpreter (jax >= 0.12 "
        "does): the GPU kernels cannot run in interpret mode here; they "
        "still lower for CUDA (`lowering_for('gpu')`).")
  return params()


def _moves(spec: pl.BlockSpec, steps: int) -> bool:
  """Whether the block of `spec` changes along the sequential axis."""
  if steps == 1:
    return False
  first, second = spec.index_map(0, 0), spec.index_map(0, 1)
  return any(int(a) != int(b) for a, b in zip(first, second))


def _block(ref, spec: pl.BlockSpec, b, k):
  """The GMEM window of `ref` that `spec` maps (b, k) to."""
  return ref.at[tuple(pl.ds(i * size, size) for i, size in
                      zip(spec.index_map(b, k), spec.block_shape))]


def grid_call(kernel: Callable[..., None], *, grid: Sequence[int],
              in_specs: Sequence[pl.BlockSpec],
              out_specs: Sequence[pl.BlockSpec],
              out_shape: Sequence[jax.ShapeDtypeStruct],
              scratch_shapes: Sequence[Any] = (), stages: int = 2,
              interpret: Any = None, name: str = "kernel"):
  """`pl.pallas_call(kernel, grid=(B, S), ...)` with axis 1 sequential,
  on `plgpu.kernel` (module docstring); `kernel` also takes (k, S) first.
  Returns a function of the inputs giving the list of outputs."""
  batch, steps = grid
  moving = [_moves(spec, steps) for spec in out_specs]
  buffers = [plgpu.SMEM(((stages,) if move else ()) + tuple(spec.block_shape),
                        shape.dtype)
             for spec, shape, move in zip(out_specs, out_shape, moving)]
  num_in, num_out, num_moving = len(in_specs), len(out_specs), sum(moving)

  def body(*refs):
    inputs, outputs = refs[:num_in], refs[num_in:num_in + num_out]
    bufs = refs[num_in + num_out:num_in + 2 * num_out]
    scratch = refs[num_in + 2 * num_out:]
    b = lax.axis_index("b")

    def step(indices, *in_refs):
      k = indices[0]
      slot = lax.rem(k, stages)
      if num_moving:   # Slot `slot`'s copies of step k - stages are done.
        plgpu.wait_smem_to_gmem(num_moving * (stages - 1),
                                wait_read_only=True)
      out_refs = [buf.at[slot] if move else buf
                  for buf, move in zip(bufs, moving)]
      kernel(k, steps, *in_refs, *out_refs, *scratch)
      # Orders this step's SMEM reads and writes before the TMA copies that
      # follow: the outputs' below and emit_pipeline's fetch of step
      # k + stages into the input slot just read (without it the Mosaic GPU
      # interpreter's race detector sees that fetch race the reads).
      plgpu.commit_smem()
      if num_moving:
        for buf, out, spec, move in zip(bufs, outputs, out_specs, moving):
          if move:
            plgpu.copy_smem_to_gmem(buf.at[slot], _block(out, spec, b, k))

    plgpu.emit_pipeline(
        step, grid=(steps,),
        in_specs=[pl.BlockSpec(spec.block_shape,
                               functools.partial(
                                   lambda k, spec: spec.index_map(b, k),
                                   spec=spec))
                  for spec in in_specs],
        max_concurrent_steps=stages)(*inputs)
    plgpu.commit_smem()
    for buf, out, spec, move in zip(bufs, outputs, out_specs, moving):
      if not move:
        plgpu.copy_smem_to_gmem(buf, _block(out, spec, b, steps - 1))
    plgpu.wait_smem_to_gmem(0)

  body.__name__ = name
  return plgpu.kernel(body, out_type=list(out_shape),
                      scratch_types=[*buffers, *scratch_shapes],
                      grid=(batch,), grid_names=("b",),
                      interpret=interpret_params(interpret))
