"""Training objectives: where rewards (ir_jax.rewards) meet model logits.

The fused objective (teacher forcing):

  loss = (1 - alpha) * CE + alpha * (-reward),
  reward = -w_ed * softED(logits, target) / target_length
           + w_cos * cos(logits, target; E_frozen).

The reward enters with a minus sign, so minimising the loss maximises it.
RL objectives (`rl.mode`: seq, instant, ocd, mwer, grpo) score the model's own
samples with the rewards of `rl.rewards` (ir_jax.rewards' protocol),
computed inside the sampling loop. `make_loss_fn(config, model)` is the one
entry the train step uses for every mode but GRPO, whose rollout feeds
several updates (`grpo_rollout`, `grpo_update_loss`; ir_jax.step).
"""

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from ir_jax import decode, models, parallel, rewards

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
                    lengths: jax.Array, pad_id: Optional[int] = None,
                    eos_id: Optional[int] = None) -> jax.Array:
  """Mean over valid positions of KL(pi || pi_ref), exact over the vocab
  the sampler draws from (PAD excluded with `pad_id`: `exact_kl`)."""
  kl = exact_kl(logits, ref_logits, pad_id=pad_id, eos_id=eos_id)
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


def instant_reward_of(spec: rewards.RewardSpec, byte_table=None
                      ) -> rewards.InstantReward:
  """The sampler's reward for a parsed `rl.rewards`: its instant terms,
  weighted (the same object for equal specs, so sampling compiles once;
  byte-level terms are built on the step's `byte_table` each trace)."""
  terms = [(rewards.resolve(n, byte_table=byte_table), w)
           for n, w in spec.instant]
  traced = any(n in rewards.NEEDS_BYTE_TABLE for n, _ in spec.instant)
  return rewards.weighted(*terms, cache=not traced)


def sample_and_score(config, model, params, batch, rng, *, num_samples: int,
                     temperature: float, reward_embeddings=None,
                     byte_table=None) -> Dict[str, jax.Array]:
  """K samples per prompt scored by `config.rl.rewards`, on device.

  Instant terms are advanced inside the sampling loop; sequence terms are
  computed on the finished samples and credited to each sample's last
  token, so the per-token rewards always sum to the return.

  Returns:
    tokens int32[B K, T], lengths int32[B K], token_rewards float32[B K, T]
    (sum_t = return), returns float32[B K], terms float32[B K, n] (each
    term's unweighted return, `rewards.term_names` order), logprobs
    float32[B K, T] (the sampler's, `decode.sample_with_rewards`),
    edit_distance int32[B K] (exact, for logging), target int32[B K, M] and
    target_lengths int32[B K] (repeated).
  """
  rl = config.rl
  spec = rewards.parse_rewards(rl.rewards)
  instant = instant_reward_of(spec, byte_table)
  t = batch["target"].shape[1]
  out = decode.sample_with_rewards(
      model, {"params": jax.lax.stop_gradient(params)}, batch["source"],
      batch["target"], batch["target_lengths"], rng, max_len=t,
      num_samples=num_samples, temperature=temperature, top_k=rl.top_k,
      top_p=rl.top_p, reward=instant)
  target = jnp.repeat(batch["target"], num_samples, axis=0)
  m = jnp.repeat(batch["target_lengths"], num_samples)
  return dict(_with_sequence_terms(
      spec, instant, out["reward_state"], out["rewards"], out["tokens"],
      out["lengths"], target, m, reward_embeddings), logprobs=out["logprobs"])


def score_candidates(config, tokens: jax.Array, lengths: jax.Array,
                     target: jax.Array, target_lengths: jax.Array,
                     reward_embeddings=None, byte_table=None
                     ) -> Dict[str, jax.Array]:
  """`sample_and_score`'s scores for given candidates (a beam's N-best):
  the instant terms replayed over the tokens (`rewards.score_sequences`),
  the sequence terms on the finished outputs. Shapes as there, without
  `logprobs`; target / target_lengths already repeated per candidate."""
  spec = rewards.parse_rewards(config.rl.rewards)
  instant = instant_reward_of(spec, byte_table)
  token_rewards, state = rewards.score_sequences(instant, tokens, lengths,
                                                 target, target_lengths)
  return _with_sequence_terms(spec, instant, state, token_rewards, tokens,
                              lengths, target, target_lengths,
                              reward_embeddings)


def _with_sequence_terms(spec, instant, state, token_rewards, tokens, lengths,
                         target, m, reward_embeddings):
  """The scores dict from the instant terms' final state and per-token
  rewards: the sequence terms credited to each output's last token."""
  t = tokens.shape[1]
  terms = [rewards.term_returns(instant, state)]
  last = jnp.arange(t)[None] == (lengths - 1)[:, None]
  for name, w in spec.sequence:
    table = () if reward_embeddings is None else (reward_embeddings,)
    value = parallel.batch_map(   # Per shard: kernels are not partitioned.
        lambda a, n, b, k, *e, name=name: rewards.resolve(
            name, e[0] if e else None)(a, n, b, k),
        (tokens, lengths, target, m), table).astype(jnp.float32)
    token_rewards = token_rewards + jnp.where(last, w * value[:, None], 0.0)
    terms.append(value[:, None])
  return {"tokens": tokens, "lengths": lengths, "token_rewards": token_rewards,
          "returns": token_rewards.sum(-1),
          "terms": jnp.concatenate(terms, axis=-1),
          # Per batch shard: a Pallas kernel (TPU/GPU) cannot be
          # auto-partitioned over a sharded batch.
          "edit_distance": parallel.batch_map(
              lambda a, b, n, k: rewards.levenshtein(
                  a, b, pred_lengths=n, target_lengths=k),
              (tokens, target, lengths, m)),
          "target": target, "target_lengths": m}


def reward_metrics(config, scored: Dict[str, jax.Array]) -> Metrics:
  """Batch means of a `sample_and_score` result: reward (the return) and
  its std, each term (`reward/<name>`), edit distance, per-token reward
  statistics, sample length (tokens, EOS included) and `empty_fraction`,
  the share of samples whose first token ends them (EOS first: an empty
  answer; a reward that drives it to 1 is being gamed)."""
  names = rewards.term_names(rewards.parse_rewards(config.rl.rewards))
  token_rewards, lengths = scored["token_rewards"], scored["lengths"]
  valid = token_mask(lengths, token_rewards.shape[1])
  per_token = jnp.where(valid, token_rewards, 0.0)
  count = jnp.maximum(valid.sum(), 1)
  mean_tok = per_token.sum() / count
  metrics = {
      "reward": scored["returns"].mean(),
      "reward_std": scored["returns"].std(),
      "edit_distance": scored["edit_distance"].mean(),
      "token_reward_mean": mean_tok,
      "token_reward_std": jnp.sqrt(jnp.sum(jnp.where(
          valid, (token_rewards - mean_tok) ** 2, 0.0)) / count),
      "token_reward_nonzero": jnp.sum(per_token != 0) / count,
      "sample_length": lengths.mean(),
      "empty_fraction": (lengths <= 1).mean()}
  for i, name in enumerate(names):
    metrics[f"reward/{name}"] = scored["terms"][:, i].mean()
  return metrics


def _ce_term(config, model, params, batch, alpha):
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
  samples = {"source": jnp.repeat(batch["source"], k, axis=0),
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
  kl = jnp.zeros(())
  if rl.kl_weight:
    ref_logits = models.target_logits(model, ref_params, samples)
    kl = kl_to_reference(logits, ref_logits, lengths,
                         *models.special_ids(model))
  ce = _ce_term(config, model, params, batch, alpha)
  loss = (1.0 - alpha) * ce + alpha * (rl_term + rl.kl_weight * kl)
  metrics = {"ce": ce, "rl_loss": rl_term, "kl": kl, "alpha": alpha,
             **reward_metrics(config, scored)}
  return loss, metrics


# ------------------------------------------------------------------ MWER
#
# Minimum word error rate training (Prabhavalkar et al. 2018; MRT, Shen et
# al. 2016): the expected risk over each prompt's N-best list under the
# model's probabilities renormalised over that list, mixed with CE.


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
  samples = {"source": jnp.repeat(batch["source"], k, axis=0),
             "target": tokens, "target_lengths": lengths}
  seq_logp, logits = sequence_logprobs(
      model, params, samples, dropout_rng if use_dropout else None)
  risk = expected_risk(seq_logp.reshape(b, k),
                       -scored["returns"].reshape(b, k), valid)
  kl = jnp.zeros(())
  if rl.kl_weight:
    ref_logits = models.target_logits(model, ref_params, samples)
    kl = kl_to_reference(logits, ref_logits, lengths,
                         *models.special_ids(model))
  ce = _ce_term(config, model, params, batch, alpha)
  loss = (1.0 - alpha) * ce + alpha * (risk + rl.kl_weight * kl)
  metrics = {"ce": ce, "mwer": risk, "kl": kl, "alpha": alpha,
             "nbest_unique": valid.sum(-1).mean(),
             **reward_metrics(config, scored)}
  return loss, metrics


# ------------------------------------------------------------------ GRPO
#
# One rollout (K samples per prompt, their old and reference log-probs and
# advantages) feeds `rl.inner_steps` clipped updates: `ir_jax.step` scans
# them inside one jitted program. Conventions follow Tunix's GRPO core
# (tunix/rl/algo_core.py) so the two agree to float precision
# (tests/test_objectives.py checks it when tunix is installed).


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
  r"""Token-level GRPO credit from instant rewards.

  The reward-to-go `G_t = sum_{t' >= t} r_t'` of each sample, normalised
  within its group position by position:

  .. math:: A_{i,t} = (G_{i,t} - \mathrm{mean}_g G_{\cdot,t}) /
            (\mathrm{std}_g G_{\cdot,t} + \epsilon).

  A sample that has ended holds its last reward-to-go at later positions,
  so with a terminal-only reward every `G_{i,t} = R_i` and this is exactly
  `group_advantages` broadcast over the tokens.

  token_rewards: float[B G, T]; lengths: int[B G] (>= 1). Returns
  float32[B G, T], 0 past each sample's length.
  """
  r = token_rewards.astype(jnp.float32)
  t = r.shape[-1]
  to_go = jnp.cumsum(r[:, ::-1], axis=-1)[:, ::-1]
  mask = token_mask(lengths, t)
  last = jnp.take_along_axis(to_go, jnp.clip(lengths - 1, 0, t - 1)[:, None],
                             axis=-1)
  held = jnp.where(mask, to_go, last).reshape(-1, group, t)
  adv = held - held.mean(1, keepdims=True)
  if normalize_std:
    adv = adv / (held.std(1, ddof=1, keepdims=True) + eps)
  return jnp.where(mask, adv.reshape(-1, t), 0.0)


AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


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


def k3_kl(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate on the sampled tokens (Schulman's
  k3, Tunix's `low_var_kl`): `exp(d) - d - 1` with `d = log pi_ref - log pi`.
  Always >= 0. Unbiased only when the tokens are drawn from pi itself
  (on-policy) from its full distribution: with top-k / top-p truncation,
  or after inner updates have moved pi away from the sampler, it is a
  biased estimate."""
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
  stays finite."""
  logits = logits.astype(jnp.float32) / temperature
  ref = jax.lax.stop_gradient(ref_logits).astype(jnp.float32) / temperature
  if pad_id is not None and pad_id != eos_id:
    drop = jnp.arange(logits.shape[-1]) == pad_id
    logits = jnp.where(drop, -1e9, logits)
    ref = jnp.where(drop, -1e9, ref)
  logp = jax.nn.log_softmax(logits, -1)
  logq = jax.nn.log_softmax(ref, -1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


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


def grpo_rollout(config, model, params, batch, rng, *, ref_params=None,
                 reward_embeddings=None, byte_table=None
                 ) -> Tuple[Dict[str, jax.Array], Metrics]:
  """Everything the inner GRPO updates need from one rollout, gradient-free.

  K = `rl.num_samples` samples per prompt scored by `rl.rewards` in the
  sampling loop, their old log-probs (the sampler's), the reference
  log-probs (or logits for `rl.kl_estimator="exact"`) when `rl.kl_weight`
  > 0, and advantages: per token (`rl.credit="token"`,
  `token_group_advantages`) or per sequence (`group_advantages`).

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
  samples = {"source": jnp.repeat(batch["source"], k, axis=0),
             "target": scored["tokens"], "target_lengths": lengths}
  if rl.credit == "token":
    advantages = token_group_advantages(scored["token_rewards"], lengths, k,
                                        normalize_std=rl.group_std)
  else:
    advantages = group_advantages(scored["returns"], k,
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
  ce = _ce_term(config, model, params, batch, alpha)
  loss = (1.0 - alpha) * ce + alpha * term
  return loss, dict(metrics, ce=ce, rl_loss=metrics["pg_loss"], alpha=alpha)
