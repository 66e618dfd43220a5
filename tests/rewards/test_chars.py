"""Byte-level instant rewards against rapidfuzz's Levenshtein over the
decoded byte strings (an independent implementation), on random byte-level
vocabularies with multi-byte UTF-8 tokens; the bounded reward's ordering;
GRPO advantages on hand-made groups; the table of a real tokenizer."""

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import decode, models, objectives, pretrained, rewards

Levenshtein = pytest.importorskip("rapidfuzz.distance").Levenshtein

EOS = 1


def vocab(seed=0, size=40):
  """A random byte-level vocabulary: token 0 (PAD) and 1 (EOS) spell
  nothing; the rest 1-8 bytes, some of them multi-byte characters."""
  rng = np.random.default_rng(seed)
  chars = list("abcde ") + ["é", "ß", "日", "🙂"]
  spelled = [b"", b""]
  while len(spelled) < size:
    text = "".join(rng.choice(chars, rng.integers(1, 4)))
    b = text.encode("utf-8")[:8]
    if b not in spelled:
      spelled.append(b)
  table = np.zeros((size, 8), np.int32)
  lengths = np.zeros((size,), np.int32)
  for i, b in enumerate(spelled):
    table[i, :len(b)] = list(b)
    lengths[i] = len(b)
  return spelled, table, lengths


def spell(spelled, ids):
  """The bytes of ids up to EOS, stripped of surrounding whitespace (the
  rewards' comparison rule)."""
  out = b""
  for i in ids:
    if i == EOS:
      break
    out += spelled[i]
  return out.strip(b" \t\n\r")


def batch(seed, rows=16, t=9, m=7):
  """Random samples (EOS anywhere, empty ones) and token targets (EOS
  inside their length, empty ones)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, 40, (rows, t))
  lengths = rng.integers(1, t + 1, rows)
  for i in range(rows):
    tokens[i, lengths[i] - 1] = EOS if rng.random() < 0.7 else tokens[i, 0]
  tokens[0, 0], lengths[0] = EOS, 1                       # Empty sample.
  target = rng.integers(2, 40, (rows, m))
  target_lengths = rng.integers(1, m + 1, rows)
  target[np.arange(rows), target_lengths - 1] = EOS
  target[1, 0], target_lengths[1] = EOS, 1                # Empty target.
  return tokens, lengths, target, target_lengths


def returns(reward, tokens, lengths, target, target_lengths):
  r, state = rewards.score_sequences(reward, jnp.asarray(tokens),
                                     jnp.asarray(lengths), jnp.asarray(target),
                                     jnp.asarray(target_lengths))
  return np.asarray(r).sum(1), state


def distances(spelled, tokens, lengths, target, target_lengths):
  return np.asarray([
      Levenshtein.distance(spell(spelled, tokens[i, :lengths[i]]),
                           spell(spelled, target[i, :target_lengths[i]]))
      for i in range(len(tokens))])


@pytest.mark.parametrize("seed", range(4))
def test_summed_rewards_are_minus_the_byte_levenshtein(seed):
  spelled, table, lengths_table = vocab(seed)
  tokens, lengths, target, target_lengths = batch(seed)
  want = distances(spelled, tokens, lengths, target, target_lengths)
  assert want.max() > 3 and (want == 0).sum() < len(want)
  got, state = returns(rewards.char_edit_distance_reward(table, lengths_table),
                       tokens, lengths, target, target_lengths)
  np.testing.assert_allclose(got, -want, atol=1e-5)
  np.testing.assert_array_equal(rewards.byte_edit_distance_of(state), want)
  n_bytes = np.asarray([len(spell(spelled, target[i, :target_lengths[i]]))
                        for i in range(len(target))])
  got, _ = returns(rewards.char_error_reward(table, lengths_table), tokens,
                   lengths, target, target_lengths)
  np.testing.assert_allclose(got, -np.minimum(want / np.maximum(n_bytes, 1),
                                              1.0), atol=1e-5)
  got, _ = returns(rewards.char_exact_match(table, lengths_table), tokens,
                   lengths, target, target_lengths)
  np.testing.assert_array_equal(got, (want == 0).astype(np.float32))


def test_two_tokenizations_of_the_same_text_match():
  spelled = [b"", b"", b"ab", b"a", b"b", b"c"]
  table = np.zeros((6, 2), np.int32)
  for i, b in enumerate(spelled):
    table[i, :len(b)] = list(b)
  n = np.asarray([len(b) for b in spelled], np.int32)
  tokens = np.asarray([[3, 4, 5, EOS], [2, 5, EOS, 0]])   # a b c / ab c
  target = np.asarray([[2, 5, EOS], [3, 4, 5]])           # ab c / a b c
  got, _ = returns(rewards.char_exact_match(table, n), tokens,
                   np.asarray([4, 3]), target, np.asarray([3, 3]))
  np.testing.assert_array_equal(got, [1.0, 1.0])
  ids, _ = returns(rewards.edit_distance_reward(), tokens, np.asarray([4, 3]),
                   target, np.asarray([3, 3]))
  assert (ids < 0).all()           # Token ids differ where the text does not.


def test_bounded_reward_never_prefers_the_empty_answer():
  # Target "garden" (6 bytes). Answers: empty, long and wrong (CER > 1),
  # wrong with CER exactly 1, close, exact.
  spelled = [b"", b"", b"garden", b"gard", b"en", b"x", b"xxxxxx", b"gar"]
  table = np.zeros((len(spelled), 6), np.int32)
  for i, b in enumerate(spelled):
    table[i, :len(b)] = list(b)
  n = np.asarray([len(b) for b in spelled], np.int32)
  answers = [[EOS], [6, 6, 5, EOS], [6, EOS], [7, 4, EOS], [2, EOS]]
  width = max(map(len, answers))
  tokens = np.asarray([a + [0] * (width - len(a)) for a in answers])
  lengths = np.asarray([len(a) for a in answers])
  target = np.tile([[2, EOS]], (len(answers), 1))
  target_lengths = np.full(len(answers), 2)
  bounded, _ = returns(rewards.char_error_reward(table, n), tokens, lengths,
                       target, target_lengths)
  unbounded, _ = returns(rewards.char_edit_distance_reward(table, n), tokens,
                         lengths, target, target_lengths)
  empty, long_wrong, cer_one, close, exact = bounded
  assert empty == long_wrong == cer_one == -1.0
  assert close > empty and exact == 0.0
  assert unbounded[0] > unbounded[1]        # Unbounded: empty beats trying.
  # GRPO's group-relative advantages order them as each reward does.
  adv_b = np.asarray(objectives.group_advantages(jnp.asarray(bounded), 5))
  adv_u = np.asarray(objectives.group_advantages(jnp.asarray(unbounded), 5))
  assert adv_b[0] == adv_b[1] < adv_b[3] < adv_b[4]
  assert adv_u[0] > adv_u[1]


def constants_shaped(closed_jaxpr, shape):
  """The constants of `shape` anywhere in a traced program: a closed
  jaxpr's consts and its equations' literals, in every nested jaxpr (jit,
  scan, cond bodies). Read from the jaxpr, not the lowered text: how a
  closed-over array is lowered (an inline `dense<...>` or a hoisted
  argument) changes between jax releases; that it is a constant does not."""
  found = []

  def walk(obj):
    if not isinstance(obj, (jex.ClosedJaxpr, jex.Jaxpr)):
      return
    found.extend(c for c in getattr(obj, "consts", ()) if np.shape(c) == shape)
    inner = getattr(obj, "jaxpr", obj)  # One class from jax 0.12.1 on.
    if inner is not obj:
      return walk(inner)
    for eqn in obj.eqns:
      found.extend(v.val for v in eqn.invars if isinstance(v, jex.Literal)
                   and np.shape(v.val) == shape)
      for param in eqn.params.values():
        for p in (param if isinstance(param, (list, tuple)) else [param]):
          walk(p)

  walk(closed_jaxpr)
  return found


def test_the_table_is_a_traced_argument_and_samples_score_in_jit():
  spelled, table, n = vocab(1)
  model = models.Transformer(vocab_size=40, embed_dim=16, num_layers=1,
                             num_heads=2, mlp_dim=32, pad_id=0, eos_id=EOS)
  source = jnp.asarray(np.random.default_rng(0).integers(2, 40, (3, 5)))
  params = model.init(jax.random.key(0), source, source > 0)
  _, _, target, target_lengths = batch(3, rows=3)

  @jax.jit
  def run(table, n, params):
    reward = rewards.char_edit_distance_reward(table, n)
    return decode.sample_with_rewards(
        model, params, source, jnp.asarray(target),
        jnp.asarray(target_lengths), jax.random.key(1), max_len=8,
        num_samples=2, reward=reward)

  assert not constants_shaped(jax.make_jaxpr(run)(table, n, params),
                              table.shape)
  closed = jax.jit(lambda params: run.__wrapped__(table, n, params))
  assert constants_shaped(jax.make_jaxpr(closed)(params),  # It can fail.
                          table.shape)
  out = run(table, n, params)
  tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
  want = distances(spelled, tokens, lengths, np.repeat(target, 2, 0),
                   np.repeat(target_lengths, 2, 0))
  got = np.asarray(out["rewards"]).sum(1)
  np.testing.assert_allclose(got, -want, atol=1e-5)


def test_resolve_needs_the_table_and_parses_as_instant():
  spec = rewards.parse_rewards("char_error:1.0,char_exact_match:0.5,"
                               "exact_match:0.2")
  assert spec.instant == (("char_error", 1.0), ("char_exact_match", 0.5))
  with pytest.raises(ValueError, match="needs the token byte table"):
    rewards.resolve("char_error")
  _, table, n = vocab(0)
  assert isinstance(rewards.resolve("char_error", byte_table=(table, n)),
                    rewards.InstantReward)
  with pytest.raises(ValueError, match="token_bytes must be int"):
    rewards.char_error_reward(table[0], n)


def test_reward_and_eval_use_one_comparison_rule(tmp_path):
  """Decoded samples of a real byte-level BPE tokenizer, with surrounding
  spaces and a target stored with a leading space: the bounded reward is
  -min(eval's CER, 1) item by item, char_exact_match is eval's exact
  match."""
  import gguf_files
  from ir_jax import evaluate
  from ir_jax.data import hf_tokenizer, text
  from ir_jax.models import gguf
  path = str(tmp_path / "t.gguf")
  gguf_files.write(path)
  vocab = text.TextVocab.of(pretrained.tokenizer(path))
  tok = vocab.tokenizer
  table, n = hf_tokenizer.token_byte_table(tok)
  pairs = [(" nedrag", "nedrag"), (" nedrag", " nedrag  "), (" nedrag", ""),
           (" nedrag", "garden"), (" the fox", "the  fox"), ("café", " cafe"),
           (" answer: 42", "answer 42\n"), ("  ", " x"), (" dog", "dogs dog")]
  ids = [tok.encode(o, add_special_tokens=False) + [tok.eos_id]
         for _, o in pairs]
  tgt = [tok.encode(t, add_special_tokens=False) + [tok.eos_id]
         for t, _ in pairs]
  pad = lambda rows: np.asarray([r + [0] * (max(map(len, rows)) - len(r))
                                 for r in rows])
  lengths = np.asarray([len(r) for r in ids])
  tlengths = np.asarray([len(r) for r in tgt])
  bounded, _ = returns(rewards.char_error_reward(table, n), pad(ids), lengths,
                       pad(tgt), tlengths)
  exact, _ = returns(rewards.char_exact_match(table, n), pad(ids), lengths,
                     pad(tgt), tlengths)
  for i, (target, output) in enumerate(pairs):
    scores = evaluate.text_scores(vocab, [tuple(vocab.decode(ids[i]))],
                                  [[tuple(vocab.decode(tgt[i]))]])
    assert bounded[i] == pytest.approx(-min(scores["cer"], 1.0)), pairs[i]
    assert exact[i] == scores["exact_match"], pairs[i]
  assert exact.tolist()[:2] == [1.0, 1.0] and bounded[2] == -1.0
