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

from ir_jax import rewards

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
                 *, gamma: float) -> Metrics:
  """Per-example reward terms from teacher-forced logits.

  Returns `soft_ed` (soft edit distance / target length, [B]) and `cosine`
  ([B]; zeros when `embeddings` is None). The prediction length is the target
  length: position t of the logits predicts target token t.
  """
  soft = rewards.soft_edit_distance_from_logits(
      logits, targets, gamma, pred_lengths=target_lengths,
      target_lengths=target_lengths)
  soft = soft / jnp.maximum(target_lengths, 1)
  if embeddings is None:
    cos = jnp.zeros_like(soft)
  else:
    cos = rewards.cosine_reward(
        logits, targets, jax.lax.stop_gradient(embeddings),
        pred_lengths=target_lengths, target_lengths=target_lengths)
  return {"soft_ed": soft, "cosine": cos}


def fused_loss(logits: jax.Array, targets: jax.Array,
               target_lengths: jax.Array, *, alpha, soft_ed_weight: float,
               cosine_weight: float, gamma: float,
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
                         embeddings if cosine_weight else None, gamma=gamma)
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
