"""Supervised objectives: CE and the fused loss on teacher forcing.

  loss = (1 - alpha) * CE + alpha * (-reward),
  reward = -w_ed * softED(logits, target) / target_length
           + w_cos * cos(logits, target; E_frozen).

The reward enters with a minus sign, so minimising the loss maximises it.
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
