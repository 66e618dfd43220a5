"""Tasks as (source, target) token arrays in prefix-LM form, and their batches.

Every example is laid out as

  source: [PAD ... PAD, BOS, s_1 ... s_k, SEP]   int32[P], left-padded
  target: [t_1 ... t_l, EOS, PAD ... PAD]         int32[T], right-padded

so that all sources end at the same position: decoding runs in lock-step for
a batch and training and decoding see identical positions. The loss covers
the target side only.
"""

import collections
import math
import pydoc_data.topics
from typing import Dict, Optional, Sequence, Tuple

import grain
import numpy as np

from ir_jax.data import cmudict
from ir_jax.data._types import EvalSet, Task, encode_source  # noqa: F401
from ir_jax.data.vocab import EOS, PAD, SPECIALS, UNK, Vocab


def encode_target(vocab: Vocab, symbols: Sequence[str], length: int):
  ids = vocab.encode(symbols)[:length - 1] + [EOS]
  return np.asarray(ids + [PAD] * (length - len(ids)), np.int32)


def _arrays(vocab, pairs, source_len, target_len, prompt=()):
  source = np.stack([encode_source(vocab, s, source_len, prompt)
                     for s, _ in pairs])
  target = np.stack([encode_target(vocab, t, target_len) for _, t in pairs])
  lengths = (target != PAD).sum(1).astype(np.int32)
  return {"source": source, "target": target, "target_lengths": lengths}


DIRECTIONS = ("g2p", "p2g")
WORD_SEPARATOR = "|"          # Between joined words, on both sides.
MAX_JOINED_REFERENCES = 16


def join_words(lexicon: Dict[str, Dict[str, list]], k: int, seed: int = 0
               ) -> Dict[str, Dict[str, list]]:
  """A lexicon of k-word items (`data.join_words`): longer outputs, where
  exposure bias is largest.

  Each split's entries are shuffled (seeded, so every run sees the same
  items) and taken k at a time; a leftover shorter group is dropped. An
  item's spelling and pronunciations join its words' with
  `WORD_SEPARATOR`. Train: every (word, pronunciation) pair occurs once,
  so an item has one pronunciation. Dev/test: every word once, and the
  references are the products of the words' pronunciations (at most
  `MAX_JOINED_REFERENCES`, in order), so a word with variants is right
  under any of them.
  """
  if k < 2:
    return lexicon
  rng = np.random.default_rng(seed)
  out = {}
  for split, entries in lexicon.items():
    if split == "train":
      units = [(w, [p]) for w in sorted(entries) for p in entries[w]]
    else:
      units = [(w, entries[w]) for w in sorted(entries)]
    order = rng.permutation(len(units))
    joined = {}
    for g in range(len(units) // k):
      group = [units[i] for i in order[g * k:(g + 1) * k]]
      word = WORD_SEPARATOR.join(w for w, _ in group)
      prons = [()]
      for _, variants in group:
        prons = [a + ((WORD_SEPARATOR,) if a else ()) + tuple(v)
                 for a in prons for v in variants][:MAX_JOINED_REFERENCES]
      joined[word] = prons
    out[split] = joined
  return out

TAGS = {"g2p": "<g2p>", "p2g": "<p2g>"}


def g2p(source_len: int = 24, target_len: int = 24, stress: bool = False,
        max_train_words: Optional[int] = None, max_eval_words: Optional[int] = None,
        path: Optional[str] = None, directions: Sequence[str] = ("g2p",),
        tags: bool = False, prompt_len: int = 0, join_words: int = 1) -> Task:
  """Letters -> phonemes (and/or phonemes -> letters) on CMUdict.

  Split cmudict-hash-v1. Every training pronunciation is an example. Words
  whose letters or phonemes exceed the lengths are dropped from training and
  counted; in evaluation they stay (truncated source) and are scored against
  the full references, so the reported PER/WER cover every word of the split.

  directions: "g2p" and/or "p2g". p2g sources are pronunciations (one item per
    distinct pronunciation of the split; references = every split word with
    it). Eval sets: "dev"/"test" for the first direction, "dev_p2g" etc. for
    the others.
  tags: add the task tags `<g2p>`/`<p2g>` to the vocab and put the
    direction's tag in the prompt slot(s) after BOS (multi-task training).
  prompt_len: number of prompt slots after BOS (default 1 with tags, else 0);
    slots hold the direction's tag (or UNK without tags); soft prompts
    overwrite their embeddings, discrete prompts their ids.
  join_words: k > 1 makes every item k words joined by `WORD_SEPARATOR`
    (`join_words` above; ~25+ output symbols for k = 3-4); WER is then the
    item error rate (all k words right).
  """
  directions = tuple(directions)
  if not directions or any(d not in DIRECTIONS for d in directions):
    raise ValueError(f"data.directions must be a non-empty subset of "
                     f"{DIRECTIONS}, got {directions}.")
  prompt_len = max(int(prompt_len), 1 if tags else 0)
  lexicon, skipped = cmudict.load(stress=stress, path=path)
  lexicon = globals()["join_words"](lexicon, int(join_words))
  report = collections.Counter({f"cmudict_{k}": v for k, v in skipped.items()})
  letters = {c for w in lexicon["train"] for c in w}
  phones = {p for prons in lexicon["train"].values() for pr in prons for p in pr}
  vocab = Vocab.build(sorted(letters) + sorted(phones) +
                      (sorted(TAGS.values()) if tags else []))
  pairs, eval_sets, eval_targets = [], {}, {}
  slots = lambda d: [vocab.index[TAGS[d]] if tags else UNK] * prompt_len
  for d in directions:
    for word in sorted(lexicon["train"])[:max_train_words]:
      for pron in lexicon["train"][word]:
        src, tgt = (list(word), list(pron)) if d == "g2p" else (
            list(pron), list(word))
        if len(src) + 2 + prompt_len > source_len or len(tgt) + 1 > target_len:
          report[f"train_too_long_{d}"] += 1
          continue
        pairs.append((src, tgt, d))
    for split in ("dev", "test"):
      name = split if d == directions[0] else f"{split}_{d}"
      words = sorted(lexicon[split])[:max_eval_words]
      if d == "g2p":
        items = [(list(w), lexicon[split][w]) for w in words]
      else:
        by_pron = collections.defaultdict(list)
        for w in words:
          for pron in lexicon[split][w]:
            by_pron[pron].append(tuple(w))
        items = [(list(p), sorted(ws)) for p, ws in sorted(by_pron.items())]
      too_long = sum(len(s) + 2 + prompt_len > source_len for s, _ in items)
      if too_long:
        report[f"{name}_source_truncated"] = too_long
      eval_sets[name] = EvalSet(
          keys=[" ".join(s) if d == "p2g" else "".join(s) for s, _ in items],
          source=np.stack([encode_source(vocab, s, source_len, slots(d))
                           for s, _ in items]),
          references=[list(refs) for _, refs in items], direction=d)
      eval_targets[name] = _arrays(vocab, [(s, list(refs[0])) for s, refs in items],
                                   source_len, target_len, slots(d))
  if not pairs:
    raise ValueError(
        f"No training pair fits config.data.source_len={source_len} and "
        f"data.target_len={target_len} (BOS, {prompt_len} prompt slot(s) and "
        "SEP take 2 + slots of the source, EOS one of the target); raise "
        "them or data.max_train_words.")
  unknown = sum(c not in letters for s in ("dev", "test")
                for w in lexicon[s] for c in w)
  if unknown:
    report["eval_unknown_letters"] = unknown
  parts = [_arrays(vocab, [(s, t) for s, t, dd in pairs if dd == d],
                   source_len, target_len, slots(d)) for d in directions]
  train = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  name = "g2p" if directions == ("g2p",) else "+".join(directions)
  outputs = {"g2p": phones, "p2g": letters}
  target_ids = {d: tuple(sorted(vocab.index[s] for s in outputs[d])) + (EOS,)
                for d in directions}
  return Task(name, vocab, source_len, target_len, train, eval_sets,
              eval_targets, dict(report), tuple(slots(directions[0])),
              target_ids)


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

  pairs = windows(parts["train"], stride)
  if not pairs:
    raise ValueError(
        f"The training text ({len(parts['train'])} characters) is shorter "
        f"than config.data.context + data.continuation = "
        f"{context + continuation}; add text (data.paths) or shorten them.")
  train = _arrays(vocab, pairs, source_len, target_len)
  eval_sets, eval_targets = {}, {}
  for split in ("dev", "test"):
    pairs = windows(parts[split], context + continuation)[:max_eval_items]
    eval_sets[split] = EvalSet(
        keys=["".join(s) for s, _ in pairs],
        source=np.stack([encode_source(vocab, s, source_len) for s, _ in pairs]),
        references=[[tuple(t)] for _, t in pairs], direction="charlm")
    eval_targets[split] = _arrays(vocab, pairs, source_len, target_len)
  target_ids = {"charlm": tuple(range(len(SPECIALS), vocab.size)) + (EOS,)}
  return Task("charlm", vocab, source_len, target_len, train, eval_sets,
              eval_targets, dict(report), target_ids=target_ids)


def build(config, load_tokenizer=None) -> Task:
  """The task named by `config.task` (ConfigDict with a `data` section).
  A text task needs `load_tokenizer(path) -> hf_tokenizer.Tokenizer`
  (`ir_jax.pretrained.tokenizer`; `ir_jax.state.build_task` passes it)."""
  d = config.data
  if config.task == "g2p":
    directions = d.get("directions") or "g2p"
    if isinstance(directions, str):
      directions = tuple(x.strip() for x in directions.split(","))
    return g2p(d.source_len, d.target_len, d.stress,
               d.get("max_train_words") or None, d.get("max_eval_words") or None,
               directions=directions, tags=bool(d.get("tags", False)),
               prompt_len=int(d.get("prompt_len", 0)),
               join_words=int(d.get("join_words", 1)))
  if config.task == "charlm":
    return charlm(tuple(d.get("paths") or ()), d.context, d.continuation,
                  d.stride, d.get("max_eval_items") or None)
  if config.task == "text":
    from ir_jax.data import text
    if load_tokenizer is None:
      raise ValueError("task='text' reads a checkpoint's tokenizer: build it "
                       "with ir_jax.state.build_task(config) (or pass "
                       "load_tokenizer=ir_jax.pretrained.tokenizer).")
    return text.task(d.train_path, d.eval_path,
                     d.get("tokenizer") or config.model.get("hf_path", ""),
                     d.source_len, d.target_len, d.get("test_path", ""),
                     d.get("max_train_words") or None,
                     d.get("max_eval_items") or None,
                     chat_template=bool(d.get("chat_template", False)),
                     load_tokenizer=load_tokenizer)
  raise ValueError(f"config.task must be 'g2p', 'charlm' or 'text', got "
                   f"{config.task!r}.")


def train_dataset(train: Dict[str, np.ndarray], batch_size: int, seed: int,
                  total_steps: int, process_index: int = 0,
                  process_count: int = 1,
                  buckets: Optional["LengthBuckets"] = None
                  ) -> grain.MapDataset:
  """Shuffled, repeated, per-process batches of the training arrays.

  Deterministic in `seed`; the iterator's `get_state()` is a small JSON dict
  saved beside each checkpoint, so a resumed run sees the same batches.
  `batch_size` is global: each process reads `batch_size / process_count`.
  `buckets` (a `LengthBuckets` of the same arrays and batch size) batches
  items of similar length together, each batch cut to its class's widths:
  less padding is computed, at one compile per class.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must divide by the number of "
                     f"processes ({process_count}).")
  if buckets is not None:
    per = batch_size // process_count
    rows = slice(process_index * per, (process_index + 1) * per)
    return grain.MapDataset.range(total_steps).map(
        lambda k: buckets.batch(k, rows))
  num = len(train["target"])
  epochs = math.ceil(total_steps * batch_size / num) + 1
  ds = grain.MapDataset.range(num).repeat(epochs).seed(seed).shuffle()
  ds = ds[process_index::process_count]
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  return ds.map(lambda idx: {k: v[idx] for k, v in train.items()})


def source_lengths(source: np.ndarray, pad_id: int = PAD) -> np.ndarray:
  """int32[N]: the non-padding width of left-padded sources int[N, P]."""
  leading = np.argmax(source != pad_id, axis=1)
  leading[~(source != pad_id).any(1)] = source.shape[1]
  return (source.shape[1] - leading).astype(np.int32)


def length_edges(lengths: np.ndarray, k: int, width: int) -> Tuple[int, ...]:
  """The k widths w_1 < ... < w_k = `width` minimising the mean padded
  width sum_i min{w_j >= l_i} / N of `lengths` int[N] (each <= width).

  Exact, by dynamic programming over the distinct lengths (O(k L^2) for L
  distinct lengths): the best last-but-one edge is found for every prefix.
  Fewer than k distinct lengths give fewer edges.
  """
  values, counts = np.unique(np.minimum(lengths, width), return_counts=True)
  values = [int(v) for v in values]
  if values[-1] != width:
    values.append(width)
    counts = np.append(counts, 0)
  n = len(values)
  k = max(1, min(k, n))
  below = np.concatenate([[0], np.cumsum(counts)])   # items with index < j
  # cost[j][m]: least padded sum of items 0..j with m edges, the last at j.
  inf = float("inf")
  cost = np.full((n, k + 1), inf)
  back = np.zeros((n, k + 1), int)
  for j in range(n):
    cost[j, 1] = values[j] * below[j + 1]
    for m in range(2, k + 1):
      for i in range(j):
        c = cost[i, m - 1] + values[j] * (below[j + 1] - below[i + 1])
        if c < cost[j, m]:
          cost[j, m], back[j, m] = c, i
  m = int(np.argmin(cost[n - 1, 1:])) + 1
  edges, j = [], n - 1
  while m >= 1:
    edges.append(values[j])
    j, m = back[j, m], m - 1
  return tuple(sorted(set(edges)))


class LengthBuckets:
  """Length-bucketed batches: the batches of a run, by step.

  Every item falls in the class (s, t) of the smallest source and target
  widths of `length_edges` (k each, chosen for the least padding) that
  hold it; a class with fewer items than a batch joins the widest class
  (and so do the next widest, while the widest holds less than a batch).
  Epoch e shuffles the items (seeded by (seed, e)), cuts each class into
  full batches in that order (a class's remainder waits for the next
  epoch's shuffle) and shuffles the batches; batch `k` of the run is batch
  k mod (batches per epoch) of epoch k // (batches per epoch). A batch is
  cut to its class's widths: sources keep their last s slots (they are
  left-padded), targets their first t. Attention and the LSTM carry skip
  padding, so the model computes the same function on fewer slots.
  """

  def __init__(self, train: Dict[str, np.ndarray], batch_size: int,
               seed: int, k: int, pad_id: int = PAD):
    self.train, self.batch_size, self.seed = train, batch_size, seed
    source_len, target_len = (train["source"].shape[1],
                              train["target"].shape[1])
    src = source_lengths(train["source"], pad_id)
    tgt = (train["target_lengths"] if "target_lengths" in train else
           (train["target"] != pad_id).sum(1))
    self.source_edges = length_edges(src, k, source_len)
    self.target_edges = length_edges(tgt, k, target_len)
    s = np.asarray(self.source_edges)[np.searchsorted(self.source_edges, src)]
    t = np.asarray(self.target_edges)[np.searchsorted(self.target_edges, tgt)]
    keys = list(zip(s.tolist(), t.tolist()))
    counts = collections.Counter(keys)
    # Classes smaller than a batch join the widest; while the widest is
    # smaller than a batch itself, the next widest classes join it too, so
    # that every item is in some batch of every epoch but a remainder.
    widest = (source_len, target_len)
    joins = {c for c, n in counts.items() if n < batch_size} | {widest}
    rest = sorted(set(counts) - joins, key=sum)
    while sum(counts[c] for c in joins) < batch_size and rest:
      joins.add(rest.pop())
    keys = [widest if key in joins else key for key in keys]
    self.shapes = sorted(set(keys))
    index = {shape: i for i, shape in enumerate(self.shapes)}
    self.item_class = np.asarray([index[key] for key in keys], np.int32)
    sizes = np.bincount(self.item_class, minlength=len(self.shapes))
    if (sizes < batch_size).all():
      raise ValueError(f"data.length_buckets: no length class holds a batch "
                       f"of {batch_size} among {len(src)} training items; "
                       "lower batch_size or turn the buckets off.")
    self.batches_per_epoch = int((sizes // batch_size).sum())
    # The padded slots per item, bucketed / unbucketed (the work saved).
    widths = np.asarray([sum(self.shapes[c]) for c in self.item_class])
    self.padded_fraction = float(widths.mean() / (source_len + target_len))
    self._epoch = (None, None)

  def epoch(self, e: int):
    """[(class, item indices int[B])] of epoch `e`, in training order."""
    cached = self._epoch   # One read: grain may call from several threads.
    if cached[0] == e:
      return cached[1]
    rng = np.random.default_rng([self.seed, e])
    order = rng.permutation(len(self.item_class))
    batches = []
    for c in range(len(self.shapes)):
      members = order[self.item_class[order] == c]
      full = len(members) // self.batch_size * self.batch_size
      batches += [(c, b) for b in members[:full].reshape(-1, self.batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    self._epoch = (e, batches)
    return batches

  def batch(self, k: int, rows: slice = slice(None)) -> Dict[str, np.ndarray]:
    """Batch `k` of the run (the rows `rows` of it: a process's share)."""
    c, idx = self.epoch(k // self.batches_per_epoch)[
        k % self.batches_per_epoch]
    s, t = self.shapes[c]
    idx = idx[rows]
    out = {key: v[idx] for key, v in self.train.items()}
    out["source"] = out["source"][:, -s:]
    out["target"] = out["target"][:, :t]
    return out
