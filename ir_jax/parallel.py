"""Meshes, logical sharding rules, shardings and multi-host set-up.

Sharding is declarative and kept apart from the models: models name their
param axes (`vocab`, `embed`, `mlp`, `heads`, `layers`), the config's
`logical_rules` map those names to mesh axes (`data`, `fsdp`, `tensor`), and
this module turns both into `NamedSharding`s for `jax.jit`. The mesh axes,
default rules and the mesh-size arithmetic live in `ir_jax.config` (checked
there, before any device work).
"""

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ir_jax.config import BATCH_AXES, DEFAULT_RULES, MESH_AXES, mesh_shape

def make_mesh(mesh_config, devices: Optional[Sequence[Any]] = None):
  """The (data, fsdp, tensor) mesh with Auto axes (logical-rule sharding)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def rules_from_config(config) -> Tuple:
  rules = config.get("logical_rules") or DEFAULT_RULES
  return tuple((name, tuple(ax) if isinstance(ax, list) else ax)
               for name, ax in rules)


def logical_to_shardings(boxed_tree, mesh, rules):
  """NamedShardings for a pytree of (possibly) `nn.LogicallyPartitioned`
  leaves (unboxed leaves are replicated). Leafless nodes, such as optax's
  MaskedNode for params a `multi_transform` freezes, stay as they are."""
  boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
  def sharding(leaf):
    spec = (nn.logical_to_mesh_axes(leaf.names, rules) if boxed(leaf)
            else P())
    return NamedSharding(mesh, spec)
  return jax.tree.map(sharding, boxed_tree, is_leaf=boxed)


def check_divisible(abstract_tree, shardings) -> None:
  """Raises when a sharded dim does not divide by its mesh axes."""
  def check(path, leaf, sharding):
    if not hasattr(leaf, "shape"):
      return
    for dim, axes in zip(leaf.shape, sharding.spec):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      size = math.prod(sharding.mesh.shape[a] for a in axes)
      if dim % size:
        raise ValueError(
            f"{jax.tree_util.keystr(path)} has shape {leaf.shape}: dim {dim} "
            f"is sharded over {axes} (size {size}) and does not divide. "
            "Change the model size, config.mesh or config.logical_rules.")
  jax.tree_util.tree_map_with_path(check, abstract_tree, shardings)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Dict[str, np.ndarray], mesh) -> Dict[str, jax.Array]:
  """Global arrays from each process's slice of the batch (leading axis)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}


def batch_map(fn, batched: Sequence[jax.Array],
              replicated_args: Sequence[jax.Array] = ()):
  """`fn(*batched, *replicated_args)` per batch shard under `jax.shard_map`.

  `batched` arrays have the batch as leading axis and are split over the
  mesh's batch axes; `replicated_args` are whole on every shard; the result
  has the batch as leading axis. With no mesh in context (or batch axes of
  size 1) `fn` runs as is. This keeps per-example work such as the reward
  DP local to each shard: logits are never all-gathered across the batch.
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  if mesh.empty or not axes or math.prod(mesh.shape[a] for a in axes) == 1:
    return fn(*batched, *replicated_args)
  specs = (P(axes),) * len(batched) + (P(),) * len(replicated_args)
  return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(axes),
                       check_vma=False)(*batched, *replicated_args)


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """`jax.distributed.initialize`; on a Cloud TPU VM pass nothing.

  On CPU, collectives across processes go through gloo.
  """
  try:  # Only affects the CPU backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # A JAX without the flag.
    pass
  kwargs = {}
  if coordinator_address:
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  jax.distributed.initialize(**kwargs)
