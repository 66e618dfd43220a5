"""ir_jax.evaluate: PER/WER against hand-made references; eval records."""

import os
import shutil

import pytest

from ir_jax import evaluate, workdir
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
