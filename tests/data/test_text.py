"""task="text": JSONL items tokenised by a checkpoint's tokenizer, the
text-level scores and the CMUdict converter."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from ir_jax import evaluate, pretrained  # noqa: E402
from ir_jax.data import cmudict, text  # noqa: E402
from test_hf_tokenizer import make_tokenizer  # noqa: E402

ITEMS = [{"prompt": "the quick", "target": " brown fox"},
         {"prompt": "lazy", "target": " dog"},
         {"prompt": "the quick brown fox jumps over the lazy dog " * 3,
          "target": " too long a prompt"}]


def write(path, items):
  with open(path, "w") as f:
    for it in items:
      f.write(json.dumps(it) + "\n")
  return str(path)


@pytest.fixture()
def checkpoint(tmp_path):
  make_tokenizer(tmp_path)
  return tmp_path


def test_layout_ids_padding_and_the_report(checkpoint, tmp_path):
  train = write(tmp_path / "train.jsonl", ITEMS)
  dev = write(tmp_path / "dev.jsonl", ITEMS[:1] + [
      {"prompt": "lazy", "target": " dog", "references": [" dog", " cat"]}])
  task = text.task(train, dev, str(checkpoint), source_len=12, target_len=10,
                   load_tokenizer=pretrained.tokenizer)
  tok = task.vocab.tokenizer
  assert (task.pad_id, task.eos_id) == (tok.pad_id, tok.eos_id) == (0, 2)
  assert task.report == {"train_too_long": 1}
  src, tgt = task.train["source"], task.train["target"]
  assert src.shape == (2, 12) and tgt.shape == (2, 10)
  for row, t, n, item in zip(src, tgt, task.train["target_lengths"], ITEMS):
    ids = tok.encode(item["prompt"])           # BOS first, as configured.
    assert ids[0] == tok.bos_id
    np.testing.assert_array_equal(row[-len(ids):], ids)
    assert np.all(row[:-len(ids)] == task.pad_id)
    want = tok.encode(item["target"], add_special_tokens=False) + [2]
    assert n == len(want)
    np.testing.assert_array_equal(t[:n], want)
    assert np.all(t[n:] == task.pad_id)
  refs = task.eval_sets["dev"].references
  assert [task.vocab.text(r) for r in refs[1]] == [" dog", " cat"]
  assert task.vocab.decode(tgt[0]) == list(refs[0][0])


def test_scores_by_hand(checkpoint):
  vocab = text.TextVocab.of(pretrained.tokenizer(str(checkpoint)))
  pieces = lambda s: tuple(vocab.decode(vocab.tokenizer.encode(
      s, add_special_tokens=False)))
  outputs = [pieces(" AH B K"), pieces(" AH B"), pieces(" X Y")]
  refs = [[pieces(" AH B K")], [pieces(" Q Q"), pieces(" AH B C")],
          [pieces(" X Y Z W")]]
  got = evaluate.text_scores(vocab, outputs, refs)
  assert got["exact_match"] == pytest.approx(1 / 3)
  assert got["wer"] == pytest.approx(2 / 3)
  # Units: 0 of 3; 1 of 3 (closest " AH B C"); 2 of 4.
  assert got["per"] == pytest.approx(3 / 10)
  # Characters, leading space stripped: 0 of 6; 2 of 6 ("AH B" -> "AH B C"
  # inserts " C"); 4 of 7.
  assert got["cer"] == pytest.approx(6 / 19)


def test_bad_jsonl_lines_are_named(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"prompt": "a", "target": "b"}\n{"prompt": 3}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: .*\"prompt\" and "):
    text.read_jsonl(str(path))
  path.write_text('not json\n')
  with pytest.raises(ValueError, match="bad.jsonl:1: not JSON"):
    text.read_jsonl(str(path))
  path.write_text('{"prompt": "a", "target": "b", "references": []}\n')
  with pytest.raises(ValueError, match="references"):
    text.read_jsonl(str(path))


def test_missing_files_and_tokenizer_are_clear_errors(checkpoint, tmp_path):
  train = write(tmp_path / "t.jsonl", ITEMS)
  with pytest.raises(FileNotFoundError, match="data.eval_path"):
    text.task(train, str(tmp_path / "nope.jsonl"), str(checkpoint), 8, 8,
              load_tokenizer=pretrained.tokenizer)
  with pytest.raises(ValueError, match="needs a tokenizer"):
    text.task(train, train, "", 8, 8, load_tokenizer=pretrained.tokenizer)


def test_cmudict_converter_writes_the_split(tmp_path):
  lexicon, _ = cmudict.load()
  paths = text.write_cmudict(str(tmp_path))
  items = {s: text.read_jsonl(p) for s, p in paths.items()}
  assert len(items["dev"]) == len(lexicon["dev"])
  assert len(items["test"]) == len(lexicon["test"])
  assert len(items["train"]) == sum(len(p) for p in lexicon["train"].values())
  word = sorted(lexicon["test"])[0]
  first = items["test"][0]
  assert first["prompt"] == f"Pronounce {word}:"
  assert first["references"] == [" " + " ".join(p)
                                 for p in lexicon["test"][word]]
  p2g = text.cmudict_items(lexicon["dev"], "p2g")
  assert all(it["prompt"].startswith("Spell ") for it in p2g)
  assert sum(len(it["references"]) for it in p2g) == sum(
      len(v) for v in lexicon["dev"].values())
