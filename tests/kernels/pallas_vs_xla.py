"""The kernel tests' one comparison: values and gradients of the soft edit
distance from the XLA wavefront and from a Pallas kernel."""

import jax
import jax.numpy as jnp

from ir_jax import rewards


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
  with rewards.lowering_for(platform, interpret=interpret):
    return run("xla"), run("pallas")
