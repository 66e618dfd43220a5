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
