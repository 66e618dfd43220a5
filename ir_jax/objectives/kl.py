"""KL(pi || pi_ref) penalties: exact over the sampler's support, and
Schulman's k3 estimate on the sampled tokens."""

from typing import Optional

import jax
import jax.numpy as jnp

from ir_jax import models
from ir_jax.objectives._common import token_mask


def k3_kl(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate on the sampled tokens (Schulman's
  k3, Tunix's `low_var_kl`): `exp(d) - d - 1` with `d = log pi_ref - log pi`.
  Always >= 0. Unbiased only when the tokens are drawn from pi itself
  (on-policy) from its full distribution: with top-k / top-p truncation,
  or after inner updates have moved pi away from the sampler, it is a
  biased estimate.

  Args:
    logprobs: float[...] log pi of the sampled tokens.
    ref_logprobs: float[...] log pi_ref of the same tokens.

  Returns:
    float32[...], elementwise.
  """
  d = ref_logprobs.astype(jnp.float32) - logprobs.astype(jnp.float32)
  return jnp.exp(d) - d - 1.0


def exact_kl(logits: jax.Array, ref_logits: jax.Array,
             temperature: float = 1.0, pad_id: Optional[int] = None,
             eos_id: Optional[int] = None) -> jax.Array:
  """Per-token KL(pi || pi_ref) summed over the vocabulary: float32[B, T].

  With `pad_id` the sum runs over the support the sampler draws from:
  PAD is never sampled (`decode.without_pad`; unless it is EOS), so both
  distributions are renormalised without it, as the sampled log-probs
  are. PAD gets a large finite negative logit, not -inf, so the gradient
  stays finite.

  Args:
    logits, ref_logits: float[B, T, V] of the policy and the reference.
    temperature: the sampling temperature both are divided by.
    pad_id, eos_id: the model's special ids (PAD left out unless it is EOS).

  Returns:
    float32[B, T]: sum_v pi(v) (log pi(v) - log pi_ref(v)).
  """
  logits = logits.astype(jnp.float32) / temperature
  ref = jax.lax.stop_gradient(ref_logits).astype(jnp.float32) / temperature
  if pad_id is not None and pad_id != eos_id:
    drop = jnp.arange(logits.shape[-1]) == pad_id
    logits = jnp.where(drop, -1e9, logits)
    ref = jnp.where(drop, -1e9, ref)
  logp = jax.nn.log_softmax(logits, -1)
  logq = jax.nn.log_softmax(ref, -1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_to_reference(logits: jax.Array, ref_logits: jax.Array,
                    lengths: jax.Array, pad_id: Optional[int] = None,
                    eos_id: Optional[int] = None) -> jax.Array:
  """Mean over valid positions of KL(pi || pi_ref), exact over the vocab
  the sampler draws from (PAD excluded with `pad_id`: `exact_kl`)."""
  kl = exact_kl(logits, ref_logits, pad_id=pad_id, eos_id=eos_id)
  mask = token_mask(lengths, logits.shape[1])
  return jnp.sum(jnp.where(mask, kl, 0.0)) / jnp.maximum(mask.sum(), 1)


def kl_penalty(config, model, logits: jax.Array, samples, ref_params
               ) -> jax.Array:
  """`kl_to_reference` of the policy's teacher-forced `logits` on `samples`
  against `ref_params`' logits: a scalar, 0 when `rl.kl_weight` is 0."""
  if not config.rl.kl_weight:
    return jnp.zeros(())
  ref_logits = models.target_logits(model, ref_params, samples)
  return kl_to_reference(logits, ref_logits, samples["target_lengths"],
                         *models.special_ids(model))
