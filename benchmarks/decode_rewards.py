"""Sampling with in-loop edit-distance rewards vs without, vs the host path.

  python benchmarks/decode_rewards.py --workdir runs/g2p

With the main job's model and dev words as prompts, for B in {64, 512}:
  * plain: `decode.generate` sampling (temperature 1), no rewards;
  * in_loop: `decode.sample_with_rewards` (per-token rewards from the DP row
    carried in the scan);
  * host_seq: sample on device, copy tokens to the host, score each sample
    with RapidFuzz `Levenshtein.distance`, send the rewards back (what RL
    libraries do today; sequence-level rewards only);
  * host_token: the same information as in_loop (per-token potential-based
    rewards) computed on the host with a NumPy DP row per token.
Writes benchmarks/results/decode_rewards.{json,md}.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import decode  # noqa: E402
from ir_jax import workdir as workdir_lib  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/g2p")
  args = p.parse_args()
  from rapidfuzz.distance import Levenshtein
  config, task, model, params = workdir_lib.load_run(args.workdir)
  variables = {"params": params}
  dev = task.eval_targets["dev"]
  t = task.target_len
  rows = []
  for batch in (64, 512):
    source = jnp.asarray(dev["source"][:batch])
    target = jnp.asarray(dev["target"][:batch])
    lengths = jnp.asarray(dev["target_lengths"][:batch])
    key = jax.random.PRNGKey(0)

    def plain():
      return decode.generate(model, variables, source, key, max_len=t,
                             temperature=1.0)

    def in_loop():
      return decode.sample_with_rewards(model, variables, source, target,
                                        lengths, key, max_len=t)

    tgt_lists = [list(r[:n]) for r, n in zip(np.asarray(target),
                                             np.asarray(lengths))]

    def host_seq():
      tokens, n = jax.device_get(plain())
      scores = [-Levenshtein.distance(list(s[:k]), g)
                for s, k, g in zip(tokens, n, tgt_lists)]
      return jax.device_put(np.asarray(scores, np.float32))

    def host_token():
      tokens, n = jax.device_get(plain())
      out = np.zeros(tokens.shape, np.float32)
      for b, (s, k, g) in enumerate(zip(tokens, n, tgt_lists)):
        g = np.asarray(g)
        row = np.arange(len(g) + 1)
        phi = 0.0
        for i in range(k):
          t_ = np.minimum(row[:-1] + (g != s[i]), row[1:] + 1)
          t_ = np.concatenate([[row[0] + 1], t_])
          row = np.minimum.accumulate(t_ - np.arange(len(g) + 1)) + np.arange(
              len(g) + 1)
          nxt = -row[-1] if i == k - 1 else -row.min()
          out[b, i] = nxt - phi
          phi = -row.min()
      return jax.device_put(out)

    row = {"B": batch}
    row["plain_ms"] = common.timeit(plain) * 1e3
    row["in_loop_ms"] = common.timeit(in_loop) * 1e3
    row["host_seq_ms"] = common.timeit(host_seq) * 1e3
    row["host_token_ms"] = common.timeit(host_token, repeats=3) * 1e3
    row["in_loop_overhead"] = row["in_loop_ms"] / row["plain_ms"] - 1
    row["host_seq_over_in_loop"] = row["host_seq_ms"] / row["in_loop_ms"]
    row["host_token_over_in_loop"] = row["host_token_ms"] / row["in_loop_ms"]
    row["in_loop_samples_per_s"] = batch / row["in_loop_ms"] * 1e3
    rows.append(row)
    print(row, flush=True)
  md = ["Machine: " + ", ".join(f"{k} {v}" for k, v in
                                common.machine().items()), "",
        common.markdown_table(rows, list(rows[0]))]
  common.write("decode_rewards", {"machine": common.machine(), "rows": rows},
               "\n".join(md))


if __name__ == "__main__":
  main()
