"""Jitted decoding for any ir_jax model: prefill a left-padded prompt, then a
`lax.scan` of single-token steps over the model's cache (KV for the
Transformer, carry for the LSTM). Nothing leaves the device until the end.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from ir_jax import models, rewards
from ir_jax.data.vocab import EOS, PAD


def lengths_from_eos(tokens: jax.Array, eos_id: int = EOS) -> jax.Array:
  """int32[B]: index of the first `eos_id` + 1 (EOS counted), or T if none."""
  is_eos = tokens == eos_id
  first = jnp.argmax(is_eos, axis=1)
  return jnp.where(is_eos.any(1), first + 1, tokens.shape[1]).astype(jnp.int32)


def without_pad(logits: jax.Array, pad_id: int = PAD, eos_id: int = EOS
                ) -> jax.Array:
  """logits [..., V] with `pad_id` at -inf: the distribution samples come
  from and that RL objectives score them under. Unchanged when the pad
  token is EOS (a checkpoint without a pad token): EOS must stay
  possible, and what follows it is padding anyway."""
  if pad_id == eos_id:
    return logits
  return logits.at[..., pad_id].set(-jnp.inf)


def _restrict(model, allowed):
  """logits -> logits with the tokens decoding may not emit at -inf."""
  if allowed is None:
    return lambda logits: without_pad(logits, *models.special_ids(model))
  return lambda logits: jnp.where(allowed, logits, -jnp.inf)


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
  pad, eos = models.special_ids(model)
  restrict = _restrict(model, allowed)
  cache = model.init_cache(batch, prompt + max_len)
  logits, cache = model.apply(params, source, models.prompt_mask(source, pad),
                              cache, num_logits=1)
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
  lengths = lengths_from_eos(tokens, eos)
  tokens = jnp.where(jnp.arange(max_len) < lengths[:, None], tokens, pad)
  return tokens, lengths


@functools.partial(jax.jit, static_argnames=(
    "model", "max_len", "num_samples", "temperature", "top_k", "top_p",
    "reward", "share_prompts"))
def sample_with_rewards(model, params, source: jax.Array, target: jax.Array,
                        target_lengths: jax.Array, rng: jax.Array, *,
                        max_len: int, num_samples: int = 1,
                        temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0,
                        reward: rewards.InstantReward = rewards.edit_distance_reward(),
                        share_prompts: bool = True):
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
    share_prompts: prefill the B prompts once and decode the K samples
      from their cache written K times (`models.shared_prompt_pass`); False
      prefills the prompts repeated to [B K, P] (the same samples up to
      float rounding of the prefill, which can flip a near-tie).

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
  k = num_samples
  target = jnp.repeat(target, k, axis=0)
  m = jnp.repeat(target_lengths, k, axis=0)
  pad, eos = models.special_ids(model)
  if not share_prompts:
    source, k = jnp.repeat(source, k, axis=0), 1
  # Each prompt computed once, written K times into the cache.
  logits, cache = models.shared_prompt_pass(model, params, source, k,
                                            source.shape[1] + max_len)
  logits = jnp.repeat(logits[:, -1], k, axis=0)
  batch = logits.shape[0]
  state = reward.init(target, m)
  done = jnp.zeros((batch,), bool)
  keys = jax.random.split(rng, max_len)

  def step(carry, xs):
    logits, cache, state, done = carry
    key, t = xs
    logits = without_pad(logits, pad, eos)
    token = _pick(logits, key, temperature, top_k, top_p)
    token = jnp.where(done, pad, token)
    if temperature == 0.0:
      logp = jnp.zeros((batch,), jnp.float32)
    else:
      logp = jnp.take_along_axis(jax.nn.log_softmax(
          logits.astype(jnp.float32) / temperature, axis=-1),
          token[:, None], axis=-1)[:, 0]
    new_state, r = reward.step(state, token, t)
    ends = (token == eos) | (t == max_len - 1)
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
  return {"tokens": tokens, "lengths": lengths_from_eos(tokens, eos),
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


def nbest_mbr_decode(model, params, source: jax.Array, *, max_len: int,
                     beam: int, length_penalty: float = 0.0,
                     allowed: Optional[jax.Array] = None):
  """The beam's `beam`-best list, then the MBR choice among it
  (`mbr_select`) with each hypothesis weighted by its probability
  renormalised over the list, w_k = p(y_k | x) / sum_j p(y_j | x).
  Returns tokens int32[B, max_len] and lengths int32[B], as `generate`."""
  nbest = beam_search(model, params, source, max_len=max_len, beam=beam,
                      length_penalty=length_penalty, allowed=allowed)
  weights = jax.nn.softmax(nbest["logprobs"], axis=-1)
  best, _ = mbr_select(nbest["tokens"], nbest["lengths"], weights)
  rows = jnp.arange(source.shape[0])
  return nbest["tokens"][rows, best], nbest["lengths"][rows, best]


def _gather_rows(cache, rows: jax.Array):
  """The cache with its batch rows replaced by `rows` (int32[N])."""
  return models.map_cache_rows(
      cache, lambda leaf, axis: jnp.take(leaf, rows, axis=axis))


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam",
                                             "length_penalty"))
def beam_search(model, params, source: jax.Array, *, max_len: int,
                beam: int, length_penalty: float = 0.0,
                allowed: Optional[jax.Array] = None):
  """Batched beam search over the model's cache: the `beam` best outputs.

  A hypothesis ends at EOS (counted in its length) or at `max_len` tokens.
  Its score is log p(y | x) / len(y)^length_penalty (0: the plain
  log-probability, under which beam 1 is exactly greedy decoding). Each
  step keeps the `beam` best unfinished hypotheses out of the beam x V
  expansions and merges the ones that just emitted EOS into the `beam`
  best finished ones; hypotheses still open at `max_len` finish there.

  Args:
    model, params, source, max_len, allowed: as `generate`.
    beam: K, the beam width and the size of the N-best list.
    length_penalty: alpha of the length normalisation above.

  Returns:
    dict with tokens int32[B, K, max_len] (PAD after EOS), lengths
    int32[B, K], scores float32[B, K] (normalised, best first) and logprobs
    float32[B, K] (the unnormalised sums).
  """
  batch, prompt = source.shape
  k, t_max = beam, max_len
  neg = jnp.float32(-1e30)
  pad, eos = models.special_ids(model)
  restrict = _restrict(model, allowed)
  norm = lambda logp, length: logp / (length.astype(jnp.float32)
                                      ** length_penalty)
  # Each prompt prefilled once, its cache written for the K beams.
  logits, cache = models.shared_prompt_pass(model, params, source, k,
                                            prompt + t_max)
  logits = jnp.repeat(logits[:, -1], k, axis=0)
  alive_tokens = jnp.zeros((batch, k, t_max), jnp.int32)
  alive_logp = jnp.where(jnp.arange(k) == 0, 0.0, neg)[None].repeat(batch, 0)
  done_tokens = jnp.zeros((batch, k, t_max), jnp.int32)
  done_logp = jnp.full((batch, k), neg)
  done_score = jnp.full((batch, k), neg)
  done_len = jnp.full((batch, k), t_max, jnp.int32)

  def step(carry, t):
    (logits, cache, alive_tokens, alive_logp, done_tokens, done_logp,
     done_score, done_len) = carry
    logp = jax.nn.log_softmax(restrict(logits.astype(jnp.float32)),
                              axis=-1).reshape(batch, k, -1)
    vocab = logp.shape[-1]
    total = (alive_logp[..., None] + logp).reshape(batch, k * vocab)
    total = jnp.where(jnp.isfinite(total), total, neg)
    cand_logp, cand = lax.top_k(total, 2 * k)               # [B, 2K]
    parent, token = cand // vocab, (cand % vocab).astype(jnp.int32)
    cand_tokens = jnp.take_along_axis(alive_tokens, parent[..., None], 1)
    cand_tokens = cand_tokens.at[:, :, t].set(token)
    ends = (token == eos) | (t == t_max - 1)
    real = cand_logp > neg / 2
    # Finished: merge this step's ending candidates into the K best.
    length = jnp.full(token.shape, t + 1, jnp.int32)
    score = jnp.where(ends & real, norm(cand_logp, length), neg)
    pool_score = jnp.concatenate([done_score, score], 1)
    pool_logp = jnp.concatenate([done_logp, cand_logp], 1)
    pool_len = jnp.concatenate([done_len, length], 1)
    pool_tokens = jnp.concatenate([done_tokens, cand_tokens], 1)
    done_score, keep = lax.top_k(pool_score, k)
    pick = lambda a: jnp.take_along_axis(
        a, keep.reshape(keep.shape + (1,) * (a.ndim - 2)), 1)
    done_logp, done_len, done_tokens = (pick(pool_logp), pick(pool_len),
                                        pick(pool_tokens))
    # Alive: the K best candidates that did not end.
    open_logp = jnp.where(ends, neg, cand_logp)
    alive_logp, keep = lax.top_k(open_logp, k)
    alive_tokens = jnp.take_along_axis(cand_tokens, keep[..., None], 1)
    alive_parent = jnp.take_along_axis(parent, keep, 1)
    alive_token = jnp.take_along_axis(token, keep, 1)
    src_rows = (jnp.arange(batch)[:, None] * k + alive_parent).reshape(-1)
    cache = _gather_rows(cache, src_rows)
    logits, cache = model.apply(params, alive_token.reshape(-1, 1),
                                jnp.ones((batch * k, 1), bool), cache)
    return (logits[:, -1], cache, alive_tokens, alive_logp, done_tokens, done_logp,
            done_score, done_len), None

  carry = (logits, cache, alive_tokens, alive_logp, done_tokens, done_logp,
           done_score, done_len)
  carry, _ = lax.scan(step, carry, jnp.arange(t_max))
  _, _, _, _, tokens, logp, score, lengths = carry
  tokens = jnp.where(jnp.arange(t_max) < lengths[..., None], tokens, pad)
  return {"tokens": tokens, "lengths": lengths, "scores": score,
          "logprobs": logp}
