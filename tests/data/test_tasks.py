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


def _padded_sum(lengths, edges):
  return sum(min(e for e in edges if e >= l) for l in lengths)


def test_length_edges_are_the_exhaustive_optimum():
  import itertools
  rng = np.random.default_rng(0)
  for trial in range(20):
    width = int(rng.integers(4, 12))
    lengths = rng.integers(1, width + 1, size=int(rng.integers(1, 60)))
    for k in (1, 2, 3):
      edges = tasks.length_edges(lengths, k, width)
      assert edges[-1] == width and len(edges) <= k
      assert list(edges) == sorted(set(edges))
      best = min(_padded_sum(lengths, c + (width,))
                 for m in range(k) for c in itertools.combinations(
                     range(1, width), m))
      assert _padded_sum(lengths, edges) == best, (lengths, k, edges)


def _bucketed_task():
  return tasks.g2p(max_train_words=3000, max_eval_words=8)


def test_length_buckets_cut_only_padding_and_cover_each_epoch_once():
  task = _bucketed_task()
  train = task.train
  plan = tasks.LengthBuckets(train, 64, seed=3, k=3)
  assert len(plan.shapes) > 1 and plan.padded_fraction < 0.8
  # Every class fills a batch (small ones joined the widest).
  assert np.all(np.bincount(plan.item_class) >= 64)
  tight = tasks.LengthBuckets(train, 1000, seed=3, k=3)
  assert np.all(np.bincount(tight.item_class) >= 1000)
  src_len = tasks.source_lengths(train["source"])
  seen = []
  for k in range(plan.batches_per_epoch):
    b = plan.batch(k)
    c, idx = plan.epoch(0)[k]
    s, t = plan.shapes[c]
    assert b["source"].shape == (64, s) and b["target"].shape == (64, t)
    # Nothing but padding was cut: the trimmed rows hold every real token.
    assert np.all(src_len[idx] <= s)
    assert np.all(train["target_lengths"][idx] <= t)
    np.testing.assert_array_equal(b["source"], train["source"][idx][:, -s:])
    np.testing.assert_array_equal(b["target"], train["target"][idx][:, :t])
    seen.append(idx)
  seen = np.concatenate(seen)
  assert len(np.unique(seen)) == len(seen)            # Once per epoch.
  assert len(seen) > len(train["target"]) - 64 * len(plan.shapes)
  # Seeded: the same plan twice; epochs and seeds differ.
  again = tasks.LengthBuckets(train, 64, seed=3, k=3)
  np.testing.assert_array_equal(again.batch(5)["source"],
                                plan.batch(5)["source"])
  e1 = plan.batch(plan.batches_per_epoch)
  other = tasks.LengthBuckets(train, 64, seed=4, k=3).batch(0)
  assert not (e1["source"].shape == plan.batch(0)["source"].shape and
              np.array_equal(e1["source"], plan.batch(0)["source"]))
  assert not (other["source"].shape == plan.batch(0)["source"].shape and
              np.array_equal(other["source"], plan.batch(0)["source"]))


def test_bucketed_dataset_splits_batches_over_processes_and_resumes():
  task = _bucketed_task()
  plan = tasks.LengthBuckets(task.train, 32, seed=0, k=2)
  whole = tasks.train_dataset(task.train, 32, 0, 40, buckets=plan)
  halves = [tasks.train_dataset(task.train, 32, 0, 40, p, 2, buckets=plan)
            for p in (0, 1)]
  for k in (0, 7, 39):
    for key in ("source", "target", "target_lengths"):
      np.testing.assert_array_equal(
          np.concatenate([h[k][key] for h in halves]), whole[k][key])
  it = iter(whole.to_iter_dataset())
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = next(it)
  resumed = iter(whole.to_iter_dataset())
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["source"], expected["source"])


def test_bucketed_batches_leave_the_logits_unchanged():
  """Cutting a batch to its class widths removes padding only: both model
  kinds give every target position the same logits on the cut batch."""
  import jax
  from ir_jax import config as config_lib, models, state as state_lib
  task = _bucketed_task()
  plan = tasks.LengthBuckets(task.train, 16, seed=0, k=3)
  c, idx = next((c, idx) for c, idx in plan.epoch(0)
                if plan.shapes[c] != plan.shapes[-1])
  full = {k: v[idx] for k, v in task.train.items()}
  cut = plan.batch([i for i, (cc, _) in enumerate(plan.epoch(0))
                    if cc == c][0])
  t = cut["target"].shape[1]
  assert cut["source"].shape[1] + t < (full["source"].shape[1] +
                                       full["target"].shape[1])
  for variant in ("tiny", "lstm,tiny"):
    model = state_lib.make_model(config_lib.load(
        f"experiments/g2p.py:{variant}"), task)
    tokens, valid = models.model_inputs(full)
    params = model.init(jax.random.key(0), tokens, valid)["params"]
    want = models.target_logits(model, params, full)[:, :t]
    got = models.target_logits(model, params, cut)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
