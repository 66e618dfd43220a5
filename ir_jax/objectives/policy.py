"""Policy-gradient objectives on the model's own samples (`rl.mode`):
REINFORCE with sequence (`seq`) or reward-to-go (`instant`) credit, and
Optimal Completion Distillation (`ocd`).

Logits are the policy's teacher-forced logits on its own samples, position
t predicting y_t.
"""

from typing import Tuple

import jax
import jax.numpy as jnp

from ir_jax import models, rewards
from ir_jax.objectives._common import (Metrics, ce_term, token_logprobs,
                                       token_mask)
from ir_jax.objectives.kl import kl_penalty
from ir_jax.objectives.scoring import (group_source, reward_metrics,
                                       sample_and_score)


def leave_one_out_mean(values: jax.Array, group: int) -> jax.Array:
  """Per sample, the mean of the other K - 1 samples of its prompt (RLOO).

  Args:
    values: float[B K] ordered [b0 k0, b0 k1, ...].
    group: K, the samples per prompt.

  Returns:
    float[B K]: (sum of its group - value) / (K - 1); K = 1 gives zeros.
  """
  if group == 1:
    return jnp.zeros_like(values)
  v = values.reshape(-1, group)
  return ((v.sum(1, keepdims=True) - v) / (group - 1)).reshape(-1)


def sequence_advantages(rewards: jax.Array, lengths: jax.Array,
                        baseline: jax.Array) -> jax.Array:
  """`seq`: one return R = sum_t r_t per sample, minus a baseline, broadcast
  to every token.

  Args:
    rewards: float[B K, T] per-token rewards (0 past the length).
    lengths: int[B K] sample lengths (EOS included).
    baseline: float[B K] per sample (e.g. `leave_one_out_mean` of R).

  Returns:
    float32[B K, T]: R - baseline at every valid token, 0 past the length.
  """
  ret = rewards.sum(-1)
  mask = token_mask(lengths, rewards.shape[-1])
  return jnp.where(mask, (ret - baseline)[:, None], 0.0)


def reward_to_go_advantages(rewards: jax.Array, lengths: jax.Array,
                            baseline: jax.Array) -> jax.Array:
  """`instant`: G_t = sum_{t' >= t} r_t' minus the same baseline as `seq`.

  Each token is credited only with rewards at or after it; with a single
  terminal reward G_t = R and this equals `sequence_advantages`.

  Args:
    rewards: float[B K, T]; lengths: int[B K]; baseline: float[B K].

  Returns:
    float32[B K, T]: G_t - baseline, 0 past the length.
  """
  to_go = jnp.cumsum(rewards[:, ::-1], axis=-1)[:, ::-1]
  mask = token_mask(lengths, rewards.shape[-1])
  return jnp.where(mask, to_go - baseline[:, None], 0.0)


def policy_gradient_loss(logits: jax.Array, tokens: jax.Array,
                         lengths: jax.Array, advantages: jax.Array
                         ) -> jax.Array:
  """REINFORCE surrogate: -sum_t A_t log pi(y_t) / #tokens (A is constant).

  Args:
    logits: float[N, T, V] teacher-forced on the samples.
    tokens: int[N, T] the sampled tokens; lengths: int[N].
    advantages: float[N, T] (gradient stopped inside).

  Returns:
    float32 scalar; its gradient is the policy gradient estimate.
  """
  mask = token_mask(lengths, tokens.shape[-1])
  logp = token_logprobs(logits, tokens)
  adv = jax.lax.stop_gradient(advantages)
  return -jnp.sum(jnp.where(mask, adv * logp, 0.0)) / jnp.maximum(
      mask.sum(), 1)


def ocd_loss(logits: jax.Array, optimal: jax.Array, lengths: jax.Array
             ) -> jax.Array:
  """Optimal Completion Distillation (Sabour et al. 2019).

  Cross-entropy at each sampled prefix against the uniform distribution over
  its optimal next tokens.

  Args:
    logits: float[B, T, V] teacher-forced on the samples.
    optimal: bool[B, T, V], the optimal next tokens after each prefix of
      length 0..T-1 (`rewards.optimal_completion_targets`).
    lengths: int[B] sample lengths.

  Returns:
    float32 scalar: the mean over valid positions.
  """
  q = optimal.astype(jnp.float32)
  q = q / jnp.maximum(q.sum(-1, keepdims=True), 1.0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -(q * logp).sum(-1)
  mask = token_mask(lengths, logits.shape[1])
  return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(mask.sum(), 1)


def rl_loss(config, model, params, batch, rng, *, alpha, reward_embeddings,
            ref_params=None, byte_table=None) -> Tuple[jax.Array, Metrics]:
  """`(1 - alpha) CE + alpha (RL + kl_weight KL)` on K samples per prompt.

  Samples come from the current params (gradients stopped), scored by
  `config.rl.rewards` (`sample_and_score`; by default the in-loop
  edit-distance rows, -ED / |target| per sample); the RL term is REINFORCE
  with sequence (`seq`) or reward-to-go (`instant`) advantages against
  `rl.baseline`, or OCD's optimal-completion cross-entropy (`ocd`).
  Metrics: ce, rl_loss, kl, alpha, and `reward_metrics`.
  """
  rl = config.rl
  k = rl.num_samples
  sample_rng, dropout_rng = jax.random.split(rng)
  use_dropout = float(config.model.get("dropout", 0.0)) > 0
  t = batch["target"].shape[1]
  scored = sample_and_score(config, model, params, batch, sample_rng,
                            num_samples=k, temperature=rl.temperature,
                            reward_embeddings=reward_embeddings,
                            byte_table=byte_table)
  tokens, lengths = scored["tokens"], scored["lengths"]
  token_rewards, returns = scored["token_rewards"], scored["returns"]
  if rl.baseline == "group":
    baseline = leave_one_out_mean(returns, k)
  elif rl.baseline == "greedy":  # Self-critical (SCST).
    greedy = sample_and_score(config, model, params, batch, sample_rng,
                              num_samples=1, temperature=0.0,
                              reward_embeddings=reward_embeddings,
                              byte_table=byte_table)
    baseline = jnp.repeat(greedy["returns"], k)
  else:
    baseline = jnp.zeros_like(returns)
  samples = {"source": group_source(config, batch["source"]),
             "target": tokens, "target_lengths": lengths}
  logits = models.target_logits(model, params, samples,
                                dropout_rng if use_dropout else None)
  if rl.mode == "ocd":
    optimal = rewards.optimal_completion_targets(
        tokens, scored["target"], vocab_size=logits.shape[-1],
        eos_id=models.special_ids(model)[1],
        pred_lengths=lengths, target_lengths=scored["target_lengths"])[:, :t]
    rl_term = ocd_loss(logits, optimal, lengths)
  else:
    adv_fn = (sequence_advantages if rl.mode == "seq" else
              reward_to_go_advantages)
    advantages = adv_fn(token_rewards, lengths, baseline)
    rl_term = policy_gradient_loss(logits, tokens, lengths, advantages)
  kl = kl_penalty(config, model, logits, samples, ref_params)
  ce = ce_term(config, model, params, batch, alpha)
  loss = (1.0 - alpha) * ce + alpha * (rl_term + rl.kl_weight * kl)
  metrics = {"ce": ce, "rl_loss": rl_term, "kl": kl, "alpha": alpha,
             **reward_metrics(config, scored)}
  return loss, metrics
