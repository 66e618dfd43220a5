"""The text task: any prompt -> target pairs, tokenised by a checkpoint's
tokenizer (`task="text"`), and the CMUdict split written as such pairs.

JSONL files, one item a line:

  {"prompt": "Pronounce BATH:", "target": " B AE TH"}
  {"prompt": "...", "target": "...", "references": ["...", "..."]}

`references` (optional, eval files) lists every accepted answer; without
it the target is the only one. Items are laid out as every task's
(`ir_jax.data.tasks`): the prompt's ids (the tokenizer's BOS as it adds
it) left-padded with the tokenizer's pad id to `data.source_len`, the
target's ids plus EOS right-padded to `data.target_len`. Training drops
(and counts) items that do not fit; evaluation keeps the prompt's last
`source_len` ids and scores against the full references.

Scores (`ir_jax.evaluate`): `wer` = 1 - exact match of the decoded text
(item error rate), `per` = the edit-distance rate over whitespace-separated
units of the text (for the CMUdict JSONL, whose targets are phonemes
separated by spaces, exactly the G2P PER), `ter` over tokens, `cer` over
characters.

  python -m ir_jax.data.text cmudict OUT_DIR [--direction g2p|p2g]
  python -m ir_jax.data.text gym OUT_DIR        # reasoning-gym tasks
  python -m ir_jax.data.text codespell OUT_DIR  # spelling correction
  (ir_jax.data.verifiable)
"""

import argparse
import collections
import functools
import dataclasses
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ir_jax.data import _types as types, hf_tokenizer

Seq = Tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class TextVocab:
  """A checkpoint tokenizer with the `ir_jax.data.vocab.Vocab` interface:
  symbols are the tokenizer's token strings, one per id."""
  tokenizer: hf_tokenizer.Tokenizer
  symbols: Tuple[str, ...]

  @classmethod
  def of(cls, tok: hf_tokenizer.Tokenizer, path: str = "") -> "TextVocab":
    """The vocabulary of a checkpoint's tokenizer (`path` names it in
    errors)."""
    if tok.eos_id is None:
      raise ValueError(f"{path}: the tokenizer names no EOS token "
                       "(tokenizer_config.json eos_token, or eos_token_id in "
                       "generation_config.json / config.json); generation "
                       "could not end.")
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    symbols = [""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
      symbols[i] = piece
    return cls(tok, tuple(symbols))

  @property
  def size(self) -> int:
    return len(self.symbols)

  @property
  def pad_id(self) -> int:
    return int(self.tokenizer.pad_id)

  @property
  def eos_id(self) -> int:
    return int(self.tokenizer.eos_id)

  @property
  def index(self) -> Dict[str, int]:
    return {s: i for i, s in enumerate(self.symbols)}

  def encode(self, seq: Sequence[str]) -> List[int]:
    index = self.index
    return [index[s] for s in seq]

  def decode(self, ids: Sequence[int]) -> List[str]:
    """Token strings up to the first EOS (any of the checkpoint's end
    ids), dropping padding."""
    ends = set(self.tokenizer.eos_ids) | {self.eos_id}
    out = []
    for i in ids:
      i = int(i)
      if i in ends:
        break
      if i != self.pad_id and 0 <= i < len(self.symbols):
        out.append(self.symbols[i])
    return out

  def text(self, pieces: Sequence[str]) -> str:
    """The text of token strings (the tokenizer's decoder)."""
    return self.tokenizer.decode(self.encode(pieces))


def read_jsonl(path: str) -> List[Dict]:
  """Items of a JSONL file; a line that is not an object with string
  `prompt` and `target` is an error naming the file and line. Other
  fields (a task's `metadata`) are kept."""
  items = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg}).") from e
      if not (isinstance(item, dict) and isinstance(item.get("prompt"), str)
              and isinstance(item.get("target"), str)):
        raise ValueError(f"{path}:{n}: each line must be an object with "
                         "string fields \"prompt\" and \"target\", got "
                         f"{line.strip()[:80]!r}.")
      refs = item.get("references", [item["target"]])
      if not (isinstance(refs, list) and refs and
              all(isinstance(r, str) for r in refs)):
        raise ValueError(f"{path}:{n}: \"references\" must be a non-empty "
                         "list of strings.")
      items.append({**item, "references": refs})
  if not items:
    raise ValueError(f"{path}: no items.")
  return items


def write_jsonl(path: str, items: Sequence[Dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def prompt_ids(vocab: TextVocab, prompt: str,
               chat_template: bool = False) -> List[int]:
  """The ids a prompt is fed as: the text with the tokenizer's special
  tokens, or (`chat_template`) one user turn rendered by the tokenizer's
  chat template with the generation prompt, tokenised without adding
  specials again (as transformers' `apply_chat_template(tokenize=True)`).
  A prompt whose first id is the pad id is refused: left padding would
  swallow it."""
  if chat_template:
    rendered = vocab.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = vocab.tokenizer.encode(rendered, add_special_tokens=False)
  else:
    ids = vocab.tokenizer.encode(prompt, add_special_tokens=True)
  if ids and ids[0] == vocab.pad_id:
    raise ValueError(
        f"prompt {prompt[:40]!r} starts with the pad token (id "
        f"{vocab.pad_id}); left padding would read it as padding. Start the "
        "prompt with other text.")
  return ids


def _target_ids(vocab: TextVocab, target: str) -> List[int]:
  return vocab.tokenizer.encode(target, add_special_tokens=False) + [
      vocab.eos_id]


def left_pad(ids: Sequence[int], length: int, pad: int) -> np.ndarray:
  ids = list(ids)[-length:]
  return np.asarray([pad] * (length - len(ids)) + ids, np.int32)


def _right(ids: Sequence[int], length: int, pad: int) -> np.ndarray:
  ids = list(ids)[:length]
  return np.asarray(ids + [pad] * (length - len(ids)), np.int32)


def _arrays(vocab, pairs, source_len, target_len):
  """source/target/target_lengths of (prompt ids, target ids) pairs."""
  pad = vocab.pad_id
  return {"source": np.stack([left_pad(s, source_len, pad) for s, _ in pairs]),
          "target": np.stack([_right(t, target_len, pad) for _, t in pairs]),
          "target_lengths": np.asarray([min(len(t), target_len)
                                        for _, t in pairs], np.int32)}


def task(train_path: str, eval_path: str, tokenizer_path: str,
         source_len: int, target_len: int, test_path: str = "",
         max_train_items: Optional[int] = None,
         max_eval_items: Optional[int] = None, chat_template: bool = False,
         *, load_tokenizer: Callable[[str], hf_tokenizer.Tokenizer]):
  """The text task (an `ir_jax.data.tasks.Task` named "text").

  `load_tokenizer(tokenizer_path)` reads the checkpoint's tokenizer (a
  directory's tokenizer.json or a `.gguf` header:
  `ir_jax.pretrained.tokenizer`, which `ir_jax.state.build_task` passes;
  data/ never imports the checkpoint readers above it).

  Eval sets: "dev" from `eval_path`, "test" from `test_path` when given.
  The references of an item are token-string tuples (`TextVocab.decode`
  of their ids), so PER/WER over them are the token error and item error
  rates; `ir_jax.evaluate` adds the text-level scores.
  """
  if not tokenizer_path:
    raise ValueError("task='text' needs a tokenizer: set "
                     "--config.model.hf_path=DIR (its tokenizer.json) or "
                     "--config.data.tokenizer=DIR.")
  for name, path in (("data.train_path", train_path),
                     ("data.eval_path", eval_path)):
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"config.{name}={path!r}: no such JSONL file "
                              "(one {\"prompt\", \"target\"} object a line; "
                              "python -m ir_jax.data.text --cmudict DIR "
                              "writes the CMUdict split).")
  vocab = TextVocab.of(load_tokenizer(tokenizer_path), tokenizer_path)
  report = collections.Counter()
  pairs = []
  for item in read_jsonl(train_path)[:max_train_items or None]:
    s = prompt_ids(vocab, item["prompt"], chat_template)
    t = _target_ids(vocab, item["target"])
    if len(s) > source_len or len(t) > target_len:
      report["train_too_long"] += 1
      continue
    pairs.append((s, t))
  if not pairs:
    raise ValueError(f"No item of {train_path} fits data.source_len="
                     f"{source_len} prompt tokens and data.target_len="
                     f"{target_len} target tokens (EOS included); raise them.")
  eval_sets, eval_targets = {}, {}
  for split, path in (("dev", eval_path), ("test", test_path)):
    if not path:
      continue
    items = read_jsonl(path)[:max_eval_items or None]
    sources = [prompt_ids(vocab, it["prompt"], chat_template) for it in items]
    truncated = sum(len(s) > source_len for s in sources)
    if truncated:
      report[f"{split}_prompt_truncated"] = truncated
    refs = [[tuple(vocab.decode(_target_ids(vocab, r)))
             for r in it["references"]] for it in items]
    eval_sets[split] = types.EvalSet(
        keys=[it["prompt"] for it in items],
        source=np.stack([left_pad(s, source_len, vocab.pad_id) for s in sources]),
        references=refs, direction="text", items=items)
    eval_targets[split] = _arrays(
        vocab, [(s, _target_ids(vocab, it["target"]))
                for s, it in zip(sources, items)], source_len, target_len)
  train = _arrays(vocab, pairs, source_len, target_len)
  return types.Task("text", vocab, source_len, target_len, train, eval_sets,
                    eval_targets, dict(report), pad_id=vocab.pad_id,
                    eos_id=vocab.eos_id, chat_template=chat_template)


def shapes_only(config, ids: Dict[str, int]):
  """A task="text" stand-in with the config's shapes and no data (for
  `ir-jax compile` / `--dry-run`, which need shapes, not files): one
  all-padding item, the checkpoint's vocabulary size and special ids
  (`ids`: its `vocab_size`, `pad_id`, `eos_id`; empty without one)."""
  d = config.data
  pad, eos = ids.get("pad_id", 0), ids.get("eos_id", 0)
  size = ids.get("vocab_size") or int(config.vocab_multiple)
  vocab = _Sized(tuple(str(i) for i in range(size)))
  train = {"source": np.full((1, d.source_len), pad, np.int32),
           "target": np.full((1, d.target_len), pad, np.int32),
           "target_lengths": np.ones((1,), np.int32)}
  return types.Task("text", vocab, d.source_len, d.target_len, train, {}, {},
                    {}, pad_id=pad, eos_id=eos)


@dataclasses.dataclass(frozen=True)
class _Sized:
  symbols: Tuple[str, ...]

  @property
  def size(self) -> int:
    return len(self.symbols)


# ------------------------------------------------------------ converter


def cmudict_items(split_entries: Dict[str, list], direction: str = "g2p",
                  train: bool = False) -> List[Dict]:
  """JSONL items of one CMUdict split (`ir_jax.data.cmudict.load`'s): g2p
  prompts "Pronounce <word>:" with targets " AH0 B ..." (phonemes
  space-separated, so `per` is the G2P PER); p2g prompts
  "Spell <phonemes>:" with targets " <word>". Train: one item per
  pronunciation; eval: one per word (g2p) or pronunciation (p2g) with
  every accepted answer in `references`."""
  if direction not in ("g2p", "p2g"):
    raise ValueError(f"direction must be 'g2p' or 'p2g', got {direction!r}.")
  if direction == "g2p":
    pairs = [(w, [" " + " ".join(p) for p in prons])
             for w, prons in sorted(split_entries.items())]
    make = lambda w: f"Pronounce {w}:"
  else:
    by_pron = collections.defaultdict(list)
    for w, prons in sorted(split_entries.items()):
      for p in prons:
        by_pron[" ".join(p)].append(" " + w)
    pairs = sorted(by_pron.items())
    make = lambda p: f"Spell {p}:"
  items = []
  for key, answers in pairs:
    if train:
      items += [{"prompt": make(key), "target": a} for a in answers]
    else:
      items.append({"prompt": make(key), "target": answers[0],
                    "references": list(answers)})
  return items


def write_cmudict(out_dir: str, direction: str = "g2p", stress: bool = False,
                  path: Optional[str] = None) -> Dict[str, str]:
  """Writes <out_dir>/{train,dev,test}.jsonl of the project's CMUdict split
  (cmudict-hash-v1, the split every G2P run uses); returns the paths."""
  from ir_jax.data import cmudict
  lexicon, _ = cmudict.load(stress=stress, path=path)
  paths = {}
  for split in ("train", "dev", "test"):
    paths[split] = os.path.join(out_dir, f"{split}.jsonl")
    write_jsonl(paths[split], cmudict_items(lexicon[split], direction,
                                            train=split == "train"))
  return paths


def write_splits(out_dir: str, splits: Dict[str, List[Dict]]
                 ) -> Dict[str, str]:
  """<out_dir>/<split>.jsonl for {split: items}; returns the paths."""
  paths = {}
  for split, items in splits.items():
    paths[split] = os.path.join(out_dir, f"{split}.jsonl")
    write_jsonl(paths[split], items)
  return paths


def write_gym(out_dir: str, tasks=None, size: int = 4000, seed: int = 0,
              create=None, options=None) -> Dict[str, Dict[str, str]]:
  """<out_dir>/<task>/{train,dev,test}.jsonl of reasoning-gym tasks
  (`ir_jax.data.verifiable.gym_splits`); returns the paths. `options`:
  the generators' config fields (e.g. {"min_words": 12} for
  word_sorting), passed to `reasoning_gym.create_dataset`."""
  from ir_jax.data import verifiable
  tasks = tuple(tasks or verifiable.GYM_TASKS)
  if options:
    if create is None:
      try:
        import reasoning_gym
      except ImportError as e:
        raise RuntimeError("reasoning-gym is not installed: pip install -e "
                           "'.[tasks]'.") from e
      create = reasoning_gym.create_dataset
    create = functools.partial(create, **options)
  return {task: write_splits(os.path.join(out_dir, task), splits)
          for task, splits in verifiable.gym_splits(tasks, size, seed,
                                                    create).items()}


def write_codespell(out_dir: str, path: Optional[str] = None
                    ) -> Dict[str, str]:
  """<out_dir>/{train,dev,test}.jsonl of codespell's dictionary."""
  from ir_jax.data import verifiable
  return write_splits(out_dir, verifiable.codespell_splits(path))


def _report(paths: Dict[str, str], prefix: str = "") -> None:
  for split, path in paths.items():
    with open(path, encoding="utf-8") as f:
      print(f"{prefix}{split}: {sum(1 for _ in f)} items -> {path}")


def main(argv=None, prog: str = "python -m ir_jax.data.text") -> int:
  """`ir-jax data cmudict|gym|codespell OUT_DIR ...` (also `python -m
  ir_jax.data.text ...`; `--cmudict OUT_DIR` is the older spelling of
  `cmudict OUT_DIR`)."""
  from ir_jax.data import verifiable
  argv = list(argv if argv is not None else __import__("sys").argv[1:])
  if argv and argv[0] == "--cmudict":
    argv = ["cmudict"] + argv[1:]
  p = argparse.ArgumentParser(
      prog=prog,
      description="Write JSONL tasks for task='text'.")
  sub = p.add_subparsers(dest="source", required=True)
  c = sub.add_parser("cmudict", help="the CMUdict split (G2P / P2G)")
  c.add_argument("out_dir")
  c.add_argument("--direction", default="g2p", choices=("g2p", "p2g"))
  c.add_argument("--stress", action="store_true")
  g = sub.add_parser("gym", help="reasoning-gym tasks (pip install -e "
                     "'.[tasks]')")
  g.add_argument("out_dir")
  g.add_argument("--tasks", default=",".join(verifiable.GYM_TASKS))
  g.add_argument("--size", type=int, default=4000,
                 help="items generated per task, before dropping repeats")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--option", action="append", default=[],
                 metavar="FIELD=INT", help="a generator config field, e.g. "
                 "--option min_words=12 --option max_words=16 (word_sorting)")
  s = sub.add_parser("codespell", help="codespell's misspellings (generated "
                     "here, CC BY-SA 3.0: not for committing)")
  s.add_argument("out_dir")
  s.add_argument("--dictionary", default=None,
                 help="a dictionary.txt (default: the installed codespell's)")
  args = p.parse_args(argv)
  try:
    if args.source == "cmudict":
      _report(write_cmudict(args.out_dir, args.direction, args.stress))
    elif args.source == "gym":
      tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
      options = {}
      for item in args.option:
        field, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
          raise ValueError(f"--option takes FIELD=INT, got {item!r}.")
        options[field] = int(value)
      for task, paths in write_gym(args.out_dir, tasks, args.size,
                                   args.seed, options=options).items():
        _report(paths, f"{task} ")
        print(f"{task}: rl.rewards={verifiable.REWARDS[task]}")
    else:
      _report(write_codespell(args.out_dir, args.dictionary))
  except (RuntimeError, ValueError) as e:
    print(f"error: {e}", file=__import__("sys").stderr)
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
