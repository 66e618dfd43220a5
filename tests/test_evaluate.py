"""ir_jax.evaluate: PER/WER against hand-made references; eval records."""

import os
import shutil

import numpy as np
import pytest

from ir_jax import evaluate, pretrained, workdir
from ir_jax.evaluate import error_rates
from helpers import ROOT


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


class _Writer:
  def __init__(self):
    self.records, self.texts = [], []

  def write(self, record):
    self.records.append(record)

  def text(self, tag, text, step):
    self.texts.append((tag, step))


def test_evaluate_and_log_writes_one_record_per_split(tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "workdir_0_1"), wd)
  config, task, model, params = workdir.load_run(wd)
  writer = _Writer()
  records = evaluate.evaluate_and_log(model, params, task, ("dev", "test"),
                                      32, 10, writer, source="probe")
  assert [r["split"] for r in writer.records] == ["dev", "test"]
  assert writer.texts == [("dev/samples", 10), ("test/samples", 10)]
  dev = records["dev"]
  assert dev["source"] == "probe" and dev["words"] == 64 and dev["step"] == 10
  direct = evaluate.evaluate_split(model, {"params": params}, task, "dev", 64)
  assert dev["per"] == direct["per"] and dev["wer"] == direct["wer"]
  assert evaluate.summary(dev).startswith(
      f"dev: PER {100 * dev['per']:.2f}%  WER {100 * dev['wer']:.2f}%  (64 "
      "items, step 10)")


# ------------------------------------------------------------ significance


def test_word_errors_give_the_error_rates():
  outputs = [("a", "b"), ("c",), ("x", "y", "z")]
  refs = [[("a", "b")], [("c", "d"), ("e",)], [("x", "y")]]
  errors, lengths = evaluate.word_errors(outputs, refs)
  # ("c",) vs ("c","d"): 1 edit, vs ("e",): 1 edit -> the shorter, len 1.
  assert errors.tolist() == [0, 1, 1] and lengths.tolist() == [2, 1, 2]
  rates = evaluate.error_rates(outputs, refs)
  assert rates["per"] == pytest.approx(2 / 5) and rates["wer"] == 2 / 3


def test_bootstrap_identical_systems_p_is_one():
  rng = np.random.default_rng(0)
  errors = rng.integers(0, 3, 200)
  lengths = rng.integers(3, 9, 200)
  out = evaluate.paired_bootstrap(errors, errors, lengths, resamples=2000)
  assert out["delta"] == 0 and out["ci95"] == [0.0, 0.0]
  assert out["p_value"] == 1.0


def test_bootstrap_one_sided_win_and_hand_computed_delta():
  lengths = np.full(50, 2)
  worse = np.ones(50, int)
  better = np.zeros(50, int)
  out = evaluate.paired_bootstrap(better, worse, lengths, resamples=999)
  # Every resample: PER 0 vs 0.5 -> delta -0.5 exactly.
  assert out["delta"] == -0.5 and out["ci95"] == [-0.5, -0.5]
  assert out["p_value"] == pytest.approx(2 / 1000)
  # A noisy but real win: small p, CI excludes 0; reversed, same p.
  rng = np.random.default_rng(1)
  lengths = rng.integers(4, 10, 500)
  a = rng.binomial(lengths, 0.08)
  b = rng.binomial(lengths, 0.12)
  out = evaluate.paired_bootstrap(a, b, lengths, resamples=4000)
  assert out["delta"] == pytest.approx((a.sum() - b.sum()) / lengths.sum())
  assert out["ci95"][1] < 0 and out["p_value"] < 0.01
  back = evaluate.paired_bootstrap(b, a, lengths, resamples=4000)
  assert back["p_value"] == pytest.approx(out["p_value"])


def test_bootstrap_with_each_systems_own_lengths():
  """Where the closest references differ, each PER is over its own
  lengths: delta is PER_a - PER_b exactly, and resamples stay paired."""
  a, na = np.array([1, 0, 2]), np.array([4, 2, 5])
  b, nb = np.array([0, 1, 2]), np.array([3, 2, 6])
  out = evaluate.paired_bootstrap(a, b, na, lengths_b=nb, resamples=500)
  assert out["delta"] == pytest.approx(3 / 11 - 3 / 11)
  out = evaluate.paired_bootstrap(a, b * 0, na, lengths_b=nb, resamples=500)
  assert out["delta"] == pytest.approx(3 / 11)
  with pytest.raises(ValueError, match="equal-length"):
    evaluate.paired_bootstrap(a, b, na, lengths_b=nb[:2])


def test_item_lengths_are_the_shortest_reference():
  refs = [[("a", "b", "c"), ("a",)], [("x", "y")]]
  np.testing.assert_array_equal(evaluate.item_lengths(refs), [1, 2])


def test_mcnemar_hand_computed():
  same = np.array([True, False, True, True])
  assert evaluate.mcnemar(same, same)["p_value"] == 1.0
  # 10 items only a gets right, none only b: p = 2 / 2^10.
  a = np.array([True] * 10 + [False] * 5)
  b = np.array([False] * 10 + [False] * 5)
  out = evaluate.mcnemar(a, b)
  assert (out["only_a"], out["only_b"]) == (10, 0)
  assert out["p_value"] == pytest.approx(2 / 1024)
  # 7 vs 3 discordant: p = 2 (1 + 10 + 45 + 120) / 1024 = 0.34375.
  a = np.array([True] * 7 + [False] * 3 + [True] * 4)
  b = np.array([False] * 7 + [True] * 3 + [True] * 4)
  assert evaluate.mcnemar(a, b)["p_value"] == pytest.approx(0.34375)
  with pytest.raises(ValueError, match="equal-length"):
    evaluate.mcnemar(a, b[:3])


def test_paired_outputs_tests_two_outputs_files(tmp_path):
  """benchmarks/paired_outputs.py: identical files give delta 0 and p = 1;
  the references against an empty output everywhere, a one-sided win."""
  from benchmarks import paired_outputs
  from ir_jax.data import tasks
  task = tasks.g2p(max_train_words=50, max_eval_words=40)
  data = task.eval_sets["test"]
  def write(name, outputs):
    path = tmp_path / name
    path.write_text("".join(evaluate.output_line(k, o) + "\n"
                            for k, o in zip(data.keys, outputs)))
    return str(path)
  right = write("right.tsv", [refs[0] for refs in data.references])
  empty = write("empty.tsv", [()] * len(data.keys))
  same = paired_outputs.compare(task, "test", right, right)
  assert same["delta_per"] == 0 and same["p_value"] == 1
  assert same["mcnemar_p"] == 1 and same["a"]["wer"] == 0
  worse = paired_outputs.compare(task, "test", right, empty)
  assert worse["b"]["per"] == 1 and worse["delta_wer"] == 1
  assert worse["p_value"] < 0.001 and worse["mcnemar_p"] < 1e-10
  assert worse["only_a_right"] == 40 and worse["only_b_right"] == 0
  with pytest.raises(ValueError, match="no output for 40"):
    paired_outputs.compare(task, "dev", right, empty)


def test_split_scores_add_reasoning_gyms_own_checker(tmp_path):
  pytest.importorskip("reasoning_gym")
  pytest.importorskip("gguf")
  import dataclasses
  import gguf_files
  from ir_jax.data import text
  path = str(tmp_path / "t.gguf")
  gguf_files.write(path)
  vocab = text.TextVocab.of(pretrained.tokenizer(path))
  items = text.read_jsonl(os.path.join(ROOT, "data", "gym", "spell_backward",
                                       "dev.jsonl"))[:6]
  encode = lambda s: tuple(vocab.decode(vocab.tokenizer.encode(
      s, add_special_tokens=False)))
  outputs = [encode(it["target"]) for it in items[:3]] + [
      encode("wrong") for _ in items[3:]]
  refs = [[encode(r) for r in it["references"]] for it in items]
  task = dataclasses.make_dataclass("T", ["name", "vocab"])("text", vocab)
  scores = evaluate.split_scores(task, outputs, refs, items)
  assert scores["task_score"] == pytest.approx(0.5)
  assert scores["exact_match"] == pytest.approx(0.5)
  assert "task_score" not in evaluate.split_scores(task, outputs, refs)


def test_edit_operations_hand_made_and_sum_to_the_distance():
  assert evaluate.edit_operations("abxd", "abcd") == (1, 0, 0)
  assert evaluate.edit_operations("abc", "abcd") == (0, 0, 1)
  assert evaluate.edit_operations("abcde", "abcd") == (0, 1, 0)
  assert evaluate.edit_operations("", "ab") == (0, 0, 2)
  assert evaluate.edit_operations("ab", "") == (0, 2, 0)
  # kitten -> sitting: k/s and e/i substituted, the final g missing.
  assert evaluate.edit_operations("kitten", "sitting") == (2, 0, 1)
  rng = np.random.default_rng(0)
  outs = [tuple(rng.choice(list("abc"), rng.integers(0, 7))) for _ in range(50)]
  refs = [tuple(rng.choice(list("abc"), rng.integers(1, 7))) for _ in range(50)]
  errors, _ = evaluate.word_errors(outs, [[r] for r in refs])
  assert [sum(evaluate.edit_operations(o, r)) for o, r in zip(outs, refs)] \
      == errors.tolist()
