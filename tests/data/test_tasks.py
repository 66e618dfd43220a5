"""Tasks: the prefix-LM layout and the char-LM's data report."""

import numpy as np

from ir_jax.data import tasks
from ir_jax.data.vocab import BOS, EOS, PAD, SEP


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


def test_join_words_keeps_every_word_once_and_joins_references():
  from ir_jax.data.tasks import WORD_SEPARATOR as SEP, join_words
  lexicon = {"train": {"ab": [("A", "B"), ("A", "P")], "c": [("K",)],
                       "d": [("D",)]},
             "dev": {"ab": [("A", "B"), ("A", "P")], "c": [("K",)],
                     "d": [("D",)], "e": [("E",)], "f": [("F",)]}}
  joined = join_words(lexicon, 2, seed=0)
  # Train: 4 (word, pron) pairs -> 2 items of one pronunciation each.
  assert len(joined["train"]) == 2
  assert all(len(p) == 1 for p in joined["train"].values())
  used = []
  for item, (pron,) in joined["train"].items():
    parts = " ".join(pron).split(f" {SEP} ")
    used += [(w, tuple(x.split())) for w, x in zip(item.split(SEP), parts)]
  assert sorted(used) == sorted((w, p) for w, ps in lexicon["train"].items()
                                for p in ps)
  # Dev: 5 words -> 2 items (one left over), references = products.
  assert len(joined["dev"]) == 2
  for item, refs in joined["dev"].items():
    words = item.split(SEP)
    expect = 1
    for w in words:
      expect *= len(lexicon["dev"][w])
    assert len(refs) == expect
    for r in refs:
      parts = " ".join(r).split(f" {SEP} ")
      assert [tuple(x.split()) in lexicon["dev"][w]
              for x, w in zip(parts, words)] == [True] * len(words)
  assert join_words(lexicon, 1) is lexicon
  assert join_words(lexicon, 2, seed=0) == joined      # Deterministic.


def test_joined_task_scores_items_and_emits_the_separator():
  from ir_jax.data import tasks
  task = tasks.g2p(source_len=40, target_len=36, max_eval_words=30,
                   max_train_words=300, join_words=3)
  dev = task.eval_sets["dev"]
  # The word caps count items (k words each).
  assert len(dev.keys) == 30 and all(k.count("|") == 2 for k in dev.keys)
  sep = task.vocab.index["|"]
  assert sep in task.target_ids["g2p"]
  assert (task.train["target"] == sep).sum(1).min() == 2
