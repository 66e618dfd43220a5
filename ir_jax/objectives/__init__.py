"""Training objectives: where rewards (ir_jax.rewards) meet model logits.

One module per concern:

* `supervised`: CE and the fused loss on teacher forcing,
  `(1 - alpha) CE + alpha (-reward)`;
* `alpha`: the reward weight's schedule (constant, warm-up, adaptive);
* `scoring`: K samples per prompt scored on device by `rl.rewards`;
* `policy`: REINFORCE with sequence / reward-to-go credit, and OCD;
* `mwer`: expected risk over an N-best list;
* `grpo`: group-relative advantages and the clipped surrogate;
* `credit`: GRPO's per-token credits from the DP's instant rewards
  (reward-to-go, immediate, lambda-returns);
* `kl`: exact and k3 KL penalties to a reference.

`make_loss_fn(config, model)` is the one entry the train step uses for
every mode but GRPO, whose rollout feeds several updates (`grpo_rollout`,
`grpo_update_loss`; ir_jax.step).
"""

from typing import Callable, Tuple

import jax

from ir_jax import models
from ir_jax.objectives._common import (Metrics, policy_logprobs,
                                       token_logprobs, token_mask)
from ir_jax.objectives.alpha import (alpha_schedule, controller_init,
                                     controller_update)
from ir_jax.objectives.credit import (credit_advantages, credit_lambda,
                                      credit_rewards, lambda_returns)
from ir_jax.objectives.grpo import (AGGREGATIONS, aggregate_tokens,
                                    group_advantages, grpo_loss,
                                    grpo_rollout, grpo_update_loss,
                                    token_group_advantages)
from ir_jax.objectives.kl import (exact_kl, k3_kl, kl_penalty,
                                  kl_to_reference)
from ir_jax.objectives.mwer import (expected_risk, first_occurrence,
                                    mwer_loss, sequence_logprobs)
from ir_jax.objectives.policy import (leave_one_out_mean, ocd_loss,
                                      policy_gradient_loss,
                                      reward_to_go_advantages, rl_loss,
                                      sequence_advantages)
from ir_jax.objectives.scoring import (group_source, instant_reward_of,
                                       reward_metrics, sample_and_score,
                                       score_candidates)
from ir_jax.objectives.supervised import (fused_loss, masked_cross_entropy,
                                          reward_terms)

__all__ = [
    "aggregate_tokens", "AGGREGATIONS", "alpha_schedule", "controller_init",
    "controller_update", "credit_advantages", "credit_lambda",
    "credit_rewards", "exact_kl", "expected_risk", "first_occurrence",
    "fused_loss", "group_advantages", "group_source", "grpo_loss",
    "grpo_rollout", "grpo_update_loss", "instant_reward_of", "k3_kl",
    "kl_penalty", "kl_to_reference", "lambda_returns", "leave_one_out_mean", "LossFn",
    "make_loss_fn", "masked_cross_entropy", "Metrics", "mwer_loss", "ocd_loss",
    "policy_gradient_loss", "policy_logprobs", "reward_metrics",
    "reward_terms", "reward_to_go_advantages", "rl_loss", "sample_and_score",
    "score_candidates", "sequence_advantages", "sequence_logprobs",
    "token_group_advantages", "token_logprobs", "token_mask",
]


LossFn = Callable[..., Tuple[jax.Array, Metrics]]


def make_loss_fn(config, model) -> LossFn:
  """`loss_fn(params, batch, rng, *, alpha, reward_embeddings, ref_params,
  byte_table) -> (loss, metrics)` of the config's objective: the fused loss
  on teacher forcing, or with `rl.mode` set the RL loss on the model's own
  samples.

  batch: source int32[B, P], target int32[B, T], target_lengths int32[B];
  alpha: the scalar reward weight of this step; reward_embeddings: the
  frozen f32[V, D] table of the cosine reward; ref_params: the frozen
  reference of the KL penalty (or None); byte_table: the (token_bytes,
  token_byte_lengths) table of the byte-level rewards (or None); rng: None
  runs deterministically.
  """
  if config.rl.mode == "grpo":
    raise ValueError("rl.mode='grpo' updates several times per rollout: use "
                     "ir_jax.step.make_train_step (objectives.grpo_rollout "
                     "and grpo_update_loss).")
  if config.rl.mode == "mwer":
    return lambda params, batch, rng, **kw: mwer_loss(config, model, params,
                                                     batch, rng, **kw)
  if config.rl.mode:
    return lambda params, batch, rng, **kw: rl_loss(config, model, params,
                                                   batch, rng, **kw)
  obj = config.objective
  reward_on = float(obj.alpha) > 0.0 or obj.alpha_schedule == "adaptive"

  def loss_fn(params, batch, rng, *, alpha, reward_embeddings,
              ref_params=None, byte_table=None):
    del ref_params, byte_table
    logits = models.target_logits(model, params, batch, rng)
    return fused_loss(
        logits, batch["target"], batch["target_lengths"], alpha=alpha,
        soft_ed_weight=obj.soft_ed_weight, cosine_weight=obj.cosine_weight,
        gamma=obj.gamma, implementation=obj.soft_ed_implementation,
        embeddings=reward_embeddings,
        label_smoothing=config.optim.label_smoothing, compute_reward=reward_on)

  return loss_fn
