"""Helpers shared by the objectives: masks, log-probs, the mixed-in CE."""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from ir_jax import decode, models
from ir_jax.objectives.supervised import masked_cross_entropy

Metrics = Dict[str, jax.Array]


def token_mask(lengths: jax.Array, length: int) -> jax.Array:
  """bool[B, T]: positions t < lengths."""
  return jnp.arange(length)[None] < lengths[:, None]


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log pi(y_t | y_<t): float32[B, T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def policy_logprobs(model, params, samples, temperature: float, rng=None
                    ) -> Tuple[jax.Array, jax.Array]:
  """(log pi(y_t | y_<t) float32[B, T] under `temperature`, logits): the
  learner's side of the sampler's `logprobs` (PAD excluded, as there)."""
  logits = models.target_logits(model, params, samples, rng)
  scaled = decode.without_pad(logits.astype(jnp.float32),
                              *models.special_ids(model)) / temperature
  logp = token_logprobs(scaled, samples["target"])
  # PAD follows a sample's end and is never sampled: its log-prob is -inf.
  # Masked out of every loss, an -inf there still turns the gradient NaN
  # (0 * inf through exp and the k3 KL), so it scores 0, as the sampler's.
  real = token_mask(samples["target_lengths"], logp.shape[1])
  return jnp.where(real, logp, 0.0), logits


def ce_term(config, model, params, batch, alpha):
  """The CE mixed into RL objectives; skipped (0) only when alpha is fixed
  at 1 (`alpha_schedule="constant"`): a warm-up ramps alpha from 0, and the
  adaptive controller moves it, so CE weighs (1 - alpha) > 0 there."""
  del alpha  # Traced: whether CE is needed is decided by the config.
  obj = config.objective
  if float(obj.alpha) >= 1.0 and obj.alpha_schedule == "constant":
    return jnp.zeros(())
  logits = models.target_logits(model, params, batch)
  return masked_cross_entropy(logits, batch["target"], batch["target_lengths"],
                              config.optim.label_smoothing)[0]
