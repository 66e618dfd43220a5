"""The fair comparison of objectives (#15): one CE branch point, every arm
on the same remaining schedule, 3 seeds, significance against CE.

  python experiments/compare.py --task g2p            # ~75 min on 2 cores
  python experiments/compare.py --task g2p --tiny     # seconds (CI)

Protocol, per task (`g2p`, `p2g` = phonemes -> letters, `g2p_words` = 3
words joined by "|", ~21 output symbols):

1. Branch point: CE (experiments/g2p.py) at a constant learning rate after
   its warm-up (`optim.schedule="constant"`), `--branch_steps` steps, seed
   0. Its dev/test PER/WER and the beam-4 oracle WER (an item counts as
   right when any of the 4 best is: the headroom a sequence-level objective
   can use) are reported.
2. Arms, each from the branch params, with the same remaining schedule:
   `--steps` steps of `--batch` items, cosine decay from the branch's
   learning rate to 1% of it, no warm-up, no KL to the branch model (its
   CE continuation moves away from it); seeds vary the continuation (data
   order, sampling). Arms: `ce`; `fused` (CE + soft edit distance and
   cosine, alpha 0.3); `seq`, `instant`, `ocd` (experiments/g2p_rl.py: K=4
   samples, leave-one-out baseline, reward-adaptive alpha in [0.2, 0.8]);
   `mwer` (expected edit-distance risk over the beam's 4-best, same alpha).
   Equal steps and items, not equal wall-clock: the RL arms sample, and
   their seconds are in the table. `ce_wall`: CE for --wall_factor x the
   steps (about an RL arm's seconds). Decoding arms spend test-time
   compute instead: `ce_beam4` (beam search, 4 beams), `ce_mbr8` (MBR
   with the exact edit distance over greedy + 8 samples) and
   `ce_beam4_mbr` (MBR over the beam's 4-best, weighted by their
   renormalised probabilities) decode the ce run of the same seed.
   `ocd_scratch` trains no branch: OCD alone (alpha 1, one sample per
   word, as Sabour et al. 2019 trained it) from a fresh init with the
   branch's warm-up and batch, cosine-decayed over `--scratch_steps`, set
   so that it takes about the seconds of the branch plus a ce arm (equal
   wall-clock to the CE model it is compared with; both seconds are in
   the table).
3. Every trained arm is scored greedily on dev and test; the statistics
   pool the seeds (item i of seed s of an arm is paired with item i of
   seed s of ce): paired bootstrap of the PER difference (10,000 resamples) and the
   exact McNemar test of WER, overall and per reference-length bucket.

Writes (the results format of #15):
  <out>/<task>/<arm>/seed<S>/test.tsv (and dev.tsv): `source<TAB>output`
    lines, as `ir-jax generate` prints them;
  <out>/<task>/summary.json: "runs" (one record per arm and seed: arm,
    seed, test_per, test_wer, dev_per, dev_wer, steps, wall_s, fractions),
    "vs_ce" (per arm: delta_per, ci95, p_value, mcnemar_p, ... and
    "buckets"), "branches" (per seed: the branch point its arms started
    from, with its scores and beam-4 oracle WER), "branch" (the lowest
    seed's) and the protocol;
  <out>/<task>/summary.md (the table), reward.png (every run's greedy
    reward curve) and curves.json (the curves, by arm/seed).
The summary is rewritten after every run, so a stopped comparison keeps
what finished; rerunning skips finished runs, and a later call with the
same protocol adds its arms and seeds to the earlier calls' runs (e.g.
`--arms ce,ce_beam4,ce_mbr8 --seeds 0`, or `--arms ocd_scratch` once the
ce runs are in). A branch point is bit-reproducible on one machine, not
across machines (CPU float rounding): a call whose retrained branch
differs from the one a seed's earlier arms started from refuses to mix
them in a seed.
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ir_jax import config as config_lib  # noqa: E402
from ir_jax import decode, evaluate, study  # noqa: E402
from ir_jax import workdir as workdir_lib  # noqa: E402
from ir_jax.data import tasks  # noqa: E402

ARMS = ("ce", "fused", "seq", "instant", "ocd", "mwer", "ce_wall",
        "ocd_scratch")
RL_ARMS = ("seq", "instant", "ocd", "mwer")
# Test-time compute instead of training: the ce arm's own params (same
# seed) decoded by beam search or MBR (evaluate.generate_symbols kwargs).
DECODE_ARMS = {"ce_beam4": {"beam": 4}, "ce_mbr8": {"mbr": 8},
               "ce_beam4_mbr": {"beam": 4, "mbr_nbest": True}}
# Task name -> config overrides on experiments/g2p.py.
TASKS = {
    "g2p": {},
    "p2g": {"data.directions": "p2g"},
    "g2p_words": {"data.join_words": 3, "data.source_len": 40,
                  "data.target_len": 36},
}
# Task name -> reference-length buckets (name, min, max), in symbols: about
# a third of the test items each (g2p_words joins 3 words, so ~3x longer).
_WORD_BUCKETS = (("<=5", 0, 5), ("6-8", 6, 8), (">=9", 9, 10 ** 9))
BUCKETS = {"g2p": _WORD_BUCKETS, "p2g": _WORD_BUCKETS,
           "g2p_words": (("<=19", 0, 19), ("20-22", 20, 22),
                         (">=23", 23, 10 ** 9))}
EXPERIMENTS = os.path.join(ROOT, "experiments")


def _override(c, overrides):
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  # The protocol's batches are full width (as its committed runs were),
  # whatever experiments/g2p.py's default.
  c.data.length_buckets = 0
  return c


def _schedule(c, steps, batch, lr, warmup, schedule, logs):
  """`c` trained `steps` x `batch` items: warm-up to `lr`, then constant or
  cosine decay to 1% of it; `logs` log points, one evaluation and one
  checkpoint at the end."""
  c.total_steps, c.batch_size = steps, batch
  c.optim.learning_rate, c.optim.warmup_steps = lr, warmup
  c.optim.schedule, c.optim.end_fraction = schedule, 0.01
  c.log_every = max(1, steps // logs)
  c.eval_every = 10 * steps
  c.checkpoint_every = steps
  return c


def branch_config(task, args):
  """CE at a constant learning rate: the point every arm starts from."""
  c = config_lib.load(os.path.join(EXPERIMENTS, "g2p.py") +
                      (":tiny" if args.tiny else ""))
  _override(c, TASKS[task])
  c.seed = 0
  return _schedule(c, args.branch_steps, args.branch_batch, args.lr,
                   c.optim.warmup_steps, "constant", logs=20)


def arm_config(task, arm, seed, branch, args):
  """The arm's objective on the protocol's remaining schedule."""
  tiny = ",tiny" if args.tiny else ""
  if arm == "ocd_scratch":
    return ocd_scratch_config(task, seed, args)
  if arm in ("ce", "fused", "ce_wall"):
    variants = ["fused"] * (arm == "fused") + ["tiny"] * args.tiny
    c = config_lib.load(os.path.join(EXPERIMENTS, "g2p.py") +
                        (":" + ",".join(variants) if variants else ""))
    if arm == "fused":
      c.objective.alpha_warmup_steps = max(1, args.steps // 10)
  elif arm in RL_ARMS:
    c = config_lib.load(os.path.join(EXPERIMENTS, "g2p_rl.py") +
                        f":{arm}{tiny}")
    c.rl.num_samples = args.samples
    c.rl.kl_weight = 0.0
  else:
    raise ValueError(f"unknown arm {arm!r}; arms are {ARMS}.")
  _override(c, TASKS[task])
  c.seed = seed
  c.init_from = branch
  # ce_wall: CE for --wall_factor x the steps, about an RL arm's seconds.
  steps = args.steps * (args.wall_factor if arm == "ce_wall" else 1)
  return _schedule(c, steps, args.batch, args.lr, 0, "cosine", logs=15)


def ocd_scratch_config(task, seed, args):
  """OCD from a fresh init (no branch): the loss is OCD's alone (alpha 1),
  on one sample per word at temperature 1; the branch's batch and warm-up,
  then cosine decay to 1% over `--scratch_steps`."""
  c = config_lib.load(os.path.join(EXPERIMENTS, "g2p_rl.py") +
                      (":ocd,tiny" if args.tiny else ":ocd"))
  _override(c, TASKS[task])
  c.seed = seed
  c.rl.num_samples = 1
  c.rl.baseline = "none"       # OCD's targets need no baseline.
  c.rl.kl_weight = 0.0
  c.objective.alpha = 1.0
  c.objective.alpha_schedule = "constant"
  return _schedule(c, args.scratch_steps, args.branch_batch, args.lr,
                   min(200, args.scratch_steps // 5), "cosine", logs=20)


def _curve(wd):
  """[(step, greedy reward)] of a run's training records."""
  return [(r["step"], r["greedy_reward"]) for r in workdir_lib.read_metrics(wd)
          if "split" not in r and "greedy_reward" in r]


# A finished arm has its final dev and test records and its outputs.
FINAL = {"splits": ("dev", "test"), "files": ("outputs/test.tsv",)}


def finished(config, wd) -> bool:
  return study.finished(config, wd, **FINAL)


def run(config, wd):
  """(final eval records by split, training records, wall seconds):
  `ir_jax.study.run`, which trains unless a finished run is there."""
  return study.run(config, wd, **FINAL)


def decode_run(ce_wd, kwargs, dest):
  """A decoding arm: the finished ce run in `ce_wd` decoded with `kwargs`
  (beam / mbr) on dev and test; the outputs go to `dest`/{split}.tsv
  (cached there: a finished decode is not redone). Returns (final records
  by split, decoding seconds of both splits)."""
  config, task, model, params = workdir_lib.load_run(ce_wd)
  final, seconds = {}, 0.0
  for split in ("dev", "test"):
    data = task.eval_sets[split]
    path = os.path.join(dest, f"{split}.tsv")
    if os.path.exists(path) and os.path.exists(path + ".s"):
      outputs = evaluate.read_outputs(path)
      outputs = [outputs[k] for k in data.keys]
      seconds += float(open(path + ".s").read())
    else:
      t0 = time.time()
      outputs = evaluate.generate_symbols(
          model, {"params": params}, task, data.source, 1024, data.direction,
          seed=config.seed, **kwargs)
      took = time.time() - t0
      seconds += took
      os.makedirs(dest, exist_ok=True)
      with open(path, "w", encoding="utf-8") as f:
        f.writelines(evaluate.output_line(k, o, task.name, task.vocab) + "\n"
                     for k, o in zip(data.keys, outputs))
      with open(path + ".s", "w") as f:
        f.write(f"{took!r}\n")
    final[split] = evaluate.error_rates(outputs, data.references)
  return final, seconds


def oracle_wer(wd, beam=4):
  """Beam-`beam` oracle WER of a run on dev and test: an item is right when
  any of its `beam` best outputs matches a reference."""
  config, task, model, params = workdir_lib.load_run(wd)
  out = {}
  for split in ("dev", "test"):
    data = task.eval_sets[split]
    allowed = evaluate.allowed_tokens(model, task, data.direction)
    right = np.zeros(len(data.source), bool)
    for start in range(0, len(data.source), 512):
      chunk = data.source[start:start + 512]
      nbest = decode.beam_search(model, {"params": params}, chunk,
                                 max_len=task.target_len, beam=beam,
                                 allowed=allowed)
      tokens = np.asarray(nbest["tokens"])
      for i, rows in enumerate(tokens):
        refs = {tuple(r) for r in data.references[start + i]}
        right[start + i] = any(tuple(task.vocab.decode(r)) in refs
                               for r in rows)
    out[split] = float(1.0 - right.mean())
  return out


def _errors(task, split, path):
  """(errors, lengths) of an outputs file against the split's references,
  in the split's item order."""
  return evaluate.outputs_errors(task.eval_sets[split], path)


def statistics(task, out_dir, runs, reference="ce", buckets=_WORD_BUCKETS):
  """Per arm vs `reference`, pooled over the seeds both have: PER delta
  with its bootstrap CI and p, McNemar p of WER, per seed deltas, per
  reference-length bucket of `buckets` ((name, min, max) rows).

  Each system's PER divides its errors by its own closest references'
  lengths (as eval does); buckets hold items by their shortest reference
  (`evaluate.item_lengths`), the same for both systems and every arm."""
  scored = {}
  for r in runs:
    path = os.path.join(out_dir, r["arm"], f"seed{r['seed']}", "test.tsv")
    scored[(r["arm"], r["seed"])] = _errors(task, "test", path)
  vs = {}
  for arm in sorted({a for a, _ in scored} - {reference}):
    seeds = sorted(s for a, s in scored if a == arm and (reference, s) in
                   scored)
    if not seeds:
      continue
    ea = np.concatenate([scored[(arm, s)][0] for s in seeds])
    eb = np.concatenate([scored[(reference, s)][0] for s in seeds])
    na = np.concatenate([scored[(arm, s)][1] for s in seeds])
    nb = np.concatenate([scored[(reference, s)][1] for s in seeds])
    item = np.tile(evaluate.item_lengths(task.eval_sets["test"].references),
                   len(seeds))
    boot = evaluate.paired_bootstrap(ea, eb, na, lengths_b=nb)
    mc = evaluate.mcnemar(ea == 0, eb == 0)
    per_seed = []
    for s in seeds:
      a, length = scored[(arm, s)]
      b, length_b = scored[(reference, s)]
      per_seed.append({"seed": s, "delta_per": float(
          a.sum() / length.sum() - b.sum() / length_b.sum()),
          "delta_wer": float(np.mean(a > 0) - np.mean(b > 0))})
    by_bucket = {}
    for name, lo, hi in buckets:
      keep = (item >= lo) & (item <= hi)
      if keep.sum() < 2:
        continue
      bb = evaluate.paired_bootstrap(ea[keep], eb[keep], na[keep],
                                     lengths_b=nb[keep])
      bm = evaluate.mcnemar(ea[keep] == 0, eb[keep] == 0)
      by_bucket[name] = {"items": int(keep.sum()), "delta_per": bb["delta"],
                         "ci95": bb["ci95"], "p_value": bb["p_value"],
                         "delta_wer": float(np.mean(ea[keep] > 0) -
                                            np.mean(eb[keep] > 0)),
                         "mcnemar_p": bm["p_value"]}
    vs[arm] = {"seeds": seeds, "delta_per": boot["delta"],
               "ci95": boot["ci95"], "p_value": boot["p_value"],
               "delta_wer": float(np.mean(ea > 0) - np.mean(eb > 0)),
               "mcnemar_p": mc["p_value"], "only_arm_right": mc["only_a"],
               "only_ce_right": mc["only_b"], "per_seed": per_seed,
               "buckets": by_bucket}
  return vs


def same_branch(a, b) -> bool:
  """Two branch records of the same params (their scores agree)."""
  keys = ("steps", "test_per", "test_wer", "dev_per", "dev_wer")
  return all(a[k] == b[k] for k in keys)


def table(summary):
  """summary.md: mean +- std over seeds and the pooled tests vs ce."""
  rows = ["| arm | seeds | test PER % | test WER % | dev PER % | dev WER % | "
          "dPER vs ce (95% CI), points | p PER | dWER, points | p WER "
          "(McNemar) | s/run |", "|" + "---|" * 11]
  groups = []   # [(branch record, seeds that started from it)]
  for seed, b in sorted(summary.get("branches", {}).items(),
                        key=lambda kv: int(kv[0])):
    same = [g for g in groups if same_branch(g[0], b)]
    if same:
      same[0][1].append(seed)
    else:
      groups.append((b, [seed]))
  for b, seeds in groups:
    which = (f", seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}"
             if len(groups) > 1 else "")
    rows.append(f"| branch (CE, step {b['steps']}{which}) | 1 | "
                f"{100 * b['test_per']:.2f} | {100 * b['test_wer']:.2f} | "
                f"{100 * b['dev_per']:.2f} | {100 * b['dev_wer']:.2f} | "
                f"beam-4 oracle WER: test {100 * b['oracle_test_wer']:.2f}, "
                f"dev {100 * b['oracle_dev_wer']:.2f} | | | | "
                f"{b['wall_s']:.0f} |")
  ms = lambda v: f"{100 * np.mean(v):.2f} +- {100 * np.std(v):.2f}"
  for arm in ARMS + tuple(DECODE_ARMS):
    rs = [r for r in summary["runs"] if r["arm"] == arm]
    if not rs:
      continue
    key = "decode_s" if arm in DECODE_ARMS else "wall_s"
    seconds = f"{np.mean([r[key] for r in rs]):.0f}" + (
        " (decoding)" if arm in DECODE_ARMS else
        " (from scratch)" if arm == "ocd_scratch" else "")
    v = summary["vs_ce"].get(arm)
    cmp = ("| | | |" if not v else
           f"{100 * v['delta_per']:+.2f} ({100 * v['ci95'][0]:+.2f}, "
           f"{100 * v['ci95'][1]:+.2f}) | {v['p_value']:.3g} | "
           f"{100 * v['delta_wer']:+.2f} | {v['mcnemar_p']:.3g} |")
    rows.append(f"| {arm} | {len(rs)} | {ms([r['test_per'] for r in rs])} | "
                f"{ms([r['test_wer'] for r in rs])} | "
                f"{ms([r['dev_per'] for r in rs])} | "
                f"{ms([r['dev_wer'] for r in rs])} | {cmp} {seconds} |")
  wall = summary.get("vs_ce_wall", {})
  if wall:
    rows += ["", "Against `ce_wall` (CE at about an RL arm's wall-clock):", "",
             "| arm | dPER vs ce_wall (95% CI), points | p PER | dWER, points "
             "| p WER (McNemar) |", "|---|---|---|---|---|"]
    for arm, v in wall.items():
      rows.append(f"| {arm} | {100 * v['delta_per']:+.2f} "
                  f"({100 * v['ci95'][0]:+.2f}, {100 * v['ci95'][1]:+.2f}) | "
                  f"{v['p_value']:.3g} | {100 * v['delta_wer']:+.2f} | "
                  f"{v['mcnemar_p']:.3g} |")
  buckets = BUCKETS[summary["task"]]
  lines = ["\n".join(rows), "", "Per reference-length bucket (test, pooled "
           "seeds), dPER points (p) / dWER points (p):", "",
           "| arm | " + " | ".join(n for n, _, _ in buckets) + " |",
           "|" + "---|" * (len(buckets) + 1)]
  for arm, v in summary["vs_ce"].items():
    cells = []
    for name, _, _ in buckets:
      x = v["buckets"].get(name)
      cells.append("" if not x else
                   f"{100 * x['delta_per']:+.2f} ({x['p_value']:.2g}) / "
                   f"{100 * x['delta_wer']:+.2f} ({x['mcnemar_p']:.2g}), "
                   f"{x['items']} items")
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(curves, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  colors = dict(zip(ARMS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for (arm, seed), pts in sorted(curves.items()):
    if pts:
      ax.plot(*zip(*pts), color=colors.get(arm), alpha=0.8,
              label=arm if seed == min(s for a, s in curves if a == arm)
              else None)
  ax.set(xlabel="arm step", ylabel="greedy reward (-ED / |target|)",
         title="greedy outputs' exact edit-distance reward on each batch")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def branch_point(args, branch_wd):
  """Trains (or finds) the branch point in `branch_wd`: its record (steps,
  seconds, dev/test PER/WER, beam-4 oracle WER)."""
  bc = branch_config(args.task, args)
  final, _, wall = run(bc, branch_wd)
  oracle_path = os.path.join(branch_wd, "oracle.json")
  if not os.path.exists(oracle_path):
    with open(oracle_path, "w") as f:
      json.dump(oracle_wer(branch_wd), f)
  oracle = json.load(open(oracle_path))
  return {"steps": bc.total_steps, "wall_s": wall,
          "test_per": final["test"]["per"], "test_wer": final["test"]["wer"],
          "dev_per": final["dev"]["per"], "dev_wer": final["dev"]["wer"],
          "oracle_dev_wer": oracle["dev"], "oracle_test_wer": oracle["test"]}


def earlier_runs(summary, summary_path, arms, seeds):
  """Puts the runs of earlier calls with the same protocol into
  `summary["runs"]` (a call may add arms or seeds; this call's arms and
  seeds are redone or re-read) and returns their branches by seed."""
  if not os.path.exists(summary_path):
    return {}
  with open(summary_path) as f:
    old = json.load(f)
  if old.get("protocol") != summary["protocol"]:
    return {}
  summary["runs"] = [r for r in old.get("runs", [])
                     if not (r["arm"] in arms and r["seed"] in seeds)]
  return old.get("branches") or {
      str(r["seed"]): old["branch"] for r in old.get("runs", [])}


def plot_curves(runs, runs_dir, out_dir, arms):
  """reward.png: every trained run's greedy reward curve. The curves are
  kept in <out_dir>/curves.json (the runs' workdirs are not committed);
  while some run's curve is unknown (a summary older than curves.json),
  this call's arms are plotted to reward_<arms>.png instead, and the
  earlier reward.png stays."""
  path = os.path.join(out_dir, "curves.json")
  known = json.load(open(path)) if os.path.exists(path) else {}
  wanted = []
  for r in runs:
    if r["arm"] in DECODE_ARMS:
      continue
    key = f"{r['arm']}/seed{r['seed']}"
    wanted.append((r["arm"], r["seed"], key))
    pts = _curve(os.path.join(runs_dir, r["arm"], f"seed{r['seed']}"))
    if pts:
      known[key] = pts
  with open(path, "w") as f:
    json.dump(known, f)
  if all(key in known for _, _, key in wanted):
    plot({(a, s): known[key] for a, s, key in wanted},
         os.path.join(out_dir, "reward.png"))
  else:
    plot({(a, s): known[key] for a, s, key in wanted
          if a in arms and key in known},
         os.path.join(out_dir, f"reward_{'_'.join(arms)}.png"))


def restat(task_name, out_dir):
  """summary.json's `vs_ce` / `vs_ce_wall` and summary.md recomputed from
  the outputs files already in `out_dir` (the task's data is rebuilt from
  its config, deterministically)."""
  summary_path = os.path.join(out_dir, "summary.json")
  with open(summary_path) as f:
    summary = json.load(f)
  c = config_lib.load(os.path.join(EXPERIMENTS, "g2p.py"))
  _override(c, TASKS[task_name])
  task = tasks.build(c)
  summary["vs_ce"] = statistics(task, out_dir, summary["runs"],
                                buckets=BUCKETS[task_name])
  if any(r["arm"] == "ce_wall" for r in summary["runs"]):
    summary["vs_ce_wall"] = statistics(task, out_dir, summary["runs"],
                                       "ce_wall", BUCKETS[task_name])
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=1)
  branches = summary.get("branches") or {   # Written before per-seed ones.
      str(r["seed"]): summary["branch"] for r in summary["runs"]
      if "branch" in summary}
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table(dict(summary, branches=branches)))
  return summary


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", choices=sorted(TASKS), default="g2p")
  p.add_argument("--arms", default=",".join(ARMS[:-1]),
                 help=f"of {ARMS}; ce_wall is CE at about an RL arm's "
                 "wall-clock")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--branch_steps", type=int, default=1000)
  p.add_argument("--branch_batch", type=int, default=256)
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--samples", type=int, default=4, help="K of the RL arms")
  p.add_argument("--wall_factor", type=int, default=4,
                 help="ce_wall trains this many x --steps")
  p.add_argument("--scratch_steps", type=int, default=700,
                 help="ocd_scratch's steps: about the seconds of the branch "
                 "plus a ce arm (an OCD step at K = 1 costs 1.64x a CE "
                 "step at the branch's batch on a 2-core CPU: "
                 "benchmarks/step_cost.py)")
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--tiny", action="store_true", help="seconds, for tests")
  p.add_argument("--restat", action="store_true",
                 help="recompute summary.json's statistics and summary.md "
                 "from the committed outputs in --out (no runs needed)")
  p.add_argument("--runs", default=os.path.join(ROOT, "runs", "evidence"))
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "evidence"))
  args = p.parse_args(argv)
  if args.tiny:
    args.branch_steps, args.branch_batch = min(args.branch_steps, 10), 16
    args.steps, args.batch, args.samples = min(args.steps, 4), 8, 2
    args.scratch_steps = min(args.scratch_steps, 10)
  arms = [a for a in args.arms.split(",") if a]
  known = ARMS + tuple(DECODE_ARMS)
  unknown = sorted(set(arms) - set(known))
  if unknown or not arms:
    p.error(f"--arms must name only {known}, got {arms}.")
  # Decoding arms read the ce run of their seed: after the trained arms.
  arms = ([a for a in arms if a not in DECODE_ARMS] +
          [a for a in arms if a in DECODE_ARMS])
  seeds = [int(s) for s in args.seeds.split(",")]
  runs_dir = os.path.join(args.runs, args.task)
  out_dir = os.path.join(args.out, args.task)
  if args.restat:
    return restat(args.task, out_dir)
  os.makedirs(out_dir, exist_ok=True)
  summary_path = os.path.join(out_dir, "summary.json")
  summary = {"task": args.task,
             "protocol": {k: getattr(args, k) for k in (
                 "branch_steps", "branch_batch", "steps", "batch", "samples",
                 "lr", "wall_factor")},
             "runs": [], "vs_ce": {}}
  branches = earlier_runs(summary, summary_path, arms, seeds)
  missing = [s for s in seeds if "ce" not in arms and not any(
      r["arm"] == "ce" and r["seed"] == s for r in summary["runs"])]
  if missing:
    p.error(f"--arms must include ce for seeds {missing}: every arm is "
            "compared with the ce run of its seed (none is in "
            f"{summary_path}).")
  branch_wd = os.path.join(runs_dir, "branch")
  if any(a != "ocd_scratch" for a in arms):
    branch = branch_point(args, branch_wd)
    # A branch retrained on another machine differs (CPU float rounding
    # differs between machines), and every arm of a seed must start from
    # the same one: a seed whose earlier arms came from another branch is
    # redone whole or not at all.
    for seed in seeds:
      before = branches.get(str(seed))
      kept = sorted({r["arm"] for r in summary["runs"] if r["seed"] == seed}
                    - {"ocd_scratch"})
      if before and not same_branch(before, branch) and kept:
        raise SystemExit(
            f"{args.task} seed {seed}: the branch in {branch_wd} is not the "
            f"one the seed's arms {kept} started from (dev PER "
            f"{100 * before['dev_per']:.2f} then, "
            f"{100 * branch['dev_per']:.2f} now). Rerun every arm of the "
            f"seed (--arms ce,{','.join(a for a in kept if a != 'ce')}) or "
            "use another seed.")
      branches[str(seed)] = branch
  summary["branches"] = branches
  summary["branch"] = branches[min(branches, key=int)]
  task = None
  for seed in seeds:
    for arm in arms:
      wd = os.path.join(runs_dir, arm, f"seed{seed}")
      dest = os.path.join(out_dir, arm, f"seed{seed}")
      extra = {}
      if arm in DECODE_ARMS:
        wd = os.path.join(runs_dir, "ce", f"seed{seed}")
        c = arm_config(args.task, "ce", seed, branch_wd, args)
        fresh = not all(os.path.exists(os.path.join(dest, f"{s}.tsv.s"))
                        for s in ("dev", "test"))
        final, decode_s = decode_run(wd, DECODE_ARMS[arm], dest)
        wall = run(c, wd)[2]
        extra = {"decode_s": decode_s}
      else:
        c = arm_config(args.task, arm, seed, branch_wd, args)
        fresh = not finished(c, wd)
        final, _, wall = run(c, wd)
        os.makedirs(dest, exist_ok=True)
        for split in ("dev", "test"):
          shutil.copy(os.path.join(wd, "outputs", f"{split}.tsv"),
                      os.path.join(dest, f"{split}.tsv"))
      summary["runs"] = [r for r in summary["runs"]
                         if (r["arm"], r["seed"]) != (arm, seed)] + [{
          "arm": arm, "seed": seed, "test_per": final["test"]["per"],
          "test_wer": final["test"]["wer"], "dev_per": final["dev"]["per"],
          "dev_wer": final["dev"]["wer"], "steps": c.total_steps,
          "wall_s": wall, **extra}]
      if task is None:
        task = workdir_lib.load_run(wd)[1]
      if not fresh and (seed, arm) != (seeds[-1], arms[-1]):
        continue  # Statistics once after each new run, and at the end.
      summary["vs_ce"] = statistics(task, out_dir, summary["runs"],
                                    buckets=BUCKETS[args.task])
      if any(r["arm"] == "ce_wall" for r in summary["runs"]):
        summary["vs_ce_wall"] = statistics(task, out_dir, summary["runs"],
                                           "ce_wall", BUCKETS[args.task])
      with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
      with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(table(summary))
      plot_curves(summary["runs"], runs_dir, out_dir, arms)
      print(f"{args.task} {arm} seed {seed}: test PER "
            f"{100 * final['test']['per']:.2f} WER "
            f"{100 * final['test']['wer']:.2f} ({wall:.0f} s)", flush=True)
  print(table(summary))
  return summary


if __name__ == "__main__":
  main()
