"""What bounding the steps in flight costs the main job.

  python -m benchmarks.in_flight [--steps 120] [--rounds 3]

The train loop dispatches step n only after step n - 2 has finished
(`ir_jax.train.MAX_IN_FLIGHT` = 2), so its progress bar counts finished
steps and a SIGTERM's checkpoint waits for at most two. This runs the main
job (experiments/g2p.py, its default config) for `--steps` steps with the
bound and without it (MAX_IN_FLIGHT = 10**9: every step dispatched at
once, up to the log step), alternating, `--rounds` times each, in fresh
workdirs, and compares steps/s over the logged records after the first
(which holds compilation). Writes benchmarks/results/in_flight.{json,md}.
"""

import argparse
import json
import os
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(steps: int, bound: int, workdir: str) -> float:
  """Steps/s of the logged records after the first, with `bound`."""
  from ir_jax import config as config_lib
  from ir_jax import train
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py"))
  c.total_steps = steps
  c.log_every = steps // 6
  c.eval_every = c.checkpoint_every = steps + 1
  c.data.max_eval_words = 64      # The final eval is not timed.
  old, train.MAX_IN_FLIGHT = train.MAX_IN_FLIGHT, bound
  try:
    train.train_and_evaluate(c, workdir)
  finally:
    train.MAX_IN_FLIGHT = old
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  rates = [r["steps_per_sec"] for r in records if "split" not in r][1:]
  return float(np.mean(rates))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=120)
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args(argv)
  from benchmarks import common
  from ir_jax import train
  arms = {f"bounded ({train.MAX_IN_FLIGHT} in flight)": train.MAX_IN_FLIGHT,
          "unbounded": 10**9}
  rates = {name: [] for name in arms}
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.rounds):
      for name, bound in arms.items():
        wd = os.path.join(tmp, f"{i}_{bound}")
        rates[name].append(run(args.steps, bound, wd))
        print(f"round {i}: {name}: {rates[name][-1]:.3f} steps/s",
              flush=True)
  bounded, unbounded = (np.asarray(v) for v in rates.values())
  ratio = bounded / unbounded
  rows = [{"arm": name, "steps/s (mean over rounds)": float(np.mean(v)),
           "per round": ", ".join(f"{x:.3f}" for x in v)}
          for name, v in rates.items()]
  md = common.markdown_table(rows, list(rows[0])) + (
      f"\n\nbounded / unbounded steps/s per round: "
      f"{', '.join(f'{x:.3f}' for x in ratio)} (mean {ratio.mean():.3f}; "
      f"{args.steps} steps of the main job a run, {args.rounds} rounds)")
  common.write("in_flight", {"machine": common.machine(), "steps": args.steps,
                             "rates": rates, "ratio": ratio.tolist(),
                             "mean_ratio": float(ratio.mean())}, md)


if __name__ == "__main__":
  main()
