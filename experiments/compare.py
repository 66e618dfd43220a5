"""Compare objectives from one CE checkpoint at an equal step budget.

  python experiments/compare.py --base runs/g2p --steps 300 \
      --out benchmarks/results/compare

Arms, each fine-tuning the same CE run for the same number of steps and
prompts per step: `ce` (CE only), `fused` (CE + fused soft edit distance),
`seq`, `instant`, `ocd` (experiments/g2p_rl.py). Writes compare.md (dev/test
PER and WER, wall time), compare.json and compare.png (reward curves).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ir_jax import config as config_lib  # noqa: E402
from ir_jax import train  # noqa: E402

ARMS = ("ce", "fused", "seq", "instant", "ocd")


def arm_config(arm, base, steps, batch, variant):
  extra = f",{variant}" if variant else ""
  if arm in ("ce", "fused"):
    c = config_lib.load(os.path.join(ROOT, "experiments/g2p.py") +
                        ":" + ("fused" if arm == "fused" else "") + extra)
    c.optim.learning_rate = 3e-4
    c.optim.warmup_steps = 20
    if arm == "fused":
      c.objective.alpha_warmup_steps = 20
  else:
    c = config_lib.load(os.path.join(ROOT, "experiments/g2p_rl.py") +
                        f":{arm}{extra}")
  c.init_from = base
  c.total_steps = steps
  c.batch_size = batch
  c.log_every = max(1, steps // 20)
  c.eval_every = 10 * steps  # Only the final dev/test evaluation.
  c.checkpoint_every = steps
  return c


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--base", required=True, help="workdir of the CE run")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--variant", default="", help="e.g. lstm")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/compare"))
  p.add_argument("--arms", default=",".join(ARMS))
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  base_metrics = [json.loads(l) for l in open(os.path.join(args.base,
                                                            "metrics.jsonl"))]
  rows = [{"arm": "base (CE run)", **{
      f"{r['split']}_{k}": 100 * r[k] for r in base_metrics if "split" in r
      for k in ("per", "wer")}, "wall_s": float("nan")}]
  curves = {}
  for arm in args.arms.split(","):
    c = arm_config(arm, args.base, args.steps, args.batch, args.variant)
    wd = os.path.join(args.out, arm)
    t0 = time.time()
    results = train.train_and_evaluate(c, wd)
    rows.append({"arm": arm, "dev_per": 100 * results["dev"]["per"],
                 "dev_wer": 100 * results["dev"]["wer"],
                 "test_per": 100 * results["test"]["per"],
                 "test_wer": 100 * results["test"]["wer"],
                 "wall_s": time.time() - t0})
    records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    curves[arm] = [(r["step"], r["reward"], r.get("edit_distance"))
                   for r in records if "split" not in r]
    print(rows[-1], flush=True)
  cols = ["arm", "dev_per", "dev_wer", "test_per", "test_wer", "wall_s"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(
        f"{r.get(k, float('nan')):.2f}" if k != "arm" else r[k]
        for k in cols) + " |")
  md = "\n".join(lines)
  with open(os.path.join(args.out, "compare.md"), "w") as f:
    f.write(md + "\n")
  with open(os.path.join(args.out, "compare.json"), "w") as f:
    json.dump({"rows": rows, "curves": curves, "steps": args.steps,
               "batch": args.batch}, f, indent=1)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for arm, pts in curves.items():
    if arm in ("seq", "instant", "ocd"):
      ax.plot([s for s, _, _ in pts], [-r for _, r, _ in pts], label=arm)
  ax.set(xlabel="step", ylabel="sampled edit distance / target length",
         title="RL arms: normalized edit distance of samples (lower is better)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "compare.png"), dpi=100)
  print(md)


if __name__ == "__main__":
  main()
