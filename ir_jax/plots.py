"""PNG curves from a workdir's metrics.jsonl (matplotlib, headless)."""

import os
from typing import List


def plot_workdir(workdir: str) -> List[str]:
  """Writes loss.png, reward.png, eval.png (and samples.png for RL runs);
  returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from ir_jax import workdir as workdir_lib
  records = workdir_lib.read_metrics(workdir)
  if not records:
    raise FileNotFoundError(f"No metrics in {workdir}/metrics.jsonl; train "
                            "first.")
  train = [r for r in records if "split" not in r]
  evals = [r for r in records if "split" in r]
  panels = {
      "loss.png": ("training loss", ["loss", "ce"], train),
      "reward.png": ("rewards (greedy_*: the model's greedy outputs\non "
                     "the step's batch, exact edit distance)",
                     ["greedy_reward", "greedy_exact_match", "reward",
                      "soft_ed", "cosine", "alpha", "token_accuracy"], train),
  }
  if any("empty_fraction" in r for r in train):  # RL runs.
    panels["samples.png"] = ("RL samples: mean length (tokens, EOS "
                             "included),\nshare that are empty (EOS first)",
                             ["sample_length", "empty_fraction"], train)
  paths = []
  for name, (title, keys, rows) in panels.items():
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
      pts = [(r["step"], r[k]) for r in rows if k in r]
      if pts and any(v for _, v in pts):
        ax.plot(*zip(*pts), label=k)
    ax.set(xlabel="step", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    paths.append(os.path.join(workdir, name))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
  fig, ax = plt.subplots(figsize=(7, 4))
  for split in sorted({r["split"] for r in evals}):
    for k, style in (("per", "o-"), ("wer", "s--")):
      pts = [(r["step"], 100 * r[k]) for r in evals if r["split"] == split]
      if pts:
        ax.plot(*zip(*pts), style, label=f"{split} {k.upper()}")
  ax.set(xlabel="step", ylabel="%", title="error rates")
  ax.legend()
  ax.grid(alpha=0.3)
  paths.append(os.path.join(workdir, "eval.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  return paths
