"""Minimum word error rate training (Prabhavalkar et al. 2018; MRT, Shen
et al. 2016): the expected risk over each prompt's N-best list under the
model's probabilities renormalised over that list, mixed with CE."""

from typing import Tuple

import jax
import jax.numpy as jnp

from ir_jax import decode
from ir_jax.objectives._common import (Metrics, ce_term, policy_logprobs,
                                       token_mask)
from ir_jax.objectives.kl import kl_penalty
from ir_jax.objectives.scoring import (group_source, reward_metrics,
                                       sample_and_score, score_candidates)


def first_occurrence(tokens: jax.Array) -> jax.Array:
  """bool[B, K]: candidate k of tokens int32[B, K, T] is not a repeat of an
  earlier one of its row (PAD after each end, so equal outputs compare
  equal)."""
  k = tokens.shape[1]
  same = jnp.all(tokens[:, :, None] == tokens[:, None], axis=-1)  # [B, K, K]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)
  return ~jnp.any(same & earlier[None], axis=-1)


def expected_risk(seq_logprobs: jax.Array, risks: jax.Array,
                  valid: jax.Array) -> jax.Array:
  """MWER's loss: mean over prompts of sum_k p_k (risk_k - mean risk).

  seq_logprobs float32[B, K]: log p(y_k | x); risks float32[B, K]
  (constants); valid bool[B, K]: the candidates in the list (repeats and
  empty beam slots out). p_k = softmax over the valid k of log p (the
  N-best renormalised). The mean-risk baseline changes the value, not the
  gradient: d loss / d log p_k = p_k (risk_k - sum_j p_j risk_j) / B.
  """
  risks = jax.lax.stop_gradient(risks.astype(jnp.float32))
  logits = jnp.where(valid, seq_logprobs.astype(jnp.float32), -1e30)
  p = jax.nn.softmax(logits, axis=-1)
  count = jnp.maximum(valid.sum(-1, keepdims=True), 1)
  mean = jnp.sum(jnp.where(valid, risks, 0.0), -1, keepdims=True) / count
  return jnp.mean(jnp.sum(jnp.where(valid, p * (risks - mean), 0.0), -1))


def sequence_logprobs(model, params, samples, rng=None):
  """(float32[B]: log p(y | x) of whole outputs, PAD excluded as the
  sampler and the beam exclude it; the teacher-forced logits)."""
  logp, logits = policy_logprobs(model, params, samples, 1.0, rng)
  mask = token_mask(samples["target_lengths"], logp.shape[1])
  return jnp.sum(jnp.where(mask, logp, 0.0), -1), logits


def mwer_loss(config, model, params, batch, rng, *, alpha, reward_embeddings,
              ref_params=None, byte_table=None) -> Tuple[jax.Array, Metrics]:
  """`(1 - alpha) CE + alpha (expected risk + kl_weight KL)`, `rl.mode="mwer"`.

  The N-best list per prompt is `rl.num_samples` = K candidates:
  `rl.candidates="beam"`, the beam's K best (`decode.beam_search`), or
  "samples", K samples at `rl.temperature` (repeats count once). Each
  candidate's risk is minus its `rl.rewards` return (by default the
  normalised edit distance ED / |target|; `exact_match` gives the 0/1
  word error), scored on device. Metrics: ce, mwer, kl, alpha,
  nbest_unique, and `reward_metrics` over the list.
  """
  rl = config.rl
  k = rl.num_samples
  sample_rng, dropout_rng = jax.random.split(rng)
  use_dropout = float(config.model.get("dropout", 0.0)) > 0
  b, t = batch["target"].shape
  if rl.candidates == "beam":
    nbest = decode.beam_search(
        model, {"params": jax.lax.stop_gradient(params)}, batch["source"],
        max_len=t, beam=k)
    scored = score_candidates(
        config, nbest["tokens"].reshape(b * k, t),
        nbest["lengths"].reshape(b * k),
        jnp.repeat(batch["target"], k, axis=0),
        jnp.repeat(batch["target_lengths"], k), reward_embeddings,
        byte_table)
    valid = nbest["scores"] > -1e29
  else:
    scored = sample_and_score(config, model, params, batch, sample_rng,
                              num_samples=k, temperature=rl.temperature,
                              reward_embeddings=reward_embeddings,
                              byte_table=byte_table)
    valid = jnp.ones((b, k), bool)
  tokens, lengths = scored["tokens"], scored["lengths"]
  valid = valid & first_occurrence(tokens.reshape(b, k, t))
  samples = {"source": group_source(config, batch["source"]),
             "target": tokens, "target_lengths": lengths}
  seq_logp, logits = sequence_logprobs(
      model, params, samples, dropout_rng if use_dropout else None)
  risk = expected_risk(seq_logp.reshape(b, k),
                       -scored["returns"].reshape(b, k), valid)
  kl = kl_penalty(config, model, logits, samples, ref_params)
  ce = ce_term(config, model, params, batch, alpha)
  loss = (1.0 - alpha) * ce + alpha * (risk + rl.kl_weight * kl)
  metrics = {"ce": ce, "mwer": risk, "kl": kl, "alpha": alpha,
             "nbest_unique": valid.sum(-1).mean(),
             **reward_metrics(config, scored)}
  return loss, metrics
