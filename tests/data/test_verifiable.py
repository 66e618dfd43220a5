"""Verifiable text tasks: the converters are deterministic and their splits
disjoint by content; codespell's dictionary format; the committed
reasoning-gym files; reasoning-gym's own checker on kept metadata."""

import json
import os
import random

import pytest

from helpers import ROOT
from ir_jax.data import text, verifiable

GYM = os.path.join(ROOT, "data", "gym")
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "ocean",
         "piano", "lemon", "zebra", "candle", "forest"]


def fake_create(task, seed, size):
  """reasoning-gym's interface and its seeding (item i from
  Random(seed + i)), so two seeds share items and words recur."""
  assert task == "spell_backward"
  out = []
  for i in range(size):
    word = random.Random(seed + i).choice(WORDS)
    out.append({"question": f"Spell this word backward: {word}",
                "answer": word[::-1],
                "metadata": {"word": word, "source_index": i}})
  return out


def test_gym_options_reach_the_generator(tmp_path):
  seen = {}

  def create(task, seed, size, **options):
    seen.update(options)
    return fake_create(task, seed, size)

  text.write_gym(str(tmp_path), ["spell_backward"], 20, 0, create=create,
                 options={"min_words": 12, "max_words": 16})
  assert seen == {"min_words": 12, "max_words": 16}
  assert text.main(["gym", str(tmp_path), "--option", "min_words"]) == 1


def test_long_word_sorting_answers_have_12_to_16_words():
  for split in verifiable.SPLITS:
    items = text.read_jsonl(os.path.join(GYM, "word_sorting_long",
                                         f"{split}.jsonl"))
    counts = {len(it["target"].split(", ")) for it in items}
    assert counts <= set(range(12, 17)) and len(items) > 300


def _contents(splits, key):
  return {s: {json.dumps(key(it)) for it in items}
          for s, items in splits.items()}


def test_gym_split_is_deterministic_and_disjoint_by_content(tmp_path):
  a = text.write_gym(str(tmp_path / "a"), ["spell_backward"], 200, 0,
                           create=fake_create)
  b = text.write_gym(str(tmp_path / "b"), ["spell_backward"], 200, 0,
                           create=fake_create)
  for split in verifiable.SPLITS:
    assert open(a["spell_backward"][split]).read() == open(
        b["spell_backward"][split]).read()
  splits = {s: text.read_jsonl(p) for s, p in a["spell_backward"].items()
            if os.path.getsize(p)}
  words = _contents(splits, lambda it: it["metadata"]["word"])
  assert sum(len(w) for w in words.values()) == len(WORDS)   # No repeats.
  for s in words:
    for t in words:
      assert s == t or not (words[s] & words[t])
  # Another seed shares items, and their words land in the same split.
  other = verifiable.split_by_content(
      verifiable.gym_items("spell_backward", 50, 7, fake_create),
      lambda it: it["metadata"]["word"])
  for split, items in other.items():
    for it in items:
      assert verifiable.split_of(it["metadata"]["word"]) == split


def test_codespell_dictionary_format_and_split(tmp_path):
  path = tmp_path / "dictionary.txt"
  path.write_text("abandonned->abandoned\naache->cache, ache,\n"
                  "clas->class, disabled because of name clash in c++\n"
                  "teh->the\n\n")
  items = verifiable.codespell_items(str(path))
  assert [it["references"] for it in items] == [
      ["abandoned"], ["cache", "ache"], ["class"], ["the"]]
  assert items[1]["target"] == "cache"
  assert items[0]["prompt"].endswith(": abandonned")
  paths = text.write_codespell(str(tmp_path / "out"), str(path))
  seen = [it["metadata"]["misspelling"] for p in paths.values()
          for it in (text.read_jsonl(p) if os.path.getsize(p) else [])]
  assert sorted(seen) == sorted(["abandonned", "aache", "clas", "teh"])
  bad = tmp_path / "bad.txt"
  bad.write_text("no arrow here\n")
  with pytest.raises(ValueError, match="bad.txt:1"):
    verifiable.codespell_items(str(bad))


def test_committed_gym_files_are_disjoint_and_keep_metadata():
  for task, (content, reward) in verifiable.GYM_TASKS.items():
    splits = {s: text.read_jsonl(os.path.join(GYM, task, f"{s}.jsonl"))
              for s in verifiable.SPLITS}
    keys = _contents(splits, lambda it: content(it["metadata"]))
    assert not (keys["train"] & keys["dev"] or keys["train"] & keys["test"]
                or keys["dev"] & keys["test"]), task
    for items in splits.values():
      assert all(it["task"] == task and it["metadata"] for it in items)
    assert reward in (verifiable.CHAR, verifiable.EXACT)
  for task in ("spell_backward", "basic_arithmetic", "word_sorting",
               "letter_counting"):
    assert len(text.read_jsonl(os.path.join(GYM, task, "test.jsonl"))) >= 500


def test_reasoning_gym_scores_kept_items():
  pytest.importorskip("reasoning_gym")
  item = text.read_jsonl(os.path.join(GYM, "spell_backward", "test.jsonl"))[0]
  assert verifiable.score_answer(item, item["target"]) == 1.0
  assert verifiable.score_answer(item, "zzz") < 1.0
  assert verifiable.score_answer({"task": "codespell"}, "x") is None


def test_text_main_takes_subcommands_and_the_old_flag(tmp_path, capsys):
  path = tmp_path / "dictionary.txt"
  path.write_text("teh->the\nrecieve->receive\n")
  assert text.main(["codespell", str(tmp_path / "cs"), "--dictionary",
                    str(path)]) == 0
  assert "items ->" in capsys.readouterr().out
  assert text.main(["gym", str(tmp_path / "g"), "--tasks", "nonesuch"]) == 1
