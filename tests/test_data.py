"""Data: the CMUdict split and anchors, layouts, scoring on hand-made cases."""

import numpy as np
import pytest

from ir_jax.data import cmudict, tasks
from ir_jax.data.vocab import BOS, EOS, PAD, SEP
from ir_jax.evaluate import error_rates


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


def test_layout_left_padded_source_right_padded_target():
  task = tasks.g2p(max_train_words=50, max_eval_words=20)
  src, tgt = task.train["source"], task.train["target"]
  assert np.all(src[:, -1] == SEP)
  first = (src != PAD).argmax(1)
  assert np.all(src[np.arange(len(src)), first] == BOS)
  lengths = task.train["target_lengths"]
  assert np.all(tgt[np.arange(len(tgt)), lengths - 1] == EOS)
  assert task.vocab.decode(tgt[0]) and EOS not in task.vocab.encode(
      task.vocab.decode(tgt[0]))


def test_error_rates_hand_made():
  # Word 1 matches its second reference; word 2 is one substitution from
  # both references of length 2 -> ties go to the lexicographically smaller.
  out = [("K", "AE", "T"), ("B", "X")]
  refs = [[("K", "AA", "T"), ("K", "AE", "T")], [("B", "IY"), ("B", "AY")]]
  r = error_rates(out, refs)
  assert r["wer"] == 0.5
  assert r["per"] == pytest.approx(1 / 5)
  # Ties on distance go to the shorter reference.
  r = error_rates([("A",)], [[("A", "B", "C"), ("B",)]])
  assert r["per"] == pytest.approx(1 / 1)
  # An empty output against a 3-phoneme word is 3 errors.
  assert error_rates([()], [[("A", "B", "C")]])["per"] == 1.0


def test_charlm_default_corpus_and_bad_files(tmp_path):
  task = tasks.charlm(max_eval_items=8)
  assert task.train["source"].shape[1] == 34 and len(task.eval_sets["dev"].keys) == 8
  empty = tmp_path / "empty.txt"
  empty.write_text("   ")
  bad = tmp_path / "bad.txt"
  bad.write_bytes(("hello world, " * 200).encode() + b"\xff\xfe" +
                  ("more text " * 200).encode())
  task = tasks.charlm([str(empty), str(bad)], context=8, continuation=4,
                      max_eval_items=4)
  assert task.report["empty_files"] == 1
  assert task.report["replaced_bytes"] == 2
