"""Generation-based evaluation: PER / WER against multiple references.

WER = share of words whose output matches none of the references.
PER = sum_w min_r ED(out_w, r) / sum_w len(r*_w), with r* the closest
reference (ties: shorter, then lexicographic). Some published G2P code
divides by the first reference or averages per-word rates; both change the
number, so the definition is fixed here.
"""

import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from ir_jax import decode, rewards

Seq = Tuple[str, ...]


def word_errors(outputs: Sequence[Seq], references: Sequence[Sequence[Seq]]
                ) -> Tuple[np.ndarray, np.ndarray]:
  """(errors int[W], lengths int[W]): per word, ED(out_w, r*_w) and
  len(r*_w), with r* the closest reference (ties: shorter, then
  lexicographic). PER = errors.sum() / lengths.sum(); WER = mean(errors > 0).
  """
  if len(outputs) != len(references):
    raise ValueError(f"{len(outputs)} outputs but {len(references)} "
                     "reference lists.")
  if not outputs:
    return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
  symbols = {s: i + 1 for i, s in enumerate(sorted(
      {s for refs in references for r in refs for s in r} |
      {s for o in outputs for s in o}))}
  pairs = [(w, o, r) for w, (o, refs) in enumerate(zip(outputs, references))
           for r in refs]
  width = max(1, max(max(len(o), len(r)) for _, o, r in pairs))
  def pad(seqs):
    arr = np.zeros((len(seqs), width), np.int32)
    for k, s in enumerate(seqs):
      arr[k, :len(s)] = [symbols[x] for x in s]
    return arr
  hyp = pad([o for _, o, _ in pairs])
  ref = pad([r for _, _, r in pairs])
  dist = np.asarray(rewards.levenshtein(
      hyp, ref, pred_lengths=np.array([len(o) for _, o, _ in pairs]),
      target_lengths=np.array([len(r) for _, _, r in pairs])))
  best: Dict[int, Tuple[int, int, Seq]] = {}
  for (w, _, r), d in zip(pairs, dist):
    key = (int(d), len(r), r)
    if w not in best or key < best[w]:
      best[w] = key
  errors = np.array([best[w][0] for w in range(len(outputs))], np.int64)
  lengths = np.array([best[w][1] for w in range(len(outputs))], np.int64)
  return errors, lengths


def edit_operations(output: Sequence, reference: Sequence
                    ) -> Tuple[int, int, int]:
  """(substitutions, insertions, deletions) of one minimum edit path from
  `reference` to `output`; they sum to ED(output, reference). Ties are
  broken toward substitutions, then insertions (extra output symbols),
  then deletions (reference symbols missing from the output), so the split
  is deterministic. A reward that lowers the error rate by shortening
  answers shows as deletions up, substitutions down. O(len(output) *
  len(reference)) on the host: for reports, not for training.
  """
  n, m = len(output), len(reference)
  d = [[i + j if i == 0 or j == 0 else 0 for j in range(m + 1)]
       for i in range(n + 1)]
  for i in range(1, n + 1):
    for j in range(1, m + 1):
      d[i][j] = min(d[i - 1][j - 1] + (output[i - 1] != reference[j - 1]),
                    d[i - 1][j] + 1, d[i][j - 1] + 1)
  i, j, sub, ins, dele = n, m, 0, 0, 0
  while i or j:
    if i and j and d[i][j] == d[i - 1][j - 1] + (output[i - 1] !=
                                                 reference[j - 1]):
      sub += output[i - 1] != reference[j - 1]
      i, j = i - 1, j - 1
    elif i and d[i][j] == d[i - 1][j] + 1:
      ins, i = ins + 1, i - 1
    else:
      dele, j = dele + 1, j - 1
  return sub, ins, dele


def error_rates(outputs: Sequence[Seq], references: Sequence[Sequence[Seq]]
                ) -> Dict[str, float]:
  """PER and WER of `outputs` (one symbol tuple per word) as fractions."""
  errors, lengths = word_errors(outputs, references)
  if not len(errors):
    return {"per": 0.0, "wer": 0.0, "words": 0}
  return {"per": float(errors.sum() / max(lengths.sum(), 1)),
          "wer": float((errors > 0).mean()), "words": len(outputs)}


# ------------------------------------------------------------ significance


def paired_bootstrap(errors_a, errors_b, lengths, *, lengths_b=None,
                     resamples: int = 10_000, seed: int = 0,
                     chunk: int = 256) -> Dict[str, Any]:
  """Paired bootstrap of the PER difference of systems a and b over items.

  Each resample draws W items with replacement and recomputes
  PER = sum errors / sum lengths for both systems on the same items
  (Koehn 2004). `lengths` are the reference lengths of a's errors
  (`word_errors`); `lengths_b` those of b's where its closest references
  differ (default: the same), so each PER is that system's own.

  Returns delta = PER_a - PER_b on all items, ci95 = the 2.5 and 97.5
  percentiles of the resampled deltas, and p_value: two-sided,
  2 min(P(delta* <= 0), P(delta* >= 0)) with add-one smoothing, capped at 1
  (1 for identical systems; about 2 / (resamples + 1) when a wins on every
  resample).
  """
  a = np.asarray(errors_a, np.float64)
  b = np.asarray(errors_b, np.float64)
  n = np.asarray(lengths, np.float64)
  nb = n if lengths_b is None else np.asarray(lengths_b, np.float64)
  if not (a.shape == b.shape == n.shape == nb.shape) or a.ndim != 1 or (
      not len(a)):
    raise ValueError(f"errors_a, errors_b and lengths must be equal-length "
                     f"non-empty vectors, got {a.shape}, {b.shape}, {n.shape}"
                     f", {nb.shape}.")
  rng = np.random.default_rng(seed)
  deltas = []
  for start in range(0, resamples, chunk):
    idx = rng.integers(0, len(a), (min(chunk, resamples - start), len(a)))
    deltas.append(a[idx].sum(1) / np.maximum(n[idx].sum(1), 1.0) -
                  b[idx].sum(1) / np.maximum(nb[idx].sum(1), 1.0))
  deltas = np.concatenate(deltas)
  low = (np.sum(deltas <= 0) + 1) / (resamples + 1)
  high = (np.sum(deltas >= 0) + 1) / (resamples + 1)
  return {"delta": float(a.sum() / max(n.sum(), 1.0) -
                         b.sum() / max(nb.sum(), 1.0)),
          "ci95": [float(np.percentile(deltas, 2.5)),
                   float(np.percentile(deltas, 97.5))],
          "p_value": float(min(1.0, 2 * min(low, high))),
          "resamples": int(resamples)}


def mcnemar(correct_a, correct_b) -> Dict[str, Any]:
  """Exact McNemar test of two systems' per-item correctness (WER).

  With b01 = items only b gets right and b10 = items only a gets right,
  p = 2 P(X <= min(b01, b10)), X ~ Binomial(b01 + b10, 1/2), capped at 1
  (1 when the systems never disagree).
  """
  from scipy import stats
  a = np.asarray(correct_a, bool)
  b = np.asarray(correct_b, bool)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"correct_a and correct_b must be equal-length vectors, "
                     f"got {a.shape} and {b.shape}.")
  only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
  n = only_a + only_b
  p = 1.0 if n == 0 else min(1.0, 2 * float(stats.binom.cdf(
      min(only_a, only_b), n, 0.5)))
  return {"only_a": only_a, "only_b": only_b, "p_value": p}


def allowed_tokens(model, task, direction: str):
  """bool[V] of the ids greedy decoding may emit for `direction` (the
  task's target symbols and EOS), or None when the task does not say."""
  ids = task.target_ids.get(direction)
  if not ids:
    return None
  allowed = np.zeros(model.vocab_size, bool)
  allowed[list(ids)] = True
  return jax.numpy.asarray(allowed)


def generate_symbols(model, params, task, source: np.ndarray,
                     batch_size: int = 1024, direction: str = "",
                     mbr: int = 0, seed: int = 0, beam: int = 1,
                     length_penalty: float = 0.0,
                     mbr_nbest: bool = False) -> List[Seq]:
  """Greedy outputs for int32[W, P] prompts, decoded to symbol tuples; with
  a `direction` only that direction's target symbols can be emitted. `mbr`
  > 0: the MBR choice among the greedy output and `mbr` samples at
  temperature 1 (`decode.mbr_decode`, seeded by `seed`); `beam` > 1: the
  best of a beam search (`decode.beam_search`), or with `mbr_nbest` the
  MBR choice among its N-best (`decode.nbest_mbr_decode`)."""
  if mbr_nbest and beam < 2:
    raise ValueError(f"mbr_nbest needs an N-best list: beam >= 2, got "
                     f"beam={beam}.")
  allowed = allowed_tokens(model, task, direction)
  out: List[Seq] = []
  for start in range(0, len(source), batch_size):
    chunk = source[start:start + batch_size]
    size = len(chunk)
    if size < batch_size and len(source) > batch_size:
      # Pad the last chunk so one compiled program serves every batch.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - size,
                                               0)])
    if mbr_nbest:
      tokens, _ = decode.nbest_mbr_decode(
          model, params, jax.numpy.asarray(chunk), max_len=task.target_len,
          beam=beam, length_penalty=length_penalty, allowed=allowed)
    elif beam > 1:
      tokens = decode.beam_search(
          model, params, jax.numpy.asarray(chunk), max_len=task.target_len,
          beam=beam, length_penalty=length_penalty,
          allowed=allowed)["tokens"][:, 0]
    elif mbr:
      tokens, _ = decode.mbr_decode(
          model, params, jax.numpy.asarray(chunk),
          jax.random.fold_in(jax.random.key(seed), start),
          max_len=task.target_len, num_samples=mbr, allowed=allowed)
    else:
      tokens, _ = decode.generate(model, params, jax.numpy.asarray(chunk),
                                  max_len=task.target_len, allowed=allowed)
    if jax.process_count() > 1:  # Params are sharded across hosts.
      from jax.experimental import multihost_utils
      tokens = multihost_utils.process_allgather(tokens, tiled=True)
    out += [tuple(task.vocab.decode(t)) for t in np.asarray(tokens)[:size]]
  return out


def evaluate_split(model, params, task, split: str,
                   batch_size: int = 1024) -> Dict[str, float]:
  """PER/WER of greedy generation on `task.eval_sets[split]`."""
  data = task.eval_sets[split]
  outputs = generate_symbols(model, params, task, data.source, batch_size,
                             data.direction)
  return error_rates(outputs, data.references)


def summary(record: Dict[str, Any]) -> str:
  """One line of an eval record: `dev: PER 9.81%  WER 38.64%  (...)`
  (text tasks add exact match, CER and TER)."""
  extra = "".join(f"  {name} {100 * record[k]:.2f}%" for k, name in (
      ("exact_match", "exact"), ("cer", "CER"), ("ter", "TER"),
      ("task_score", "task score"))
      if k in record)
  return (f"{record['split']}: PER {100 * record['per']:.2f}%  "
          f"WER {100 * record['wer']:.2f}%{extra}  ({record['words']} items, "
          f"step {record['step']})")


_WHITESPACE = "".join(chr(b) for b in rewards.chars.WHITESPACE)


def answer_bytes(text: str) -> bytes:
  """An answer as it is compared with its target: UTF-8 bytes with ASCII
  whitespace (space, tab, CR, LF) stripped at both ends, the rule of the
  byte rewards (`ir_jax.rewards.chars`), so a reward and its eval agree.
  Other whitespace (NBSP, U+2028, ...) is part of the answer.

  >>> answer_bytes(" 42\\t")
  b'42'
  >>> len(answer_bytes("caf\\u00e9"))   # UTF-8 bytes.
  5
  """
  return text.strip(_WHITESPACE).encode("utf-8")


def text_scores(vocab, outputs: Sequence[Seq],
                references: Sequence[Sequence[Seq]]) -> Dict[str, float]:
  """Scores of decoded text (task="text"; `vocab.text` decodes token
  strings): per / wer over whitespace-separated units (the G2P
  definitions: PER against the closest reference, WER = 1 - exact match
  of the units); exact_match (any reference) and cer over the UTF-8 bytes,
  both sides stripped of surrounding whitespace: the rule of the
  byte-level rewards (`ir_jax.rewards.chars`), so a reward and its eval
  agree (CER here against the closest reference)."""
  out_text = [vocab.text(o) for o in outputs]
  ref_text = [[vocab.text(r) for r in refs] for refs in references]
  strip = answer_bytes
  exact = np.mean([strip(o) in {strip(r) for r in refs}
                   for o, refs in zip(out_text, ref_text)])
  units = error_rates([tuple(o.split()) for o in out_text],
                      [[tuple(r.split()) for r in refs] for refs in ref_text])
  chars = error_rates([tuple(strip(o)) for o in out_text],
                      [[tuple(strip(r)) for r in refs] for refs in ref_text])
  return {"exact_match": float(exact), "per": units["per"],
          "wer": units["wer"], "cer": chars["per"]}


def split_scores(task, outputs: Sequence[Seq],
                 references: Sequence[Sequence[Seq]],
                 items: Optional[Sequence[Dict]] = None) -> Dict[str, Any]:
  """{per, wer, words} of a split's outputs; for task="text" per / wer are
  the text's (`text_scores`: units split at whitespace,
  1 - exact match), plus exact_match, cer and ter (over tokens), and
  `task_score`, the mean of a reasoning-gym task's own `score_answer` over
  the kept `items` (host Python, eval only; absent for other items or
  without reasoning-gym)."""
  rates = error_rates(outputs, references)
  if task.name != "text":
    return {"per": rates["per"], "wer": rates["wer"], "words": rates["words"]}
  scores = {**text_scores(task.vocab, outputs, references),
            "ter": rates["per"], "words": rates["words"]}
  if items:
    from ir_jax.data import verifiable
    checked = [verifiable.score_answer(item, task.vocab.text(o))
               for item, o in zip(items, outputs)]
    checked = [c for c in checked if c is not None]
    if checked:
      scores["task_score"] = float(np.mean(checked))
  return scores


def output_line(key: str, symbols: Seq, task_name: str = "g2p",
                vocab=None) -> str:
  """One output as `ir-jax generate` prints it: `source<TAB>symbols`, the
  symbols space-separated (G2P, either direction), joined (charlm) or
  decoded by the tokenizer (text, with `vocab`); tabs and newlines
  escaped, so that one line is one item."""
  clean = lambda x: x.replace("\t", "\\t").replace("\n", "\\n").replace(
      "\r", "\\r")
  if task_name == "text":
    return f"{clean(key)}\t{clean(vocab.text(symbols))}"
  sep = "" if task_name == "charlm" else " "
  return f"{clean(key)}\t{clean(sep.join(symbols))}"


def read_outputs(path: str) -> Dict[str, Seq]:
  """{source: output symbols} of an outputs file (`output_line` lines)."""
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      key, _, text = line.rstrip("\n").partition("\t")
      out[key] = tuple(text.split())
  return out


def item_lengths(references: Sequence[Sequence[Seq]]) -> np.ndarray:
  """int[N]: each item's shortest reference length, a property of the item
  alone (the same for every system: bucket items by it, not by the
  length of a system's closest reference)."""
  return np.array([min(len(r) for r in refs) for refs in references],
                  np.int64)


def outputs_errors(data, path: str):
  """(errors int[N], reference lengths int[N]) of an outputs file against
  an eval split `data`, in the split's item order (`word_errors`); raises
  if the file misses an item of the split."""
  outputs = read_outputs(path)
  missing = [k for k in data.keys if k not in outputs]
  if missing:
    raise ValueError(f"{path} has no output for {len(missing)} of the "
                     f"{len(data.keys)} items of the split (e.g. "
                     f"{missing[0]!r}): an outputs file must cover it.")
  return word_errors([outputs[k] for k in data.keys], data.references)


def evaluate_and_log(model, params, task, splits: Sequence[str],
                     batch_size: int, step, writer, beam: int = 1,
                     length_penalty: float = 0.0, outputs_dir: str = "",
                     **extra) -> Dict[str, Dict[str, Any]]:
  """Scores `splits` and writes one record each through `writer` (a
  `workdir.MetricWriter`): {step, split, per, wer, words, eval_seconds,
  **extra} (and `beam` when > 1), plus the first 8 outputs as TensorBoard
  text; a summary line per split on stderr (process 0). With `outputs_dir`
  (process 0), every output goes to `<outputs_dir>/<split>.tsv`, one
  `output_line` per item in the split's order. Returns {split: record}."""
  results = {}
  for split in splits:
    t0 = time.time()
    data = task.eval_sets[split]
    outputs = generate_symbols(model, {"params": params}, task, data.source,
                               batch_size, data.direction, beam=beam,
                               length_penalty=length_penalty)
    rates = split_scores(task, outputs, data.references,
                         getattr(data, "items", None))
    record = {"step": step, "split": split, **rates,
              "eval_seconds": time.time() - t0, **extra}
    if beam > 1:
      record["beam"] = beam
    writer.write(record)
    show = lambda symbols: output_line("", symbols, task.name,
                                       task.vocab)[1:]
    sample = "\n".join(
        f"{k}\t{show(o)}\t(ref {show(r[0])})" for k, o, r in zip(
            data.keys[:8], outputs[:8], data.references[:8]))
    writer.text(f"{split}/samples", sample.replace("\n", "  \n"), step)
    if jax.process_index() == 0:
      print(summary(record), file=sys.stderr)
      if outputs_dir:
        os.makedirs(outputs_dir, exist_ok=True)
        with open(os.path.join(outputs_dir, f"{split}.tsv"), "w",
                  encoding="utf-8") as f:
          f.writelines(output_line(k, o, task.name, task.vocab) + "\n"
                       for k, o in zip(data.keys, outputs))
    results[split] = record
  return results
