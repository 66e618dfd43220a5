"""Embedding cosine reward between a predicted distribution and a target."""

from typing import Optional

import jax
import jax.numpy as jnp

from ir_jax.rewards import _checks

_EPS = 1e-8


def _masked_mean(x, lengths):
  """Mean of x[..., L, D] over the first `lengths[...]` positions (0 if none)."""
  valid = jnp.arange(x.shape[-2]) < lengths[..., None]
  total = jnp.sum(jnp.where(valid[..., None], x, 0.0), axis=-2)
  return total / jnp.maximum(lengths, 1)[..., None].astype(x.dtype)


def _cosine(u, v):
  """cos(u, v) over the last axis; 0 when either vector is 0."""
  norms = jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1)
  return jnp.sum(u * v, axis=-1) / jnp.maximum(norms, _EPS)


def _prepare(logits, targets, embeddings):
  logits = _checks.floats("logits", logits, min_rank=2)
  targets = _checks.tokens("targets", targets)
  embeddings = _checks.floats("embeddings", embeddings, min_rank=2)
  if embeddings.ndim != 2 or embeddings.shape[0] != logits.shape[-1]:
    raise ValueError(
        f"`embeddings` must be [V, D] with V = logits.shape[-1] = "
        f"{logits.shape[-1]}, got {embeddings.shape}.")
  batch = _checks.same_batch(("logits", "targets"),
                             (logits.shape[:-2], targets.shape[:-1]))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  expected = probs @ embeddings.astype(jnp.float32)              # [..., N, D]
  target_emb = embeddings.astype(jnp.float32)[
      jnp.clip(targets, 0, embeddings.shape[0] - 1)]             # [..., M, D]
  return expected, target_emb, batch


def cosine_reward(logits: jax.Array,
                  targets: jax.Array,
                  embeddings: jax.Array,
                  *,
                  pred_lengths: Optional[jax.Array] = None,
                  target_lengths: Optional[jax.Array] = None) -> jax.Array:
  """Cosine similarity of mean expected and mean target embeddings.

    u = mean_{i < n} softmax(logits_i) @ E,   v = mean_{j < m} E[targets_j],
    reward = cos(u, v) = <u, v> / (|u| |v|).

  Order-free (a bag-of-embeddings similarity); differentiable w.r.t. logits
  (and `embeddings`, which callers usually pass through `stop_gradient`). A
  zero-length side gives a zero vector and a reward of 0.

  Args:
    logits: float[..., N, V] prediction logits.
    targets: int[..., M] target ids.
    embeddings: float[V, D] embedding table E.
    pred_lengths, target_lengths: optional int[...] (clamped to [0, N/M]).

  Returns:
    float32[...] in [-1, 1].

  >>> import jax.numpy as jnp
  >>> logits = jnp.log(jnp.array([[.01, .97, .01, .01], [.01, .01, .97, .01]]))
  >>> round(float(cosine_reward(logits, jnp.array([2, 1]), jnp.eye(4))), 3)
  1.0
  >>> round(float(cosine_reward(logits, jnp.array([3, 3]), jnp.eye(4))), 3)
  0.014
  """
  expected, target_emb, batch = _prepare(logits, targets, embeddings)
  n = _checks.lengths("pred_lengths", pred_lengths, batch, logits.shape[-2])
  m = _checks.lengths("target_lengths", target_lengths, batch,
                      targets.shape[-1])
  return _cosine(_masked_mean(expected, n), _masked_mean(target_emb, m))


def cosine_reward_per_position(logits: jax.Array,
                               targets: jax.Array,
                               embeddings: jax.Array,
                               *,
                               lengths: Optional[jax.Array] = None
                               ) -> jax.Array:
  """Per-position cosine `cos(softmax(logits_i) @ E, E[targets_i])`.

  For teacher-forced positions (prediction i aligned with target i).

  Args:
    logits: float[..., L, V]; targets: int[..., L]; embeddings: float[V, D].
    lengths: optional int[...]; positions at or past it get 0.

  Returns:
    float32[..., L].
  """
  expected, target_emb, batch = _prepare(logits, targets, embeddings)
  if logits.shape[-2] != targets.shape[-1]:
    raise ValueError(
        f"`logits` and `targets` must have the same length, got "
        f"{logits.shape[-2]} and {targets.shape[-1]}.")
  lengths = _checks.lengths("lengths", lengths, batch, targets.shape[-1])
  valid = jnp.arange(targets.shape[-1]) < lengths[..., None]
  return jnp.where(valid, _cosine(expected, target_emb), 0.0)
