"""Training objectives: where rewards (ir_jax.rewards) meet model logits.

The fused objective (teacher forcing):

  loss = (1 - alpha) * CE + alpha * (-reward),
  reward = -w_ed * softED(logits, target) / target_length
           + w_cos * cos(logits, target; E_frozen).

The seed text writes `alpha * Reward + (1 - alpha) * CE`, which would
*minimise* the reward; the reward enters with a minus sign here so that
minimising the loss maximises it.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from ir_jax import parallel, rewards

Metrics = Dict[str, jax.Array]


def masked_cross_entropy(logits: jax.Array, targets: jax.Array,
                         target_lengths: jax.Array,
                         label_smoothing: float = 0.0
                         ) -> Tuple[jax.Array, jax.Array]:
  """Mean token CE over valid target positions, and token accuracy.

  logits: float[B, T, V]; targets: int[B, T]; target_lengths: int[B].
  Positions `t >= target_lengths` are ignored.
  """
  vocab = logits.shape[-1]
  labels = jax.nn.one_hot(targets, vocab)
  if label_smoothing:
    labels = optax.smooth_labels(labels, label_smoothing)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
  mask = jnp.arange(targets.shape[1])[None] < target_lengths[:, None]
  count = jnp.maximum(mask.sum(), 1)
  correct = (logits.argmax(-1) == targets) & mask
  return jnp.sum(ce * mask) / count, correct.sum() / count


def reward_terms(logits: jax.Array, targets: jax.Array,
                 target_lengths: jax.Array, embeddings: Optional[jax.Array],
                 *, gamma: float, implementation: str = "auto") -> Metrics:
  """Per-example reward terms from teacher-forced logits.

  Returns `soft_ed` (soft edit distance / target length, [B]) and `cosine`
  ([B]; zeros when `embeddings` is None). The prediction length is the target
  length: position t of the logits predicts target token t.
  `implementation` picks the soft edit distance code (`auto`, `xla`,
  `pallas`: see `rewards.soft_edit_distance`).
  """
  def per_shard(logits, targets, target_lengths, *table):
    soft = rewards.soft_edit_distance_from_logits(
        logits, targets, gamma, pred_lengths=target_lengths,
        target_lengths=target_lengths, implementation=implementation)
    soft = soft / jnp.maximum(target_lengths, 1)
    if not table:
      return jnp.stack([soft, jnp.zeros_like(soft)], axis=-1)
    cos = rewards.cosine_reward(
        logits, targets, jax.lax.stop_gradient(table[0]),
        pred_lengths=target_lengths, target_lengths=target_lengths)
    return jnp.stack([soft, cos], axis=-1)

  # Under a mesh each batch shard runs its own DP (ir_jax.parallel).
  terms = parallel.batch_map(per_shard, (logits, targets, target_lengths),
                             () if embeddings is None else (embeddings,))
  return {"soft_ed": terms[:, 0], "cosine": terms[:, 1]}


def fused_loss(logits: jax.Array, targets: jax.Array,
               target_lengths: jax.Array, *, alpha, soft_ed_weight: float,
               cosine_weight: float, gamma: float,
               implementation: str = "auto",
               embeddings: Optional[jax.Array] = None,
               label_smoothing: float = 0.0,
               compute_reward: bool = True) -> Tuple[jax.Array, Metrics]:
  """`(1 - alpha) * CE + alpha * (-reward)` and its terms.

  Args:
    logits: float[B, T, V] teacher-forced target-side logits.
    targets: int[B, T]; target_lengths: int[B] (EOS included).
    alpha: reward weight in [0, 1] (float or traced scalar).
    soft_ed_weight, cosine_weight: mix of the two reward terms.
    gamma: soft edit distance temperature.
    implementation: soft edit distance code ("auto", "xla", "pallas").
    embeddings: float[V, D] frozen table for the cosine reward (gradients
      are stopped here), or None to skip it.
    compute_reward: False skips the reward terms entirely (CE-only runs);
      the loss is then exactly the cross-entropy.

  Returns:
    (loss, metrics) with metrics `ce`, `soft_ed`, `cosine`, `reward`,
    `alpha`, `token_accuracy` (batch means).
  """
  ce, accuracy = masked_cross_entropy(logits, targets, target_lengths,
                                      label_smoothing)
  if compute_reward:
    terms = reward_terms(logits, targets, target_lengths,
                         embeddings if cosine_weight else None, gamma=gamma,
                         implementation=implementation)
    soft_ed, cos = terms["soft_ed"].mean(), terms["cosine"].mean()
    reward = -soft_ed_weight * soft_ed + cosine_weight * cos
    loss = (1.0 - alpha) * ce + alpha * (-reward)
  else:
    soft_ed = cos = reward = jnp.zeros(())
    loss = ce
  metrics = {"ce": ce, "soft_ed": soft_ed, "cosine": cos, "reward": reward,
             "alpha": jnp.asarray(alpha, jnp.float32),
             "token_accuracy": accuracy}
  return loss, metrics


def alpha_schedule(config):
  """step -> alpha: `constant` or linear `warmup` to `config.alpha`."""
  alpha = float(config.alpha)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"objective.alpha must be in [0, 1], got {alpha}.")
  if config.alpha_schedule == "constant":
    return lambda step: jnp.asarray(alpha, jnp.float32)
  if config.alpha_schedule == "warmup":
    warm = max(int(config.alpha_warmup_steps), 1)
    return lambda step: alpha * jnp.minimum(step / warm, 1.0).astype(
        jnp.float32)
  raise ValueError("objective.alpha_schedule must be 'constant' or 'warmup', "
                   f"got {config.alpha_schedule!r}.")


# ------------------------------------------------------- RL objectives
#
# Samples come from `ir_jax.decode.sample_with_rewards`: tokens y [B K, T]
# (EOS included in `lengths`), per-token rewards r [B K, T] with
# sum_t r_t = -ED(y, target). Logits are the policy's teacher-forced logits
# on its own samples, position t predicting y_t.


def token_mask(lengths: jax.Array, length: int) -> jax.Array:
  """bool[B, T]: positions t < lengths."""
  return jnp.arange(length)[None] < lengths[:, None]


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log pi(y_t | y_<t): float32[B, T]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def leave_one_out_mean(values: jax.Array, group: int) -> jax.Array:
  """Per sample, the mean of the other K - 1 samples of its prompt (RLOO).

  values: float[B K] ordered [b0 k0, b0 k1, ...]; K = 1 gives zeros.
  """
  if group == 1:
    return jnp.zeros_like(values)
  v = values.reshape(-1, group)
  return ((v.sum(1, keepdims=True) - v) / (group - 1)).reshape(-1)


def sequence_advantages(rewards: jax.Array, lengths: jax.Array,
                        baseline: jax.Array) -> jax.Array:
  """`seq`: one return R = sum_t r_t per sample, minus a baseline, broadcast
  to every token. float32[B K, T] (0 past the length)."""
  ret = rewards.sum(-1)
  mask = token_mask(lengths, rewards.shape[-1])
  return jnp.where(mask, (ret - baseline)[:, None], 0.0)


def reward_to_go_advantages(rewards: jax.Array, lengths: jax.Array,
                            baseline: jax.Array) -> jax.Array:
  """`instant`: G_t = sum_{t' >= t} r_t' minus the same baseline as `seq`.

  Each token is credited only with rewards at or after it; with a single
  terminal reward G_t = R and this equals `sequence_advantages`.
  """
  to_go = jnp.cumsum(rewards[:, ::-1], axis=-1)[:, ::-1]
  mask = token_mask(lengths, rewards.shape[-1])
  return jnp.where(mask, to_go - baseline[:, None], 0.0)


def policy_gradient_loss(logits: jax.Array, tokens: jax.Array,
                         lengths: jax.Array, advantages: jax.Array
                         ) -> jax.Array:
  """REINFORCE surrogate: -sum_t A_t log pi(y_t) / #tokens (A is constant)."""
  mask = token_mask(lengths, tokens.shape[-1])
  logp = token_logprobs(logits, tokens)
  adv = jax.lax.stop_gradient(advantages)
  return -jnp.sum(jnp.where(mask, adv * logp, 0.0)) / jnp.maximum(
      mask.sum(), 1)


def ocd_loss(logits: jax.Array, optimal: jax.Array, lengths: jax.Array
             ) -> jax.Array:
  """Optimal Completion Distillation (Sabour et al. 2019).

  Cross-entropy at each sampled prefix against the uniform distribution over
  its optimal next tokens. optimal: bool[B, T, V] (prefix lengths 0..T-1).
  """
  q = optimal.astype(jnp.float32)
  q = q / jnp.maximum(q.sum(-1, keepdims=True), 1.0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -(q * logp).sum(-1)
  mask = token_mask(lengths, logits.shape[1])
  return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(mask.sum(), 1)


def kl_to_reference(logits: jax.Array, ref_logits: jax.Array,
                    lengths: jax.Array) -> jax.Array:
  """Mean over valid positions of KL(pi || pi_ref), exact over the vocab."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logq = jax.nn.log_softmax(
      jax.lax.stop_gradient(ref_logits).astype(jnp.float32), axis=-1)
  kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  mask = token_mask(lengths, logits.shape[1])
  return jnp.sum(jnp.where(mask, kl, 0.0)) / jnp.maximum(mask.sum(), 1)


# ------------------------------------------------- reward-adaptive alpha


def controller_init(alpha: float) -> Dict[str, jax.Array]:
  return {"alpha": jnp.asarray(alpha, jnp.float32),
          "fast": jnp.zeros((), jnp.float32), "slow": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.int32)}


def controller_update(state: Dict[str, jax.Array], reward: jax.Array, *,
                      rate: float, low: float, high: float,
                      fast_decay: float = 0.9, slow_decay: float = 0.98,
                      warmup: int = 10) -> Dict[str, jax.Array]:
  """Raises alpha while the reward improves, lowers it when it degrades.

  Two bias-corrected moving averages of the batch reward: `fast` above
  `slow` means the reward is rising, so the reward term gets `rate` more
  weight; otherwise `rate` less. alpha stays in [low, high] and is held for
  the first `warmup` updates, while the averages settle.
  """
  count = state["count"] + 1
  reward = jnp.asarray(reward, jnp.float32)
  fast = fast_decay * state["fast"] + (1 - fast_decay) * reward
  slow = slow_decay * state["slow"] + (1 - slow_decay) * reward
  fast_hat = fast / (1 - fast_decay ** count.astype(jnp.float32))
  slow_hat = slow / (1 - slow_decay ** count.astype(jnp.float32))
  step = jnp.where(fast_hat > slow_hat, rate, -rate)
  alpha = jnp.where(count > warmup, state["alpha"] + step, state["alpha"])
  return {"alpha": jnp.clip(alpha, low, high), "fast": fast, "slow": slow,
          "count": count}
