"""K samples per prompt, scored on device by `rl.rewards`: the rollout
every RL objective starts from, and its logged statistics.

Samples come from `ir_jax.decode.sample_with_rewards`: tokens y [B K, T]
(EOS included in `lengths`), per-token rewards r [B K, T] with
sum_t r_t = the return.
"""

from typing import Dict

import jax
import jax.numpy as jnp

from ir_jax import decode, models, parallel, rewards
from ir_jax.objectives._common import Metrics, token_mask


def instant_reward_of(spec: rewards.RewardSpec, byte_table=None
                      ) -> rewards.InstantReward:
  """The sampler's reward for a parsed `rl.rewards`: its instant terms,
  weighted (the same object for equal specs, so sampling compiles once;
  byte-level terms are built on the step's `byte_table` each trace)."""
  terms = [(rewards.resolve(n, byte_table=byte_table), w)
           for n, w in spec.instant]
  traced = any(n in rewards.NEEDS_BYTE_TABLE for n, _ in spec.instant)
  return rewards.weighted(*terms, cache=not traced)


def group_source(config, source: jax.Array) -> jax.Array:
  """The prompts of K = `rl.num_samples` samples each, as the teacher-
  forced passes take them (`models.target_logits`): int32[B, P] once per
  group (`rl.share_prompts`), or repeated to [B K, P]."""
  if config.rl.share_prompts:
    return source
  return jnp.repeat(source, config.rl.num_samples, axis=0)


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
    target_lengths int32[B K] (repeated), ended bool[B K] (the sample ends
    with EOS, not at the length limit).
  """
  rl = config.rl
  spec = rewards.parse_rewards(rl.rewards)
  instant = instant_reward_of(spec, byte_table)
  t = batch["target"].shape[1]
  out = decode.sample_with_rewards(
      model, {"params": jax.lax.stop_gradient(params)}, batch["source"],
      batch["target"], batch["target_lengths"], rng, max_len=t,
      num_samples=num_samples, temperature=temperature, top_k=rl.top_k,
      top_p=rl.top_p, reward=instant, share_prompts=rl.share_prompts)
  target = jnp.repeat(batch["target"], num_samples, axis=0)
  m = jnp.repeat(batch["target_lengths"], num_samples)
  tokens, lengths = out["tokens"], out["lengths"]
  last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None],
                             axis=1)[:, 0]
  return dict(_with_sequence_terms(
      spec, instant, out["reward_state"], out["rewards"], tokens, lengths,
      target, m, reward_embeddings), logprobs=out["logprobs"],
      ended=(lengths > 0) & (last == models.special_ids(model)[1]))


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
  statistics, sample length (tokens, EOS included), `completion_length`
  (without the EOS; sampled rollouts only) and `empty_fraction`,
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
  if "ended" in scored:   # Sampled: the completion without its EOS.
    metrics["completion_length"] = (lengths - scored["ended"]).mean()
  for i, name in enumerate(names):
    metrics[f"reward/{name}"] = scored["terms"][:, i].mean()
  return metrics
