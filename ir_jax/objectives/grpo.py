"""GRPO: one rollout (K samples per prompt, their old and reference
log-probs and advantages) feeds `rl.inner_steps` clipped updates;
`ir_jax.step` scans them inside one jitted program. Conventions follow
Tunix's GRPO core (tunix/rl/algo_core.py) so the two agree to float
precision (tests/objectives/test_grpo.py checks it when tunix is
installed)."""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from ir_jax import models
from ir_jax.config import AGGREGATIONS  # The one list (config validates it).
from ir_jax import rewards
from ir_jax.objectives._common import (Metrics, ce_term, policy_logprobs,
                                       token_mask)
from ir_jax.objectives.credit import credit_advantages, credit_rewards
from ir_jax.objectives.kl import exact_kl, k3_kl
from ir_jax.objectives.scoring import (group_source, reward_metrics,
                                       sample_and_score)


def group_advantages(returns: jax.Array, group: int, *,
                     normalize_std: bool = True, eps: float = 1e-6
                     ) -> jax.Array:
  r"""GRPO's group-relative advantage (Shao et al. 2024, eq. 3).

  .. math:: A_i = (R_i - \mathrm{mean}_g R) / (\mathrm{std}_g R + \epsilon)

  over the G samples of each prompt (std with Bessel's correction, as
  Tunix); `normalize_std=False` is Dr.GRPO's `R_i - mean_g R` (Liu et al.
  2025). returns: float[B G] ordered [b0 g0, b0 g1, ...]. Returns [B G].
  """
  r = returns.astype(jnp.float32).reshape(-1, group)
  adv = r - r.mean(1, keepdims=True)
  if normalize_std:
    adv = adv / (r.std(1, ddof=1, keepdims=True) + eps)
  return adv.reshape(-1)


def token_group_advantages(token_rewards: jax.Array, lengths: jax.Array,
                           group: int, *, normalize_std: bool = True,
                           eps: float = 1e-6) -> jax.Array:
  r"""Token-level GRPO credit from instant rewards (`rl.credit="token"` /
  `"reward_to_go"` with `rl.credit_baseline="position"`).

  The reward-to-go `G_t = sum_{t' >= t} r_t'` of each sample, normalised
  within its group position by position:

  .. math:: A_{i,t} = (G_{i,t} - \mathrm{mean}_g G_{\cdot,t}) /
            (\mathrm{std}_g G_{\cdot,t} + \epsilon).

  A sample that has ended holds its last reward-to-go at later positions,
  so with a terminal-only reward every `G_{i,t} = R_i` and this is exactly
  `group_advantages` broadcast over the tokens. The other credits:
  `ir_jax.objectives.credit`.

  token_rewards: float[B G, T]; lengths: int[B G] (>= 1). Returns
  float32[B G, T], 0 past each sample's length.
  """
  returns = jnp.where(token_mask(lengths, token_rewards.shape[-1]),
                      token_rewards, 0.0).sum(-1)
  return credit_advantages(token_rewards, lengths, returns, group,
                           credit="reward_to_go", baseline="position",
                           normalize_std=normalize_std, eps=eps)


def aggregate_tokens(values: jax.Array, mask: jax.Array, mode: str,
                     budget: Optional[int] = None) -> jax.Array:
  """Reduces per-token values float[B, T] over a mask bool[B, T].

  * `token_mean` (DAPO): sum over all valid tokens / their count;
  * `sequence_mean` (GRPO): per-sequence token mean, averaged over the
    sequences with at least one valid token;
  * `constant` (Dr.GRPO): per-sequence sum / `budget` (the generation
    length budget, fixed for a run: `data.target_len`; default T, the
    padded width, which varies with length buckets), averaged the same
    way, so long and short samples weigh each token alike.

  Tunix's `token-mean`, `sequence-mean-token-mean` and
  `sequence-mean-token-scale` (norm = T).
  """
  mask = mask.astype(jnp.float32)
  sums = (values.astype(jnp.float32) * mask).sum(-1)
  counts = mask.sum(-1)
  rows = jnp.maximum((counts > 0).sum(), 1)
  if mode == "token_mean":
    return sums.sum() / jnp.maximum(counts.sum(), 1)
  if mode == "sequence_mean":
    return (sums / jnp.maximum(counts, 1)).sum() / rows
  if mode == "constant":
    return (sums / float(budget or values.shape[-1])).sum() / rows
  raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}.")


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array,
              advantages: jax.Array, mask: jax.Array, *, epsilon: float,
              epsilon_high: Optional[float] = None,
              aggregation: str = "sequence_mean", kl_weight: float = 0.0,
              kl_per_token: Optional[jax.Array] = None,
              budget: Optional[int] = None) -> Tuple[jax.Array, Metrics]:
  r"""The clipped GRPO surrogate (Shao et al. 2024; PPO's clip, Schulman et
  al. 2017) with DAPO's asymmetric clip (Yu et al. 2025).

  .. math::

     \rho_t = \exp(\log\pi(y_t) - \log\pi_{old}(y_t)), \quad
     \ell_t = \max(-A_t \rho_t,\;
                    -A_t\,\mathrm{clip}(\rho_t, 1 - \epsilon,
                                          1 + \epsilon_{high})),

     L = \mathrm{agg}(\ell) + \beta\, \mathrm{agg}(\mathrm{KL}_t).

  The log-ratio is clipped to [-20, 20] before exp (as Tunix) so a stale
  sample cannot overflow. Outside the clip region on the clipped side the
  gradient is zero.

  Args:
    logprobs: float[B, T] log pi(y_t) under the current params (traced).
    old_logprobs: float[B, T] the sampler's (constant).
    advantages: float[B] (sequence) or float[B, T] (token-level).
    mask: bool[B, T] valid sample tokens.
    epsilon, epsilon_high: clip range [1 - epsilon, 1 + epsilon_high]
      (epsilon_high None = epsilon).
    aggregation: `aggregate_tokens` mode.
    kl_weight: beta; kl_per_token: float[B, T] (`k3_kl` or `exact_kl`), or
      None for no penalty.

  Returns:
    (loss, metrics: pg_loss, kl, clip_fraction, ratio_mean).
  """
  eps_high = epsilon if epsilon_high is None else epsilon_high
  logprobs = logprobs.astype(jnp.float32)
  log_ratio = jnp.clip(logprobs - jax.lax.stop_gradient(
      old_logprobs.astype(jnp.float32)), -20.0, 20.0)
  ratio = jnp.exp(log_ratio)
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))
  if adv.ndim == 1:
    adv = adv[:, None]
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + eps_high)
  pg = aggregate_tokens(jnp.maximum(unclipped, clipped), mask, aggregation,
                        budget)
  kl = jnp.zeros(())
  loss = pg
  if kl_per_token is not None:
    kl = aggregate_tokens(kl_per_token, mask, aggregation, budget)
    loss = loss + kl_weight * kl
  m = mask.astype(jnp.float32)
  count = jnp.maximum(m.sum(), 1)
  metrics = {"pg_loss": pg, "kl": kl,
             "clip_fraction": jnp.sum((clipped > unclipped) * m) / count,
             "ratio_mean": jnp.sum(ratio * m) / count}
  return loss, metrics


def grpo_rollout(config, model, params, batch, rng, *, ref_params=None,
                 reward_embeddings=None, byte_table=None
                 ) -> Tuple[Dict[str, jax.Array], Metrics]:
  """Everything the inner GRPO updates need from one rollout, gradient-free.

  K = `rl.num_samples` samples per prompt scored by `rl.rewards` in the
  sampling loop, their old log-probs (the sampler's), the reference
  log-probs (or logits for `rl.kl_estimator="exact"`) when `rl.kl_weight`
  > 0, and advantages: per sequence (`rl.credit="sequence"`,
  `group_advantages`) or per token (`credit.credit_advantages` of the
  credit's rewards, `credit.credit_rewards`).

  Returns (rollout, reward metrics); rollout holds samples (source, target,
  target_lengths), old_logprobs, advantages, and ref_logprobs / ref_logits.
  """
  rl = config.rl
  k = rl.num_samples
  scored = sample_and_score(config, model, params, batch, rng, num_samples=k,
                            temperature=rl.temperature,
                            reward_embeddings=reward_embeddings,
                            byte_table=byte_table)
  lengths = scored["lengths"]
  samples = {"source": group_source(config, batch["source"]),
             "target": scored["tokens"], "target_lengths": lengths}
  if rl.credit == "sequence":
    advantages = group_advantages(scored["returns"], k,
                                  normalize_std=rl.group_std)
  else:
    advantages = credit_advantages(
        credit_rewards(rewards.parse_rewards(rl.rewards), scored, byte_table),
        lengths, scored["returns"], k, credit=rl.credit,
        lam=float(rl.get("credit_lambda", 0.5)),
        baseline=rl.get("credit_baseline", "position"),
        normalize_std=rl.group_std)
  rollout = {"samples": samples, "old_logprobs": scored["logprobs"],
             "advantages": advantages}
  if rl.kl_weight:
    ref_logp, ref_logits = policy_logprobs(model, ref_params, samples,
                                           rl.temperature)
    if rl.kl_estimator == "exact":
      rollout["ref_logits"] = ref_logits
    else:
      rollout["ref_logprobs"] = ref_logp
  return rollout, reward_metrics(config, scored)


def grpo_update_loss(config, model, params, batch, rollout, rng, *, alpha
                     ) -> Tuple[jax.Array, Metrics]:
  """`(1 - alpha) CE + alpha GRPO` of one inner update on a rollout."""
  rl = config.rl
  use_dropout = float(config.model.get("dropout", 0.0)) > 0
  samples = rollout["samples"]
  logp, logits = policy_logprobs(model, params, samples, rl.temperature,
                                 rng if use_dropout else None)
  mask = token_mask(samples["target_lengths"], logp.shape[1])
  kl_tok = None
  if rl.kl_weight:
    kl_tok = (exact_kl(logits, rollout["ref_logits"], rl.temperature,
                       *models.special_ids(model))
              if rl.kl_estimator == "exact" else
              k3_kl(logp, rollout["ref_logprobs"]))
  term, metrics = grpo_loss(
      logp, rollout["old_logprobs"], rollout["advantages"], mask,
      epsilon=rl.epsilon, epsilon_high=rl.epsilon_high or None,
      aggregation=rl.loss_aggregation, kl_weight=rl.kl_weight,
      kl_per_token=kl_tok, budget=int(config.data.target_len))
  ce = ce_term(config, model, params, batch, alpha)
  loss = (1.0 - alpha) * ce + alpha * term
  return loss, dict(metrics, ce=ce, rl_loss=metrics["pg_loss"], alpha=alpha)
