"""Jitted decoding for any ir_jax model: prefill a left-padded prompt, then a
`lax.scan` of single-token steps over the model's cache (KV for the
Transformer, carry for the LSTM). Nothing leaves the device until the end.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ir_jax import rewards
from ir_jax.data.vocab import EOS, PAD


def lengths_from_eos(tokens: jax.Array) -> jax.Array:
  """int32[B]: index of the first EOS + 1 (EOS counted), or T if none."""
  is_eos = tokens == EOS
  first = jnp.argmax(is_eos, axis=1)
  return jnp.where(is_eos.any(1), first + 1, tokens.shape[1]).astype(jnp.int32)


def without_pad(logits: jax.Array) -> jax.Array:
  """logits [..., V] with PAD at -inf: the distribution samples come from
  and that RL objectives score them under."""
  return logits.at[..., PAD].set(-jnp.inf)


def _pick(logits, rng, temperature, top_k, top_p=1.0):
  """Greedy (temperature 0) or sampled next tokens from logits [B, V]."""
  if temperature == 0.0:
    return logits.argmax(-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    # Nucleus: keep the smallest prefix of the sorted distribution whose
    # mass reaches top_p (the most likely token is always kept).
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = before >= top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(rng, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_len",
                                             "temperature", "top_k"))
def generate(model, params, source: jax.Array, rng: Optional[jax.Array] = None,
             *, max_len: int, temperature: float = 0.0, top_k: int = 0,
             allowed: Optional[jax.Array] = None):
  """Generates `max_len` target tokens after each prompt.

  Args:
    model: a model from `ir_jax.models` (static).
    params: its variables ({"params": ...}).
    source: int32[B, P] left-padded prompts ending in SEP.
    rng: PRNG key (sampling only).
    max_len: target tokens to generate, EOS included.
    temperature: 0 for greedy, else sampling temperature.
    top_k: sample among the k most likely tokens (0 = all).
    allowed: optional bool[V]: the only tokens that may be emitted (a
      task's target symbols and EOS); None allows every token but PAD.

  Returns:
    tokens int32[B, max_len] (tokens after the first EOS are PAD) and their
    lengths int32[B] (EOS included).
  """
  batch, prompt = source.shape
  if rng is None:
    rng = jax.random.key(0)
  restrict = (without_pad if allowed is None else
              (lambda l: jnp.where(allowed, l, -jnp.inf)))
  cache = model.init_cache(batch, prompt + max_len)
  logits, cache = model.apply(params, source, source != PAD, cache)
  rngs = jax.random.split(rng, max_len)
  first = _pick(restrict(logits[:, -1]), rngs[0], temperature, top_k)

  def step(carry, key):
    token, cache = carry
    logits, cache = model.apply(params, token[:, None],
                                jnp.ones((batch, 1), bool), cache)
    nxt = _pick(restrict(logits[:, -1]), key, temperature, top_k)
    return (nxt, cache), nxt

  _, rest = lax.scan(step, (first, cache), rngs[1:])
  tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
  lengths = lengths_from_eos(tokens)
  tokens = jnp.where(jnp.arange(max_len) < lengths[:, None], tokens, PAD)
  return tokens, lengths


@functools.partial(jax.jit, static_argnames=(
    "model", "max_len", "num_samples", "temperature", "top_k", "top_p",
    "reward"))
def sample_with_rewards(model, params, source: jax.Array, target: jax.Array,
                        target_lengths: jax.Array, rng: jax.Array, *,
                        max_len: int, num_samples: int = 1,
                        temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0,
                        reward: rewards.InstantReward = rewards.edit_distance_reward()):
  """Samples K continuations per prompt, each token rewarded on the spot.

  The reward's state (`rewards.InstantReward`; by default the edit-distance
  DP row against the target) is carried in the decoding loop: each sampled
  token advances it by `reward.step` (O(M) for the edit distance), and the
  token that ends a sample (EOS or the length limit) also gets
  `reward.finish`. For the edit distance this is `rewards.instant_rewards`'
  definition and sum_t r_t = -ED. Target and samples both include EOS,
  which leaves the edit distance unchanged.

  Args:
    source: int32[B, P] prompts; target: int32[B, M] with EOS inside
      `target_lengths` (int32[B]).
    rng: PRNG key. temperature / top_k / top_p: as `generate` (temperature 0
      gives greedy, and then all K samples are equal).
    num_samples: K samples per prompt; outputs are ordered [b0 k0, b0 k1, ...].
    reward: the instant reward (static: a hashable `InstantReward`).

  PAD is never sampled: teacher forcing reads PAD as padding, so a sampled
  PAD would be scored under another context than it was drawn in.

  Returns:
    dict with tokens int32[B K, T] (PAD after the first EOS), lengths
    int32[B K] (EOS included), rewards float32[B K, T] (0 past the length),
    logprobs float32[B K, T]: log pi(y_t | y_<t) under the sampling
    temperature, before top-k / top-p truncation (the old log-probs of
    GRPO's ratio; 0 past the length, and 0 for greedy), and reward_state,
    the reward's state after each sample's last token.
  """
  source = jnp.repeat(source, num_samples, axis=0)
  target = jnp.repeat(target, num_samples, axis=0)
  m = jnp.repeat(target_lengths, num_samples, axis=0)
  batch, prompt = source.shape

  cache = model.init_cache(batch, prompt + max_len)
  logits, cache = model.apply(params, source, source != PAD, cache)
  logits = logits[:, -1]
  state = reward.init(target, m)
  done = jnp.zeros((batch,), bool)
  keys = jax.random.split(rng, max_len)

  def step(carry, xs):
    logits, cache, state, done = carry
    key, t = xs
    logits = without_pad(logits)
    token = _pick(logits, key, temperature, top_k, top_p)
    token = jnp.where(done, PAD, token)
    if temperature == 0.0:
      logp = jnp.zeros((batch,), jnp.float32)
    else:
      logp = jnp.take_along_axis(jax.nn.log_softmax(
          logits.astype(jnp.float32) / temperature, axis=-1),
          token[:, None], axis=-1)[:, 0]
    new_state, r = reward.step(state, token, t)
    ends = (token == EOS) | (t == max_len - 1)
    r = r + jnp.where(ends, reward.finish(new_state), 0.0)
    r = jnp.where(done, 0.0, r).astype(jnp.float32)
    state = jax.tree.map(
        lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)),
                               b, a), new_state, state)
    logits, cache = model.apply(params, token[:, None], ~done[:, None], cache)
    return ((logits[:, -1], cache, state, done | ends),
            (token, r, jnp.where(done, 0.0, logp)))

  (_, _, state, _), (tokens, rewards_, logps) = lax.scan(
      step, (logits, cache, state, done), (keys, jnp.arange(max_len)))
  tokens = tokens.T
  return {"tokens": tokens, "lengths": lengths_from_eos(tokens),
          "rewards": rewards_.T, "logprobs": logps.T, "reward_state": state}


@jax.jit
def mbr_select(candidates: jax.Array, lengths: jax.Array,
               weights: Optional[jax.Array] = None):
  """Minimum Bayes risk choice under the exact edit distance.

  risk_k = sum_j w_j ED(c_k, c_j) / sum_j w_j over the K candidates of each
  item (uniform w for samples, which already carry the model's
  probabilities; the N-best's renormalised probabilities otherwise): the
  candidate closest to all the others, the medoid. Ties go to the lowest
  index, so put the greedy output first.

  Args:
    candidates: int32[B, K, T]; lengths: int32[B, K] (the valid prefix).
    weights: optional float[B, K] >= 0.

  Returns:
    (index int32[B] of the chosen candidate, risk float32[B, K]).
  """
  b, k, t = candidates.shape
  left = jnp.repeat(candidates, k, axis=1).reshape(b * k * k, t)
  right = jnp.tile(candidates, (1, k, 1)).reshape(b * k * k, t)
  dist = rewards.levenshtein(
      left, right, pred_lengths=jnp.repeat(lengths, k, axis=1).reshape(-1),
      target_lengths=jnp.tile(lengths, (1, k)).reshape(-1)).reshape(b, k, k)
  w = jnp.ones((b, k), jnp.float32) if weights is None else weights
  risk = (dist.astype(jnp.float32) * w[:, None, :]).sum(-1) / w.sum(
      -1, keepdims=True)
  return jnp.argmin(risk, axis=-1).astype(jnp.int32), risk


def mbr_decode(model, params, source: jax.Array, rng: jax.Array, *,
               max_len: int, num_samples: int, temperature: float = 1.0,
               allowed: Optional[jax.Array] = None):
  """Greedy output plus `num_samples` samples per prompt, then the MBR
  choice (`mbr_select`) among them. Returns tokens int32[B, max_len] and
  lengths int32[B], as `generate`."""
  batch = source.shape[0]
  greedy, greedy_len = generate(model, params, source, max_len=max_len,
                                allowed=allowed)
  sampled, sampled_len = generate(
      model, params, jnp.repeat(source, num_samples, axis=0), rng,
      max_len=max_len, temperature=temperature, allowed=allowed)
  tokens = jnp.concatenate([greedy[:, None], sampled.reshape(
      batch, num_samples, max_len)], axis=1)
  lengths = jnp.concatenate([greedy_len[:, None], sampled_len.reshape(
      batch, num_samples)], axis=1)
  best, _ = mbr_select(tokens, lengths)
  rows = jnp.arange(batch)
  return tokens[rows, best], lengths[rows, best]
