"""Generation-based evaluation: PER / WER against multiple references.

WER = share of words whose output matches none of the references.
PER = sum_w min_r ED(out_w, r) / sum_w len(r*_w), with r* the closest
reference (ties: shorter, then lexicographic). Some published G2P code
divides by the first reference or averages per-word rates; both change the
number, so the definition is fixed here.
"""

import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

import jax
import numpy as np

from ir_jax import decode, rewards

Seq = Tuple[str, ...]


def error_rates(outputs: Sequence[Seq], references: Sequence[Sequence[Seq]]
                ) -> Dict[str, float]:
  """PER and WER of `outputs` (one symbol tuple per word) as fractions."""
  if len(outputs) != len(references):
    raise ValueError(f"{len(outputs)} outputs but {len(references)} "
                     "reference lists.")
  if not outputs:
    return {"per": 0.0, "wer": 0.0, "words": 0}
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
  errors = sum(b[0] for b in best.values())
  length = sum(b[1] for b in best.values())
  wrong = sum(b[0] > 0 for b in best.values())
  return {"per": errors / max(length, 1), "wer": wrong / len(outputs),
          "words": len(outputs)}


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
                     batch_size: int = 1024, direction: str = "") -> List[Seq]:
  """Greedy outputs for int32[W, P] prompts, decoded to symbol tuples; with
  a `direction` only that direction's target symbols can be emitted."""
  allowed = allowed_tokens(model, task, direction)
  out: List[Seq] = []
  for start in range(0, len(source), batch_size):
    chunk = source[start:start + batch_size]
    size = len(chunk)
    if size < batch_size and len(source) > batch_size:
      # Pad the last chunk so one compiled program serves every batch.
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - size,
                                               0)])
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
  """One line of an eval record: `dev: PER 9.81%  WER 38.64%  (...)`."""
  return (f"{record['split']}: PER {100 * record['per']:.2f}%  "
          f"WER {100 * record['wer']:.2f}%  ({record['words']} items, step "
          f"{record['step']})")


def evaluate_and_log(model, params, task, splits: Sequence[str],
                     batch_size: int, step, writer, **extra
                     ) -> Dict[str, Dict[str, Any]]:
  """Scores `splits` and writes one record each through `writer` (a
  `workdir.MetricWriter`): {step, split, per, wer, words, eval_seconds,
  **extra}, plus the first 8 outputs as TensorBoard text; a summary line
  per split on stderr (process 0). Returns {split: record}."""
  results = {}
  for split in splits:
    t0 = time.time()
    data = task.eval_sets[split]
    outputs = generate_symbols(model, {"params": params}, task, data.source,
                               batch_size, data.direction)
    rates = error_rates(outputs, data.references)
    record = {"step": step, "split": split, "per": rates["per"],
              "wer": rates["wer"], "words": rates["words"],
              "eval_seconds": time.time() - t0, **extra}
    writer.write(record)
    sample = "\n".join(
        f"{k}\t{' '.join(o)}\t(ref {' '.join(r[0])})" for k, o, r in zip(
            data.keys[:8], outputs[:8], data.references[:8]))
    writer.text(f"{split}/samples", sample.replace("\n", "  \n"), step)
    if jax.process_index() == 0:
      print(summary(record), file=sys.stderr)
    results[split] = record
  return results
