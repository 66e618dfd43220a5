"""Reward kernels side by side with their peers, in one run.

  python benchmarks/rewards.py            # ~3 min on a 2-core CPU
  python benchmarks/rewards.py --quick    # smaller sweep

Writes benchmarks/results/rewards.{json,md,png}. Peers:
  exact: RapidFuzz `Levenshtein.distance` looped over token-id lists and
    `process.cpdist` (pairwise, one call);
  soft: ott-jax `SoftDTW` (vmapped) and plain autodiff through a nested
    row/column scan; and a ceiling: the same per-cell arithmetic as one bulk
    XLA op with no dependencies between cells.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import rewards  # noqa: E402


def nested_scan_soft_ed(costs, gamma=1.0, ins=1.0, dele=1.0):
  """The naive baseline: row scan of column scans, differentiated by autodiff."""
  batch, num_pred, num_target = costs.shape
  row0 = jnp.broadcast_to(
      jnp.arange(num_target + 1, dtype=jnp.float32)[:, None] * dele,
      (num_target + 1, batch))

  def softmin(a, b, c):
    best = jnp.minimum(a, jnp.minimum(b, c))
    return best - gamma * jnp.log(
        jnp.exp((best - a) / gamma) + jnp.exp((best - b) / gamma) +
        jnp.exp((best - c) / gamma))

  def row_step(prev, xs):
    crow, i = xs

    def cell(left, ys):
      diag, up, cost = ys
      r = softmin(diag + cost, up + ins, left + dele)
      return r, r

    first = jnp.broadcast_to(i * ins, (batch,))
    _, rest = lax.scan(cell, first, (prev[:-1], prev[1:], crow))
    return jnp.concatenate([first[None], rest]), None

  last, _ = lax.scan(row_step, row0,
                     (costs.transpose(1, 2, 0),
                      jnp.arange(1, num_pred + 1, dtype=jnp.float32)))
  return last[-1]


def bulk_ceiling(costs, gamma=1.0):
  """The forward cell arithmetic on all cells at once (no recursion)."""
  prev = jnp.cumsum(costs, axis=2)
  sub, ins, dele = prev + costs, prev + 1.0, jnp.roll(prev, 1, axis=1) + 1.0
  best = jnp.minimum(sub, jnp.minimum(ins, dele))
  total = (jnp.exp((best - sub) / gamma) + jnp.exp((best - ins) / gamma) +
           jnp.exp((best - dele) / gamma))
  return (best - gamma * jnp.log(total)).sum((1, 2))


def exact_section(quick):
  from rapidfuzz import process
  from rapidfuzz.distance import Levenshtein
  rng = np.random.default_rng(0)
  rows = []
  sizes = [(4096, 48)] + ([] if quick else [(4096, 16), (1024, 128),
                                            (256, 256), (64, 1024)])
  for batch, length in sizes:
    pred = rng.integers(0, 50_000, (batch, length)).astype(np.int32)
    target = pred.copy()
    noise = rng.random(target.shape) < 0.3
    target[noise] = rng.integers(0, 50_000, noise.sum())
    p_lists, t_lists = [list(x) for x in pred], [list(x) for x in target]
    fn = jax.jit(rewards.levenshtein)
    p_dev, t_dev = jnp.asarray(pred), jnp.asarray(target)
    ours = common.timeit(fn, p_dev, t_dev)
    loop = common.timeit(
        lambda: [Levenshtein.distance(a, b) for a, b in zip(p_lists, t_lists)])
    cpdist = common.timeit(lambda: process.cpdist(
        p_lists, t_lists, scorer=Levenshtein.distance, workers=1))
    check = np.asarray(fn(p_dev, t_dev))
    assert (check == [Levenshtein.distance(a, b)
                      for a, b in zip(p_lists, t_lists)]).all()
    rows.append({"B": batch, "N=M": length, "ours_ms": ours * 1e3,
                 "rapidfuzz_loop_ms": loop * 1e3,
                 "rapidfuzz_cpdist_ms": cpdist * 1e3,
                 "speedup_vs_loop": loop / ours,
                 "speedup_vs_cpdist": cpdist / ours})
  return rows


def soft_fns(name, gamma=1.0):
  if name == "ott":
    from ott.geometry.costs import SoftDTW
    sdtw = SoftDTW(gamma)
    # ott takes point clouds; 1-d features keep its ground cost negligible.
    def value(x):
      return jax.vmap(sdtw)(x[0], x[1]).sum()
  elif name == "autodiff_nested_scan":
    value = lambda c: nested_scan_soft_ed(c, gamma).sum()
  else:
    value = lambda c: rewards.soft_edit_distance(c, gamma, layout=name).sum()
  return jax.jit(value), jax.jit(jax.grad(value))


def soft_inputs(name, rng, batch, n, m):
  if name == "ott":
    return (jnp.asarray(rng.random((batch, n, 1)), jnp.float32),
            jnp.asarray(rng.random((batch, m, 1)), jnp.float32))
  return jnp.asarray(rng.random((batch, n, m)), jnp.float32)


def peak_bytes(fn, x):
  mem = fn.lower(x).compile().memory_analysis()
  if mem is None:
    return float("nan")
  return float(mem.temp_size_in_bytes + mem.argument_size_in_bytes +
               mem.output_size_in_bytes)


def soft_section(quick):
  rng = np.random.default_rng(1)
  impls = ["rows", "diagonals", "autodiff_nested_scan", "ott"]
  main, sweep = [], []
  shapes = [(512, 48, "main")]
  if not quick:
    shapes += [(64, n, "length") for n in (16, 64, 256, 1024)]
    shapes += [(b, 48, "batch") for b in (1, 8, 64, 2048)]
  for batch, length, kind in shapes:
    row = {"B": batch, "N=M": length, "sweep": kind}
    for name in impls:
      if length >= 1024 and name in ("autodiff_nested_scan",):
        continue  # Its tape is O(N M) per pair per step; minutes at 1024.
      fwd, fwdbwd = soft_fns(name)
      x = soft_inputs(name, rng, batch, length, length)
      row[f"{name}_fwd_ms"] = common.timeit(fwd, x, repeats=3) * 1e3
      row[f"{name}_fwdbwd_ms"] = common.timeit(fwdbwd, x, repeats=3) * 1e3
      if name != "ott":
        row[f"{name}_peak_MiB"] = peak_bytes(fwdbwd, x) / 2**20
    if kind == "main":
      x = soft_inputs("rows", rng, batch, length, length)
      row["bulk_ceiling_ms"] = common.timeit(jax.jit(bulk_ceiling), x) * 1e3
      row["plane_MiB"] = batch * length * length * 4 / 2**20
    best = min(row["rows_fwdbwd_ms"], row["diagonals_fwdbwd_ms"])
    row["fwdbwd_speedup_vs_ott"] = row["ott_fwdbwd_ms"] / best
    (main if kind == "main" else sweep).append(row)
    print(row, flush=True)
  return main, sweep


def plot(exact, soft_sweep, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  xs = [r["N=M"] for r in exact]
  per_pair = lambda k: [r[k] / r["B"] * 1e3 for r in exact]
  for key, label in (("ours_ms", "ir_jax levenshtein"),
                     ("rapidfuzz_loop_ms", "RapidFuzz loop"),
                     ("rapidfuzz_cpdist_ms", "RapidFuzz cpdist")):
    order = np.argsort(xs)
    ax.plot(np.array(xs)[order], np.array(per_pair(key))[order], "o-",
            label=label)
  ax.set(xscale="log", yscale="log", xlabel="N = M", ylabel="us / pair",
         title="exact edit distance")
  ax.legend()
  for ax, kind, xkey in ((axes[1], "length", "N=M"), (axes[2], "batch", "B")):
    rows = [r for r in soft_sweep if r["sweep"] == kind]
    for name in ("rows", "diagonals", "autodiff_nested_scan", "ott"):
      pts = [(r[xkey], r[f"{name}_fwdbwd_ms"]) for r in rows
             if f"{name}_fwdbwd_ms" in r]
      if pts:
        ax.plot(*zip(*pts), "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel=xkey, ylabel="ms (fwd+bwd)",
           title=f"soft edit distance, sweep over {xkey}")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  exact = exact_section(args.quick)
  soft_main, soft_sweep = soft_section(args.quick)
  m = soft_main[0]
  best_fwd = min(m["rows_fwd_ms"], m["diagonals_fwd_ms"])
  summary = {
      "exact_speedup_vs_rapidfuzz_loop_B4096_N48":
          exact[0]["speedup_vs_loop"],
      "soft_fwdbwd_speedup_vs_ott_B512_N48": m["fwdbwd_speedup_vs_ott"],
      "soft_fwdbwd_speedup_vs_autodiff_nested_scan":
          m["autodiff_nested_scan_fwdbwd_ms"] /
          min(m["rows_fwdbwd_ms"], m["diagonals_fwdbwd_ms"]),
      "soft_fwd_fraction_of_bulk_ceiling": m["bulk_ceiling_ms"] / best_fwd,
      "soft_fwdbwd_peak_over_plane":
          m["rows_peak_MiB"] / m["plane_MiB"],
  }
  md = ["Machine: " + ", ".join(f"{k} {v}" for k, v in common.machine().items()),
        "", "**Exact Levenshtein** (times per call for B pairs)", "",
        common.markdown_table(exact, list(exact[0])), "",
        "**Soft edit distance**, B=512, N=M=48 (ms; peak = XLA memory "
        "analysis of the fwd+bwd program)", "",
        common.markdown_table(soft_main, list(soft_main[0])), ""]
  if soft_sweep:
    cols = ["sweep", "B", "N=M"] + [f"{n}_fwdbwd_ms" for n in (
        "rows", "diagonals", "autodiff_nested_scan", "ott")] + [
            "fwdbwd_speedup_vs_ott"]
    md += ["**Soft edit distance sweeps** (fwd+bwd ms)", "",
           common.markdown_table(soft_sweep, cols), ""]
  md += ["**Summary**", ""] + [f"- {k}: {v:.2f}" for k, v in summary.items()]
  common.write("rewards", {"machine": common.machine(), "exact": exact,
                           "soft": soft_main, "soft_sweep": soft_sweep,
                           "summary": summary}, "\n".join(md))
  if not args.quick:
    plot(exact, soft_sweep, f"{common.RESULTS}/rewards.png")


if __name__ == "__main__":
  main()
