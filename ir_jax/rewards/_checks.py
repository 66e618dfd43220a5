"""Argument checks shared by the reward functions.

Every check runs on static information (shapes, dtypes, Python numbers) so it
works the same under `jax.jit`; traced values are never inspected.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def tokens(name: str, x, min_rank: int = 1) -> jax.Array:
  """Returns `x` as an integer array of rank >= `min_rank`, or raises."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(
        f"`{name}` must hold integer token ids, got dtype {x.dtype}; "
        f"cast with `{name}.astype(jnp.int32)`.")
  if x.ndim < min_rank:
    raise ValueError(
        f"`{name}` must have rank >= {min_rank} ([..., length]), "
        f"got shape {x.shape}.")
  return x


def floats(name: str, x, min_rank: int) -> jax.Array:
  """Returns `x` as a floating array of rank >= `min_rank`, or raises."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"`{name}` must be a floating array, got dtype {x.dtype}.")
  if x.ndim < min_rank:
    raise ValueError(
        f"`{name}` must have rank >= {min_rank}, got shape {x.shape}.")
  return x


def same_batch(names: Sequence[str], shapes: Sequence[tuple]) -> tuple:
  """Checks that all batch shapes are equal; returns the common one."""
  first = tuple(shapes[0])
  for name, shape in zip(names[1:], shapes[1:]):
    if tuple(shape) != first:
      raise ValueError(
          f"Batch shapes differ: `{names[0]}` has batch shape {first} but "
          f"`{name}` has {tuple(shape)}; leading dims must match exactly.")
  return first


def lengths(name: str, x: Optional[jax.Array], batch_shape: tuple,
            full: int) -> jax.Array:
  """Returns int32 lengths of shape `batch_shape`, clamped to [0, full].

  None means every sequence has length `full`. Traced values outside the range
  are clamped rather than rejected, since they cannot be inspected under jit.
  """
  if x is None:
    return jnp.full(batch_shape, full, jnp.int32)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"`{name}` must be an integer array, got {x.dtype}.")
  if tuple(x.shape) != tuple(batch_shape):
    raise ValueError(
        f"`{name}` must have the batch shape {tuple(batch_shape)}, "
        f"got {tuple(x.shape)}.")
  return jnp.clip(x.astype(jnp.int32), 0, full)


def positive(name: str, value) -> None:
  """Raises when a Python/NumPy number is not > 0 (traced values pass)."""
  if isinstance(value, (int, float, np.number)) or (
      isinstance(value, np.ndarray) and value.ndim == 0):
    if not float(value) > 0:
      raise ValueError(f"`{name}` must be > 0, got {value}.")
