"""`jax.vmap` for kernels whose arguments share a leading batch axis.

Mosaic GPU rejects a vmapped `pallas_call` (no vmapped grid dimensions), and
for every backend one launch over a bigger batch beats a vmapped grid. So
under `jax.vmap` the mapped axis is folded into the kernel's batch axis.
"""

import jax
import jax.numpy as jnp
from jax import lax


def fold_vmap(fn, num_batched: int):
  """Wraps `fn(*args)`: the first `num_batched` args are arrays [B, ...]
  and every output is [B, ...]; the remaining args are scalars. Under
  vmap (axis size A) the mapped arrays become [A * B, ...] for one call;
  if a scalar is mapped, the calls run one after another (`lax.map`)."""
  wrapped = jax.custom_batching.custom_vmap(fn)

  @wrapped.def_vmap
  def rule(axis_size, in_batched, *args):
    expand = lambda x, b: x if b else jnp.broadcast_to(
        x, (axis_size,) + jnp.shape(x))
    out_batched = lambda out: jax.tree.map(lambda _: True, out)
    if any(in_batched[num_batched:]):
      args = [expand(x, b) for x, b in zip(args, in_batched)]
      out = lax.map(lambda xs: fn(*xs), args)
      return out, out_batched(out)
    lead = [expand(x, b) for x, b in zip(args[:num_batched], in_batched)]
    out = fn(*[x.reshape((-1,) + x.shape[2:]) for x in lead],
             *args[num_batched:])
    out = jax.tree.map(lambda y: y.reshape((axis_size, -1) + y.shape[1:]),
                       out)
    return out, out_batched(out)

  return wrapped
