"""Tasks as (source, target) token arrays in prefix-LM form, and their batches.

Every example is laid out as

  source: [PAD ... PAD, BOS, s_1 ... s_k, SEP]   int32[P], left-padded
  target: [t_1 ... t_l, EOS, PAD ... PAD]         int32[T], right-padded

so that all sources end at the same position: decoding runs in lock-step for
a batch and training and decoding see identical positions. The loss covers
the target side only.
"""

import collections
import dataclasses
import math
import pydoc_data.topics
from typing import Dict, List, Optional, Sequence, Tuple

import grain
import numpy as np

from ir_jax.data import cmudict
from ir_jax.data.vocab import BOS, EOS, PAD, SEP, Vocab


@dataclasses.dataclass
class EvalSet:
  """Inputs and references for scoring generation."""
  keys: List[str]                       # Word (or context) per row.
  source: np.ndarray                    # int32[W, P]
  references: List[List[Tuple[str, ...]]]


@dataclasses.dataclass
class Task:
  name: str
  vocab: Vocab
  source_len: int
  target_len: int
  train: Dict[str, np.ndarray]          # source, target, target_lengths
  eval_sets: Dict[str, EvalSet]
  eval_targets: Dict[str, Dict[str, np.ndarray]]  # Teacher-forced eval CE.
  report: Dict[str, int]                # Bad-data counts, never silent.

  def encode_sources(self, items: Sequence[Sequence[str]]) -> np.ndarray:
    return np.stack([encode_source(self.vocab, s, self.source_len)
                     for s in items])


def encode_source(vocab: Vocab, symbols: Sequence[str], length: int):
  ids = [BOS] + vocab.encode(symbols)[:length - 2] + [SEP]
  return np.asarray([PAD] * (length - len(ids)) + ids, np.int32)


def encode_target(vocab: Vocab, symbols: Sequence[str], length: int):
  ids = vocab.encode(symbols)[:length - 1] + [EOS]
  return np.asarray(ids + [PAD] * (length - len(ids)), np.int32)


def _arrays(vocab, pairs, source_len, target_len):
  source = np.stack([encode_source(vocab, s, source_len) for s, _ in pairs])
  target = np.stack([encode_target(vocab, t, target_len) for _, t in pairs])
  lengths = (target != PAD).sum(1).astype(np.int32)
  return {"source": source, "target": target, "target_lengths": lengths}


def g2p(source_len: int = 24, target_len: int = 24, stress: bool = False,
        max_train_words: Optional[int] = None, max_eval_words: Optional[int] = None,
        path: Optional[str] = None) -> Task:
  """Letters -> phonemes on CMUdict (split cmudict-hash-v1).

  Every training pronunciation is an example. Words whose letters or
  phonemes exceed the lengths are dropped from training and counted; in
  evaluation they stay (truncated source) and are scored against the full
  references, so the reported PER/WER cover every word of the split.
  """
  lexicon, skipped = cmudict.load(stress=stress, path=path)
  report = collections.Counter({f"cmudict_{k}": v for k, v in skipped.items()})
  letters = {c for w in lexicon["train"] for c in w}
  phones = {p for prons in lexicon["train"].values() for pr in prons for p in pr}
  vocab = Vocab.build(sorted(letters) + sorted(phones))
  pairs = []
  for word in sorted(lexicon["train"])[:max_train_words]:
    for pron in lexicon["train"][word]:
      if len(word) + 2 > source_len or len(pron) + 1 > target_len:
        report["train_too_long"] += 1
        continue
      pairs.append((list(word), list(pron)))
  eval_sets, eval_targets = {}, {}
  for split in ("dev", "test"):
    words = sorted(lexicon[split])[:max_eval_words]
    too_long = sum(len(w) + 2 > source_len for w in words)
    if too_long:
      report[f"{split}_source_truncated"] = too_long
    eval_sets[split] = EvalSet(
        keys=words,
        source=np.stack([encode_source(vocab, list(w), source_len)
                         for w in words]),
        references=[lexicon[split][w] for w in words])
    eval_targets[split] = _arrays(
        vocab, [(list(w), list(lexicon[split][w][0])) for w in words],
        source_len, target_len)
  unknown = sum(c not in letters for s in ("dev", "test")
                for w in lexicon[s] for c in w)
  if unknown:
    report["eval_unknown_letters"] = unknown
  train = _arrays(vocab, pairs, source_len, target_len)
  return Task("g2p", vocab, source_len, target_len, train, eval_sets,
              eval_targets, dict(report))


def default_corpus() -> str:
  """English text that ships with Python itself (the pydoc topic pages)."""
  return "\n\n".join(pydoc_data.topics.topics[k]
                     for k in sorted(pydoc_data.topics.topics))


def charlm(paths: Sequence[str] = (), context: int = 32, continuation: int = 16,
           stride: int = 8, max_eval_items: Optional[int] = 512) -> Task:
  """Character LM as continuation: source = `context` chars, target = next.

  Text files are read as UTF-8 (undecodable bytes replaced and counted);
  empty files are counted. The text is split 90/5/5 by position.
  """
  report = collections.Counter()
  texts = []
  for p in paths:
    with open(p, "rb") as f:
      raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    report["replaced_bytes"] += text.count("\ufffd")
    if not text.strip():
      report["empty_files"] += 1
      continue
    texts.append(text)
  text = "\n".join(texts) if texts else default_corpus()
  text = " ".join(text.split(" "))
  n = len(text)
  parts = {"train": text[:int(0.9 * n)], "dev": text[int(0.9 * n):int(0.95 * n)],
           "test": text[int(0.95 * n):]}
  chars = collections.Counter(parts["train"])
  # Rare characters become <unk> (counted), keeping the softmax small.
  vocab = Vocab.build([c for c, k in chars.items() if k >= 3])
  known = set(vocab.symbols)
  for split, part in parts.items():
    unk = sum(1 for c in part if c not in known)
    if unk:
      report[f"{split}_unknown_chars"] = unk
  source_len, target_len = context + 2, continuation + 1

  def windows(part, step):
    return [(list(part[k:k + context]),
             list(part[k + context:k + context + continuation]))
            for k in range(0, len(part) - context - continuation, step)]

  train = _arrays(vocab, windows(parts["train"], stride), source_len,
                  target_len)
  eval_sets, eval_targets = {}, {}
  for split in ("dev", "test"):
    pairs = windows(parts[split], context + continuation)[:max_eval_items]
    eval_sets[split] = EvalSet(
        keys=["".join(s) for s, _ in pairs],
        source=np.stack([encode_source(vocab, s, source_len) for s, _ in pairs]),
        references=[[tuple(t)] for _, t in pairs])
    eval_targets[split] = _arrays(vocab, pairs, source_len, target_len)
  return Task("charlm", vocab, source_len, target_len, train, eval_sets,
              eval_targets, dict(report))


def build(config) -> Task:
  """The task named by `config.task` (ConfigDict with a `data` section)."""
  d = config.data
  if config.task == "g2p":
    return g2p(d.source_len, d.target_len, d.stress,
               d.get("max_train_words") or None, d.get("max_eval_words") or None)
  if config.task == "charlm":
    return charlm(tuple(d.get("paths") or ()), d.context, d.continuation,
                  d.stride, d.get("max_eval_items") or None)
  raise ValueError(f"config.task must be 'g2p' or 'charlm', got {config.task!r}.")


def train_dataset(train: Dict[str, np.ndarray], batch_size: int, seed: int,
                  total_steps: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Shuffled, repeated, per-process batches of the training arrays.

  Deterministic in `seed`; the iterator's `get_state()` is a small JSON dict
  saved beside each checkpoint, so a resumed run sees the same batches.
  `batch_size` is global: each process reads `batch_size / process_count`.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must divide by the number of "
                     f"processes ({process_count}).")
  num = len(train["target"])
  epochs = math.ceil(total_steps * batch_size / num) + 1
  ds = grain.MapDataset.range(num).repeat(epochs).seed(seed).shuffle()
  ds = ds[process_index::process_count]
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  return ds.map(lambda idx: {k: v[idx] for k, v in train.items()})
