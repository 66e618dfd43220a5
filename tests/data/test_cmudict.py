"""CMUdict: the cmudict-hash-v1 split and the stressless track."""

import pytest

from ir_jax.data import cmudict


@pytest.fixture(scope="module")
def lexicon():
  return cmudict.load()


def test_split_counts_and_anchors(lexicon):
  lex, skipped = lexicon
  assert {k: len(v) for k, v in lex.items()} == {
      "train": 106_141, "dev": 6_182, "test": 12_603}
  import hashlib
  bucket = lambda w: int.from_bytes(hashlib.sha256(
      ("cmudict-g2p-v1\t" + w).encode()).digest()[:8], "big") % 1000
  assert bucket("hello") == 267 and bucket("zywicki") == 503
  assert cmudict.split_of("hello") == "train"
  assert skipped["non_alpha_headword"] > 0  # Counted, not silently dropped.


def test_stressless_track_dedupes(lexicon):
  lex, _ = lexicon
  prons = lex["train"]["hello"]
  assert all(not any(c.isdigit() for p in pr for c in p) for pr in prons)
  assert len(prons) == len(set(prons))
  stressed, _ = cmudict.load(stress=True)
  assert any(any(c.isdigit() for c in p) for p in stressed["train"]["hello"][0])
