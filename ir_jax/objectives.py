"""Training objectives: where rewards (ir_jax.rewards) meet model logits.

The fused objective (teacher forcing):

  loss = (1 - alpha) * CE + alpha * (-reward),
  reward = -w_ed * softED(logits, target) / target_length
           + w_cos * cos(logits, target; E_frozen).

The reward enters with a minus sign, so minimising the loss maximises it.
RL objectives (`rl.mode`: seq, instant, ocd) score the model's own samples
with the rewards computed inside the sampling loop. `make_loss_fn(config,
model)` is the one entry the train step uses.
"""

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from ir_jax import decode, models, parallel, rewards
from ir_jax.data.vocab import EOS

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


# ---------------------------------------------------------- the loss_fn


LossFn = Callable[..., Tuple[jax.Array, Metrics]]


def make_loss_fn(config, model) -> LossFn:
  """`loss_fn(params, batch, rng, *, alpha, reward_embeddings, ref_params)
  -> (loss, metrics)` of the config's objective: the fused loss on teacher
  forcing, or with `rl.mode` set the RL loss on the model's own samples.

  batch: source int32[B, P], target int32[B, T], target_lengths int32[B];
  alpha: the scalar reward weight of this step; reward_embeddings: the
  frozen f32[V, D] table of the cosine reward; ref_params: the frozen
  reference of the KL penalty (or None); rng: None runs deterministically.
  """
  if config.rl.mode:
    return lambda params, batch, rng, **kw: rl_loss(config, model, params,
                                                   batch, rng, **kw)
  obj = config.objective
  reward_on = float(obj.alpha) > 0.0 or obj.alpha_schedule == "adaptive"

  def loss_fn(params, batch, rng, *, alpha, reward_embeddings,
              ref_params=None):
    del ref_params
    logits = models.target_logits(model, params, batch, rng)
    return fused_loss(
        logits, batch["target"], batch["target_lengths"], alpha=alpha,
        soft_ed_weight=obj.soft_ed_weight, cosine_weight=obj.cosine_weight,
        gamma=obj.gamma, implementation=obj.soft_ed_implementation,
        embeddings=reward_embeddings,
        label_smoothing=config.optim.label_smoothing, compute_reward=reward_on)

  return loss_fn


def rl_loss(config, model, params, batch, rng, *, alpha, reward_embeddings,
            ref_params=None) -> Tuple[jax.Array, Metrics]:
  """`(1 - alpha) CE + alpha (RL + kl_weight KL)` on K samples per prompt.

  Samples come from the current params (gradients stopped) with per-token
  rewards from the in-loop edit-distance rows, scaled to -ED / |target|;
  the RL term is REINFORCE with sequence (`seq`) or reward-to-go
  (`instant`) advantages against `rl.baseline`, or OCD's optimal-completion
  cross-entropy (`ocd`). Metrics: ce, rl_loss, kl, alpha, reward and its
  std, edit_distance, per-token reward statistics, sample_length.
  """
  del reward_embeddings
  rl, obj = config.rl, config.objective
  k = rl.num_samples
  sample_rng, dropout_rng = jax.random.split(rng)
  use_dropout = float(config.model.get("dropout", 0.0)) > 0
  frozen = {"params": jax.lax.stop_gradient(params)}
  t = batch["target"].shape[1]
  out = decode.sample_with_rewards(
      model, frozen, batch["source"], batch["target"],
      batch["target_lengths"], sample_rng, max_len=t, num_samples=k,
      temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p)
  tokens, lengths = out["tokens"], out["lengths"]
  m = jnp.repeat(batch["target_lengths"], k)
  # Rewards per target symbol (EOS excluded): returns are -ED / length.
  scale = 1.0 / jnp.maximum(m - 1, 1).astype(jnp.float32)
  token_rewards = out["rewards"] * scale[:, None]
  returns = token_rewards.sum(-1)
  if rl.baseline == "group":
    baseline = leave_one_out_mean(returns, k)
  elif rl.baseline == "greedy":  # Self-critical (SCST).
    greedy = decode.sample_with_rewards(
        model, frozen, batch["source"], batch["target"],
        batch["target_lengths"], sample_rng, max_len=t, num_samples=1,
        temperature=0.0)
    baseline = jnp.repeat(greedy["rewards"].sum(-1), k) * scale
  else:
    baseline = jnp.zeros_like(returns)
  samples = {"source": jnp.repeat(batch["source"], k, axis=0),
             "target": tokens, "target_lengths": lengths}
  logits = models.target_logits(model, params, samples,
                                dropout_rng if use_dropout else None)
  if rl.mode == "ocd":
    optimal = rewards.optimal_completion_targets(
        tokens, jnp.repeat(batch["target"], k, axis=0),
        vocab_size=logits.shape[-1], eos_id=EOS, pred_lengths=lengths,
        target_lengths=m)[:, :t]
    rl_term = ocd_loss(logits, optimal, lengths)
  else:
    adv_fn = (sequence_advantages if rl.mode == "seq" else
              reward_to_go_advantages)
    advantages = adv_fn(token_rewards, lengths, baseline)
    rl_term = policy_gradient_loss(logits, tokens, lengths, advantages)
  kl = jnp.zeros(())
  if rl.kl_weight:
    ref_logits = models.target_logits(model, ref_params, samples)
    kl = kl_to_reference(logits, ref_logits, lengths)
  ce = jnp.zeros(())
  if not (float(obj.alpha) >= 1.0 and obj.alpha_schedule != "adaptive"):
    ce_logits = models.target_logits(model, params, batch)
    ce, _ = masked_cross_entropy(ce_logits, batch["target"],
                                 batch["target_lengths"],
                                 config.optim.label_smoothing)
  loss = (1.0 - alpha) * ce + alpha * (rl_term + rl.kl_weight * kl)
  valid = token_mask(lengths, t)
  per_token = jnp.where(valid, token_rewards, 0.0)
  count = jnp.maximum(valid.sum(), 1)
  mean_tok = per_token.sum() / count
  metrics = {
      "ce": ce, "rl_loss": rl_term, "kl": kl, "alpha": alpha,
      "reward": returns.mean(), "reward_std": returns.std(),
      "edit_distance": out["edit_distance"].mean(),
      "token_reward_mean": mean_tok,
      "token_reward_std": jnp.sqrt(jnp.sum(jnp.where(
          valid, (token_rewards - mean_tok) ** 2, 0.0)) / count),
      "token_reward_nonzero": jnp.sum(per_token != 0) / count,
      "sample_length": lengths.mean()}
  return loss, metrics
