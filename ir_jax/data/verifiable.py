"""Verifiable text tasks as JSONL for `task="text"`: reasoning-gym's seeded
generators and codespell's dictionary of misspellings.

  python -m ir_jax.data.text gym data/gym          # the five tasks below
  (ir_jax.data.text.write_gym / write_codespell write the files)
  python -m ir_jax.data.text codespell data/codespell

Each line: {"prompt", "target", "references", "task", "metadata"} (the
metadata is what the task's own checker needs; `read_jsonl` keeps it).

* **reasoning-gym** (Apache-2.0; `pip install -e ".[tasks]"`):
  `GYM_TASKS`. Its generators seed item i with `Random(seed + i)`, so two
  seeds share items, and a word or an expression recurs under other
  phrasings: items are split train/dev/test by a hash of their underlying
  content (`content_key`: the word, the expression, the clear text ...),
  and duplicates of a content are dropped, so no content is in two splits.
  The generated files for the default seed and size are committed under
  `data/gym/` (CI does not install reasoning-gym).
* **codespell** (its dictionary is CC BY-SA 3.0, so it is generated on the
  user's machine from the installed package and not committed): one item
  per misspelling, every accepted correction a reference (64,980 items,
  6,064 with several corrections).

`REWARDS` gives the `rl.rewards` that fits each task's answer: the bounded
byte-level edit distance for spelling, reversal, sorting and ciphers
(a near miss is partly right), exact match for numbers (a near miss is
wrong).
"""

import hashlib
import json
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

SPLITS = ("train", "dev", "test")
CHAR = "char_error:1.0,char_exact_match:0.5"
EXACT = "char_exact_match:1.0"


def _words(m):
  words = m["original_words"]
  return sorted(words if isinstance(words, list) else eval_list(words))


def eval_list(text: str) -> List[str]:
  """A list printed by Python (`"['a', 'b']"`) back as a list, without
  eval: reasoning-gym's metadata sometimes holds its repr."""
  import ast
  return list(ast.literal_eval(text))


# task -> (underlying content of an item's metadata, its rl.rewards)
GYM_TASKS: Dict[str, Tuple[Callable[[dict], object], str]] = {
    "spell_backward": (lambda m: m["word"], CHAR),
    "basic_arithmetic": (lambda m: m["expression"], EXACT),
    "word_sorting": (lambda m: (m["direction"], _words(m)), CHAR),
    "letter_counting": (lambda m: (m["target_letter"], m["span"]), EXACT),
    "caesar_cipher": (lambda m: m["clear_text"], CHAR),
}
REWARDS = {**{k: v[1] for k, v in GYM_TASKS.items()}, "codespell": CHAR}


def split_of(content, fractions: Sequence[float] = (0.75, 0.1, 0.15)) -> str:
  """The split of an item by a hash of its content (stable across
  machines, Python versions and generator seeds)."""
  digest = hashlib.sha256(json.dumps(content, sort_keys=True,
                                     default=str).encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2 ** 64
  edge = 0.0
  for name, f in zip(SPLITS, fractions):
    edge += f
    if u < edge:
      return name
  return SPLITS[-1]


def split_by_content(items: Iterable[dict], content: Callable[[dict], object],
                     fractions: Sequence[float] = (0.75, 0.1, 0.15)
                     ) -> Dict[str, List[dict]]:
  """{split: items}, each content in one split only, its first item kept."""
  out: Dict[str, List[dict]] = {s: [] for s in SPLITS}
  seen = set()
  for item in items:
    key = json.dumps(content(item), sort_keys=True, default=str)
    if key in seen:
      continue
    seen.add(key)
    out[split_of(json.loads(key), fractions)].append(item)
  return out


def gym_items(task: str, size: int, seed: int,
              create: Optional[Callable] = None) -> List[dict]:
  """`size` items of a reasoning-gym task as JSONL dicts (`create`:
  `reasoning_gym.create_dataset`, or a stand-in with its interface)."""
  if task not in GYM_TASKS:
    raise ValueError(f"unknown task {task!r}; known: {', '.join(GYM_TASKS)}.")
  if create is None:
    try:
      import reasoning_gym
    except ImportError as e:
      raise RuntimeError("reasoning-gym is not installed: pip install -e "
                         "'.[tasks]' (it pins its own dependencies, so it "
                         "is not in the test extra).") from e
    create = reasoning_gym.create_dataset
  data = create(task, seed=seed, size=size)
  return [{"prompt": e["question"], "target": str(e["answer"]),
           "references": [str(e["answer"])], "task": task,
           "metadata": json.loads(json.dumps(e["metadata"], default=str))}
          for e in (data[i] for i in range(size))]


def gym_splits(tasks: Sequence[str] = tuple(GYM_TASKS), size: int = 4000,
               seed: int = 0, create=None) -> Dict[str, Dict[str, List]]:
  """{task: {split: items}} of reasoning-gym tasks, split by content
  (`ir_jax.data.text.write_gym` writes them)."""
  out = {}
  for task in tasks:
    content = lambda item, task=task: GYM_TASKS[task][0](item["metadata"])
    out[task] = split_by_content(gym_items(task, size, seed, create), content)
  return out


def codespell_dictionary() -> str:
  """The path of the installed codespell's dictionary.txt."""
  try:
    import codespell_lib
  except ImportError as e:
    raise RuntimeError("codespell is not installed: pip install -e "
                       "'.[tasks]'.") from e
  return os.path.join(os.path.dirname(codespell_lib.__file__), "data",
                      "dictionary.txt")


def codespell_items(path: str) -> List[dict]:
  """One item per line `wrong->fix` / `wrong->fix1, fix2,` / `wrong->fix,
  reason` of a codespell dictionary (codespell's own parsing: text after
  the last comma is a reason unless the line ends with a comma)."""
  items = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      wrong, sep, data = line.partition("->")
      if not sep:
        raise ValueError(f"{path}:{n}: not 'misspelling->correction'.")
      comma = data.rfind(",")
      if comma == len(data) - 1:
        data = data[:comma]
      elif comma >= 0:
        data = data[:comma]          # The rest is a reason, not a fix.
      fixes = [x.strip() for x in data.split(",") if x.strip()]
      if not fixes:
        continue
      items.append({"prompt": f"Correct the spelling of this word: {wrong}",
                    "target": fixes[0], "references": fixes,
                    "task": "codespell", "metadata": {"misspelling": wrong}})
  return items


def codespell_splits(path: Optional[str] = None) -> Dict[str, List]:
  """{split: items} of codespell's dictionary (default: the installed
  one's), split by a hash of the misspelling."""
  items = codespell_items(path or codespell_dictionary())
  return split_by_content(items,
                          lambda item: item["metadata"]["misspelling"])


def score_answer(item: dict, output: str) -> Optional[float]:
  """reasoning-gym's own `score_answer` of an output for a kept item (a
  host function, at eval time only); None for other tasks or without
  reasoning-gym."""
  task = item.get("task")
  if task not in GYM_TASKS:
    return None
  try:
    import reasoning_gym
  except ImportError:
    return None
  fn = reasoning_gym.get_score_answer_fn(task)
  return float(fn(output, {"answer": item["target"],
                           "metadata": item.get("metadata", {})}))


__all__ = ["CHAR", "EXACT", "GYM_TASKS", "REWARDS", "SPLITS",
           "codespell_dictionary", "codespell_items", "codespell_splits",
           "gym_items", "gym_splits", "score_answer", "split_by_content",
           "split_of"]
