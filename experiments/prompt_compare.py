"""Prompts for a frozen multi-task G2P model: hand tag vs random vs soft vs
searched, per task, on the dev split.

  ir-jax train --config experiments/g2p.py:multi --workdir runs/g2p_multi
  python experiments/prompt_compare.py --frozen runs/g2p_multi \
      --out benchmarks/results/prompt

Rows per task (g2p: letters->phonemes, p2g: phonemes->letters): `hand tag`
(the tag the model was trained with, 1 slot), `random` (4 random symbols),
`soft CE` / `soft fused` (4 learned vectors, experiments/prompt.py:soft and
:soft,fused), `soft from tag` (1 vector initialised from the hand tag,
:soft,tag), `search` (4 symbols by evolution, experiments/prompt.py:search).
`--arms "soft from tag"` reruns one arm and keeps the other rows.
Writes prompt.md (dev/test PER and WER, wall time), prompt.json and
prompt_search.png (best and mean reward over search rounds).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from ir_jax import config as config_lib  # noqa: E402
from ir_jax import prompt_search, train  # noqa: E402
from ir_jax import workdir as workdir_lib  # noqa: E402
from ir_jax.models import prompting  # noqa: E402
from ir_jax.data import tasks  # noqa: E402

ARMS = {"soft CE": "soft", "soft fused": "soft,fused",
        "soft from tag": "soft,tag", "search": "search"}
FIXED = ("hand tag", "random")


def prompt_config(variant, direction, frozen, steps):
  extra = ",p2g" if direction == "p2g" else ""
  c = config_lib.load(os.path.join(ROOT, "experiments/prompt.py") +
                      f":{variant}{extra}")
  c.init_from = frozen
  if steps:
    c.total_steps = c.eval_every = c.checkpoint_every = steps
  return c


def fixed_prompt_rates(config, frozen, ids, splits=("dev", "test")):
  """PER/WER of the frozen model with prompt `ids` in the slots."""
  c = config_lib.load(os.path.join(ROOT, "experiments/g2p.py") + ":multi")
  c.data.directions = config.data.directions
  c.data.prompt_len = len(ids)
  c.data.source_len = config.data.source_len
  task = tasks.build(c)
  _, _, model, params = workdir_lib.load_run(frozen)
  return prompt_search.evaluate_ids(model, {"params": params}, task, ids,
                              config.eval_batch_size, splits)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--frozen", default="runs/g2p_multi")
  ap.add_argument("--out", default="benchmarks/results/prompt")
  ap.add_argument("--runs", default="runs/prompt")
  ap.add_argument("--steps", type=int, default=0, help="soft steps (0: config)")
  ap.add_argument("--tasks", default="g2p,p2g")
  ap.add_argument("--arms", default=",".join(FIXED + tuple(ARMS)),
                  help="comma list; rows of other arms are kept from an "
                       "earlier prompt.json")
  args = ap.parse_args()
  arms = args.arms.split(",")
  os.makedirs(args.out, exist_ok=True)
  rows, curves = [], {}
  previous = os.path.join(args.out, "prompt.json")
  if os.path.exists(previous):
    with open(previous) as f:
      old = json.load(f)
    rows = [r for r in old["rows"] if r["method"] not in arms]
    curves = {} if "search" in arms else old.get("search", {})
  for direction in args.tasks.split(","):
    c = prompt_config("soft", direction, args.frozen, args.steps)
    task = tasks.build(c)
    tag = task.vocab.index[tasks.TAGS[direction]]
    rng = np.random.default_rng(0)
    fixed = {"hand tag": [tag],
             "random": rng.choice(prompting.symbol_ids(task), 4).tolist()}
    for name, ids in fixed.items():
      if name not in arms:
        continue
      t0 = time.time()
      rates = fixed_prompt_rates(c, args.frozen, ids)
      rows.append(dict(task=direction, method=name, seconds=0.0,
                       prompt=" ".join(task.vocab.symbols[i] for i in ids),
                       **{f"{s}_{k}": 100 * rates[s][k] for s in rates
                          for k in ("per", "wer")}))
      print(rows[-1], f"({time.time() - t0:.0f} s eval)", flush=True)
    for name, variant in ARMS.items():
      if name not in arms:
        continue
      cfg = prompt_config(variant, direction, args.frozen, args.steps)
      workdir = os.path.join(args.runs, f"{direction}_{variant.replace(',', '_')}")
      t0 = time.time()
      run = (prompt_search.search_and_evaluate if cfg.prompt.mode == "search"
             else train.train_and_evaluate)
      results = run(cfg, workdir)
      seconds = time.time() - t0
      meta = workdir_lib.load_prompt(workdir)
      rows.append(dict(task=direction, method=name, seconds=seconds,
                       prompt=" ".join(meta.get("symbols", [])) or
                       f"{meta['length']} vector" + ("s" if meta["length"] > 1 else ""),
                       **{f"{s}_{k}": 100 * results[s][k]
                          for s in ("dev", "test") for k in ("per", "wer")}))
      print(rows[-1], flush=True)
      if variant == "search":
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          curves[direction] = [json.loads(l) for l in f
                               if "best_reward" in l]
  order = {m: i for i, m in enumerate(FIXED + tuple(ARMS))}
  rows.sort(key=lambda r: (r["task"], order[r["method"]]))
  with open(os.path.join(args.out, "prompt.json"), "w") as f:
    json.dump({"rows": rows, "search": curves}, f, indent=1)
  lines = ["| task | prompt method | prompt | dev PER % | dev WER % | "
           "test PER % | test WER % | wall s (tuning + eval) |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['task']} | {r['method']} | `{r['prompt']}` | "
                 f"{r['dev_per']:.2f} | {r['dev_wer']:.2f} | "
                 f"{r['test_per']:.2f} | {r['test_wer']:.2f} | "
                 f"{r['seconds']:.0f} |")
  with open(os.path.join(args.out, "prompt.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for direction, recs in curves.items():
    x = [r["step"] for r in recs]
    line, = ax.plot(x, [r["best_reward"] for r in recs], label=f"{direction} best")
    ax.plot(x, [r["mean_reward"] for r in recs], "--", color=line.get_color(),
            label=f"{direction} population mean")
  ax.set_xlabel("search round")
  ax.set_ylabel("reward (-ED / |target|)")
  ax.set_title("Discrete prompt search on the frozen multi-task model")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "prompt_search.png"), dpi=120)


if __name__ == "__main__":
  main()
