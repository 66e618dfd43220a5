"""Vocabularies: specials first, sorted unique symbols, decode stops at EOS."""

from ir_jax.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab


def test_build_encode_decode():
  vocab = Vocab.build(["b", "a", "b", "<eos>", "AH"])
  assert vocab.symbols == SPECIALS + ("AH", "a", "b")
  assert vocab.size == len(SPECIALS) + 3
  ids = vocab.encode(["a", "zz", "AH"])
  assert ids == [vocab.index["a"], UNK, vocab.index["AH"]]
  assert vocab.decode([BOS, *ids, EOS, vocab.index["b"]]) == ["a", "AH"]
  assert vocab.decode([PAD, 999, vocab.index["b"]]) == ["b"]
