"""ir_jax.decode: greedy and sampled decoding with rewards advanced in the loop."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import decode, rewards
from ir_jax.data.vocab import EOS, PAD
from ir_jax.models import LSTM, Transformer
import helpers


VOCAB = 12


def make_model_params(kind):
  """A tiny `kind` in {"transformer", "lstm", "prefix_lm"} and its params."""
  if kind == "lstm":
    model = LSTM(vocab_size=VOCAB, embed_dim=16, hidden_dim=24, num_layers=1)
  else:  # prefix_lm: the 5 source slots of `prompts()` attend both ways.
    model = Transformer(vocab_size=VOCAB, embed_dim=32, num_layers=2,
                        num_heads=2, mlp_dim=32,
                        prefix_len=5 if kind == "prefix_lm" else 0)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0),
                                    jnp.ones((1, 4), jnp.int32)))
  # Bias EOS up a little so samples end at varied lengths.
  params = jax.tree.map(lambda x: x, params)
  params["params"]["logits"]["kernel"] = params["params"]["logits"][
      "kernel"] * 3.0
  return model, params


@pytest.fixture(params=["transformer", "lstm"])
def model_params(request):
  return make_model_params(request.param)


# The prefix LM differs from the causal Transformer only in its mask over the
# source slots; the tests that compare a cached decode with the full forward
# or with exhaustive search cover it (tests/models/test_interface.py checks
# the mask and cache themselves).
@pytest.fixture(params=["transformer", "lstm", "prefix_lm"])
def any_model_params(request):
  return make_model_params(request.param)


def prompts():
  source = jnp.asarray([[0, 1, 5, 6, 2], [1, 7, 8, 9, 2], [0, 0, 1, 10, 2]],
                       jnp.int32)
  target = jnp.asarray([[5, 6, 7, EOS, 0, 0], [8, 9, EOS, 0, 0, 0],
                        [10, 11, 5, 6, 7, EOS]], jnp.int32)
  return source, target, jnp.asarray([4, 3, 6], jnp.int32)


def test_sampling_reproducible_and_eos_stops(model_params):
  model, params = model_params
  source, target, m = prompts()
  f = lambda key: decode.sample_with_rewards(
      model, params, source, target, m, key, max_len=8, num_samples=3)
  a, b = f(jax.random.PRNGKey(3)), f(jax.random.PRNGKey(3))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  c = f(jax.random.PRNGKey(4))
  assert not np.array_equal(a["tokens"], c["tokens"])
  tokens, lengths = np.asarray(a["tokens"]), np.asarray(a["lengths"])
  assert tokens.shape == (9, 8)
  for row, n in zip(tokens, lengths):
    eos = np.flatnonzero(row == EOS)
    if eos.size:
      assert n == eos[0] + 1 and np.all(row[n:] == PAD)
    else:
      assert n == 8


def test_in_loop_rewards_equal_instant_rewards(model_params):
  model, params = model_params
  source, target, m = prompts()
  out = decode.sample_with_rewards(model, params, source, target, m,
                                   jax.random.PRNGKey(0), max_len=8,
                                   num_samples=4, temperature=1.5)
  tgt = jnp.repeat(target, 4, axis=0)
  mm = jnp.repeat(m, 4)
  want = rewards.instant_rewards(out["tokens"], tgt,
                                 pred_lengths=out["lengths"],
                                 target_lengths=mm)
  np.testing.assert_array_equal(out["rewards"], want)
  ed = rewards.levenshtein(out["tokens"], tgt, pred_lengths=out["lengths"],
                           target_lengths=mm)
  np.testing.assert_array_equal(rewards.edit_distance_of(out["reward_state"]),
                                ed)
  np.testing.assert_array_equal(np.asarray(out["rewards"]).sum(-1), -ed)


def test_greedy_sampling_matches_generate(any_model_params):
  model, params = any_model_params
  source, target, m = prompts()
  out = decode.sample_with_rewards(model, params, source, target, m,
                                   jax.random.PRNGKey(0), max_len=6,
                                   temperature=0.0)
  tokens, lengths = decode.generate(model, params, source, max_len=6)
  np.testing.assert_array_equal(out["tokens"], tokens)
  np.testing.assert_array_equal(out["lengths"], lengths)


def test_top_k_and_top_p_restrict_support():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.PRNGKey(0), 300)
  k2 = {int(decode._pick(logits, k, 1.0, 2)[0]) for k in keys}
  assert k2 == {0, 1}
  p = {int(decode._pick(logits, k, 1.0, 0, 0.7)[0]) for k in keys}
  assert p == {0, 1}
  assert {int(decode._pick(logits, k, 1.0, 0, 0.1)[0]) for k in keys} == {0}


def test_greedy_generate_equals_argmax_of_full_forward():
  model = Transformer(vocab_size=23, embed_dim=32, num_layers=2, num_heads=4,
                      mlp_dim=48)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1),
                                    jnp.ones((1, 4), jnp.int32)))
  source = jnp.asarray([[0, 0, 1, 7, 8, 2], [1, 9, 10, 11, 12, 2]], jnp.int32)
  tokens, lengths = decode.generate(model, params, source, max_len=5)
  # Re-run the whole sequence and check each generated token is the argmax.
  seq = jnp.concatenate([source, tokens], axis=1)
  logits, _ = model.apply(params, seq, seq != 0)
  for b in range(2):
    for t in range(int(lengths[b])):
      assert int(tokens[b, t]) == int(logits[b, 5 + t].argmax())


def test_generate_emits_only_allowed_tokens(model_params):
  model, params = model_params
  source, _, _ = prompts()
  allowed = jnp.zeros(VOCAB, bool).at[jnp.array([5, 6, EOS])].set(True)
  free, _ = decode.generate(model, params, source, max_len=6)
  tokens, lengths = decode.generate(model, params, source, max_len=6,
                                    allowed=allowed)
  assert set(np.asarray(free).ravel()) - {5, 6, EOS, PAD}  # Unrestricted.
  assert set(np.asarray(tokens).ravel()) <= {5, 6, EOS, PAD}
  assert np.all(np.asarray(lengths) >= 1)


def test_mbr_picks_the_medoid_on_hand_made_sets():
  from ir_jax import decode
  words = [["abc", "abd", "abc", "xyz"], ["q", "qq", "qqq", "qqqq"]]
  enc = np.zeros((2, 4, 4), np.int32)
  lengths = np.zeros((2, 4), np.int32)
  for b, group in enumerate(words):
    for k, w in enumerate(group):
      enc[b, k, :len(w)] = [ord(c) for c in w]
      lengths[b, k] = len(w)
  best, risk = decode.mbr_select(jnp.asarray(enc), jnp.asarray(lengths))
  # abc: (0 + 1 + 0 + 3) / 4; abd: (1 + 0 + 1 + 3) / 4; xyz: 9 / 4.
  np.testing.assert_allclose(risk[0], [1.0, 1.25, 1.0, 2.25])
  assert int(best[0]) == 0                  # Ties: the first.
  # q..qqqq: the middle lengths are closest to the rest (tie -> "qq").
  np.testing.assert_allclose(risk[1], [1.5, 1.0, 1.0, 1.5])
  assert int(best[1]) == 1
  # Weights: all the mass on "xyz" makes it the choice.
  w = jnp.asarray([[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
  assert int(decode.mbr_select(jnp.asarray(enc), jnp.asarray(lengths),
                               w)[0][0]) == 3


def test_mbr_equals_brute_force():
  from rapidfuzz.distance import Levenshtein
  from ir_jax import decode
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 4, (5, 6, 7)).astype(np.int32)
  lengths = rng.integers(0, 8, (5, 6)).astype(np.int32)
  best, risk = decode.mbr_select(jnp.asarray(tokens), jnp.asarray(lengths))
  for b in range(5):
    seqs = [list(tokens[b, k, :lengths[b, k]]) for k in range(6)]
    want = [np.mean([Levenshtein.distance(s, t) for t in seqs]) for s in seqs]
    np.testing.assert_allclose(risk[b], want, rtol=1e-6)
    assert int(best[b]) == int(np.argmin(want))


# ------------------------------------------------------------------ beam


def _score(model, params, source, outputs, lengths, allowed=None):
  """log p(output | source) by teacher forcing, under the same restriction
  as decoding (PAD never, only `allowed` if given)."""
  from ir_jax import models
  target = jnp.asarray(outputs, jnp.int32)
  logits = models.target_logits(model, params["params"],
                                {"source": jnp.asarray(source),
                                 "target": target})
  logits = (decode.without_pad(logits) if allowed is None
            else jnp.where(allowed, logits, -jnp.inf))
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1),
                             target[..., None], -1)[..., 0]
  mask = jnp.arange(target.shape[1])[None] < jnp.asarray(lengths)[:, None]
  return np.asarray(jnp.where(mask, logp, 0.0).sum(-1))


def test_beam_one_is_greedy_and_wider_beams_score_higher(model_params):
  model, params = model_params
  source, _, _ = prompts()
  greedy, greedy_len = decode.generate(model, params, source, max_len=6)
  one = decode.beam_search(model, params, source, max_len=6, beam=1)
  np.testing.assert_array_equal(one["tokens"][:, 0], greedy)
  np.testing.assert_array_equal(one["lengths"][:, 0], greedy_len)
  greedy_logp = _score(model, params, source, greedy, greedy_len)
  np.testing.assert_allclose(one["logprobs"][:, 0], greedy_logp, atol=1e-4)
  four = decode.beam_search(model, params, source, max_len=6, beam=4)
  assert (np.asarray(four["scores"][:, 0]) >= greedy_logp - 1e-4).all()
  # N-best sorted, each score its hypothesis' own log-probability.
  assert (np.diff(np.asarray(four["scores"]), axis=1) <= 1e-6).all()
  for j in range(4):
    np.testing.assert_allclose(
        four["logprobs"][:, j], _score(model, params, source,
                                       four["tokens"][:, j],
                                       four["lengths"][:, j]), atol=1e-4)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_equals_exhaustive_search(any_model_params, length_penalty):
  """Three allowed tokens (EOS, 5, 6) and 3 steps: 19 hypotheses, all kept
  by a beam of 9; the best must be the exhaustive best."""
  import itertools
  model, params = any_model_params
  source, _, _ = prompts()
  allowed = jnp.zeros(VOCAB, bool).at[jnp.asarray([EOS, 5, 6])].set(True)
  hyps = [(EOS,)] + [p + (EOS,) for n in (1, 2) for p in
                     itertools.product((5, 6), repeat=n)] + list(
                         itertools.product((5, 6), repeat=3))
  outputs = np.zeros((len(hyps), 3), np.int32)
  for i, h in enumerate(hyps):
    outputs[i, :len(h)] = h
  lengths = np.array([len(h) for h in hyps])
  out = decode.beam_search(model, params, source, max_len=3, beam=9,
                           length_penalty=length_penalty, allowed=allowed)
  for b in range(source.shape[0]):
    logp = _score(model, params, np.repeat(source[b:b + 1], len(hyps), 0),
                  outputs, lengths, allowed)
    score = logp / lengths ** length_penalty
    best = int(np.argmax(score))
    np.testing.assert_array_equal(out["tokens"][b, 0], outputs[best])
    np.testing.assert_allclose(out["scores"][b, 0], score[best], atol=1e-4)
    np.testing.assert_allclose(np.sort(np.asarray(out["scores"][b]))[::-1],
                               np.sort(score)[::-1][:9], atol=1e-4)


@pytest.mark.parametrize("pad_id,eos_id", [(9, 6), (6, 6)])
def test_a_checkpoints_own_pad_and_eos_ids(model_params, pad_id, eos_id):
  """Decoding reads the model's pad_id / eos_id (a Hugging Face
  tokenizer's): it ends at eos_id, pads with pad_id, never samples a
  distinct pad token, and can still end when pad == eos (no pad token)."""
  model, params = model_params
  model = model.clone(pad_id=pad_id, eos_id=eos_id)
  source, target, m = prompts()
  target = jnp.where(target == EOS, eos_id, target)
  out = decode.sample_with_rewards(model, params, source, target, m,
                                   jax.random.PRNGKey(0), max_len=8,
                                   num_samples=16)
  tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
  ended = 0
  for row, n in zip(tokens, lengths):
    assert pad_id == eos_id or not np.any(row[:n] == pad_id)
    ends = np.flatnonzero(row == eos_id)
    if ends.size:
      ended += 1
      assert n == ends[0] + 1 and np.all(row[n:] == pad_id)
    else:
      assert n == 8
  assert ended > 0
  greedy, glen = decode.generate(model, params, source, max_len=8)
  for row, n in zip(np.asarray(greedy), np.asarray(glen)):
    assert np.all(row[n:] == pad_id)
    assert pad_id == eos_id or not np.any(row == pad_id)
  beams = decode.beam_search(model, params, source, max_len=8, beam=3)
  for row, n in zip(np.asarray(beams["tokens"]).reshape(-1, 8),
                    np.asarray(beams["lengths"]).reshape(-1)):
    assert np.all(row[n:] == pad_id)
    assert n == 8 or row[n - 1] == eos_id


def test_nbest_mbr_is_the_weighted_medoid_of_the_beam(model_params):
  """MBR over the beam's N-best, weighted by the renormalised sequence
  probabilities: the output is the candidate of least expected edit
  distance to the list, computed here in float64 with the textbook
  Python DP (lowest index among ties). Planted bug this catches: the
  candidates weighted uniformly instead of by their probabilities."""
  model, params = model_params
  source, _, _ = prompts()
  tokens, lengths = decode.nbest_mbr_decode(model, params, source,
                                            max_len=6, beam=4)
  nbest = decode.beam_search(model, params, source, max_len=6, beam=4)
  cands = [[list(np.asarray(nbest["tokens"][b, k])[
      :int(nbest["lengths"][b, k])]) for k in range(4)]
      for b in range(source.shape[0])]
  logp = np.asarray(nbest["logprobs"], np.float64)
  for b in range(source.shape[0]):
    w = np.exp(logp[b] - logp[b].max())
    w /= w.sum()
    risk = [sum(w[j] * helpers.levenshtein(cands[b][k], cands[b][j])
                for j in range(4)) for k in range(4)]
    k = int(np.flatnonzero(np.isclose(risk, min(risk), rtol=1e-5))[0])
    n = int(lengths[b])
    assert n == len(cands[b][k]), (b, risk)
    assert list(np.asarray(tokens[b])[:n]) == cands[b][k], (b, risk)
