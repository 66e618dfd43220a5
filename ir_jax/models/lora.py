"""LoRA on any ir_jax Transformer (Hu et al. 2021): y = x W + (alpha/r) x A B.

  model, params = lora.add_adapters(model, params, rank=8, alpha=16,
                                    targets=("query", "value"), rng=key)
  tx = lora.optimizer(optax.adam(1e-4))   # Moments for A and B only.
  ...train...
  model, params = lora.merge(model, params)   # Plain weights (hf.save does it)

Adapters live beside the frozen weights in the same params tree (`lora_a`,
`lora_b` next to a projection's `kernel`), so checkpoints, shardings (A
shares the kernel's input axis, B its output axis) and `nn.scan` need
nothing new. The optimizer gives the base weights `optax.set_to_zero`,
which keeps no state, so the frozen model is not held twice in optimizer
memory. The RL objectives' KL reference is `adapters_off(params)`: the
base function with B zeroed, reading the same base arrays (no second copy
of the weights).

Written here rather than taken from qwix (the LoRA library Tunix uses):
qwix rewrites nnx / Linen modules by interception at trace time; the
project's Transformer already names its projections, and a 40-line module
with explicit params keeps the params tree, the logical axes and the
checkpoint format plain.
"""

from typing import Any, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ir_jax.models.transformer import LORA_TARGETS, Transformer

ADAPTERS = ("lora_a", "lora_b")


def _is_adapter(path) -> bool:
  return any(getattr(k, "key", None) in ADAPTERS for k in path)


def labels(params) -> Any:
  """"lora" for adapter leaves, "frozen" for everything else (a logical-
  axis box counts as one leaf, so boxed params label alike)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "lora" if _is_adapter(path) else "frozen", params,
      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def optimizer(tx: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """`tx` on the adapters; the base weights get zero updates and no state."""
  return optax.multi_transform({"lora": tx, "frozen": optax.set_to_zero()},
                               labels)


def add_adapters(model: Transformer, params, *, rank: int,
                 alpha: float = 16.0,
                 targets: Sequence[str] = ("query", "key", "value", "out"),
                 rng: jax.Array) -> Tuple[Transformer, Any]:
  """(model with rank-`rank` adapters on `targets`, params: the given base
  weights plus fresh adapters, which start as a no-op)."""
  unknown = sorted(set(targets) - set(LORA_TARGETS))
  if rank <= 0 or unknown:
    raise ValueError(f"LoRA needs rank > 0 (got {rank}) and targets among "
                     f"{LORA_TARGETS} (unknown: {unknown}).")
  adapted = model.clone(lora_rank=int(rank), lora_alpha=float(alpha),
                        lora_targets=tuple(targets))
  fresh = nn.meta.unbox(adapted.init(rng, jnp.zeros((1, 1), jnp.int32))
                        ["params"])
  flat = flax.traverse_util.flatten_dict(fresh)
  base = flax.traverse_util.flatten_dict(params)
  missing = [k for k in flat if k[-1] not in ADAPTERS and k not in base]
  if missing:
    raise ValueError(f"params lack {['/'.join(k) for k in missing[:3]]}: "
                     "they are not this model's.")
  merged = {k: (v if k[-1] in ADAPTERS else base[k]) for k, v in flat.items()}
  return adapted, flax.traverse_util.unflatten_dict(merged)


def split(params) -> Tuple[Any, Any]:
  """(adapters, base): two flat {path tuple: array} dicts of `params`."""
  flat = flax.traverse_util.flatten_dict(params)
  return ({k: v for k, v in flat.items() if k[-1] in ADAPTERS},
          {k: v for k, v in flat.items() if k[-1] not in ADAPTERS})


def join(adapters, base) -> Any:
  """The params tree of `split`'s two halves."""
  return flax.traverse_util.unflatten_dict({**base, **adapters})


def adapters_off(params):
  """The base function's params: every B zeroed, base arrays shared."""
  return jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v)
      if getattr(path[-1], "key", None) == "lora_b" else v, params)


def merge(model: Transformer, params) -> Tuple[Transformer, Any]:
  """(model without adapters, params with W + (alpha/r) A B folded in).
  A no-op for a model without adapters."""
  if not model.lora_rank:
    return model, params
  scale = model.lora_alpha / model.lora_rank
  flat = flax.traverse_util.flatten_dict(params)
  out = {}
  for key, value in flat.items():
    if key[-1] in ADAPTERS:
      continue
    if key[-1] == "kernel" and key[:-1] + ("lora_a",) in flat:
      a, b = flat[key[:-1] + ("lora_a",)], flat[key[:-1] + ("lora_b",)]
      delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32),
                         b.astype(jnp.float32)) * scale
      value = (value.astype(jnp.float32) + delta).astype(value.dtype)
    out[key] = value
  return model.clone(lora_rank=0), flax.traverse_util.unflatten_dict(out)


def save_adapters(adapters, path: str, dtype: str = "bfloat16") -> None:
  """Writes LoRA adapters to an .npz: one array a path ('a/b/lora_a'
  keys). `adapters`: a params tree (its adapters are taken, `split`) or
  `split`'s flat {path tuple: array}. dtype "bfloat16" stores the bf16
  bits as uint16 (a few MB at rank 8 on a 135M model); "float32" stores
  them as they are. Written to a temporary file first, then renamed: a
  crash leaves the old file or none."""
  import os
  import ml_dtypes
  import numpy as np
  flat = adapters if isinstance(adapters, dict) and all(
      isinstance(k, tuple) for k in adapters) else split(adapters)[0]
  if dtype not in ("bfloat16", "float32"):
    raise ValueError(f"save_adapters: dtype {dtype!r} is not 'bfloat16' "
                     "or 'float32'.")
  def encode(v):
    v = np.asarray(v, np.float32)
    return v.astype(ml_dtypes.bfloat16).view(np.uint16) \
        if dtype == "bfloat16" else v
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".partial.npz"
  np.savez_compressed(tmp, **{"/".join(k): encode(v)
                              for k, v in flat.items()})
  os.replace(tmp, path)


def load_adapters(path: str):
  """{path tuple: float32 array} of `save_adapters`' file, either dtype
  (uint16 arrays are bf16 bits)."""
  import ml_dtypes
  import numpy as np
  with np.load(path) as z:
    return {tuple(k.split("/")): (
        z[k].view(ml_dtypes.bfloat16) if z[k].dtype == np.uint16 else z[k]
    ).astype(np.float32) for k in z.files}


__all__ = ["ADAPTERS", "add_adapters", "adapters_off", "join", "labels",
           "load_adapters", "merge", "optimizer", "save_adapters", "split"]
