"""Exact per-token credit vs sequence credit, where credit can matter:
GRPO arms that differ only in `rl.credit`, from one start, paired by seed.

  python experiments/credit_study.py --task g2p_words5 --pilot --seeds 0
  python experiments/credit_study.py --task g2p_words5 --seeds 0,1,2,3,4,5,6,7 \\
      --target_reward R                     # R fixed from the pilot
  python experiments/credit_study.py --task word_sorting_long --seeds 0,1,2 \\
      --target_reward R                     # SmolLM2 (hours a seed)
  python experiments/credit_study.py --task g2p_words --tiny   # seconds

Tasks (`TASKS`): `g2p_words` and `g2p_words5` (the small G2P Transformer
of experiments/g2p.py on 3- and 5-word items, ~21 and ~35 symbols an
answer; the start is CE at a constant learning rate, 600 and 300 steps x
256 items (`G2P_TASKS`, `--start_steps`), trained by the driver once), and
the SmolLM2-135M-Instruct tasks of experiments/llm_rl.py (`spell_backward`,
~4 tokens, the short control; `word_sorting_long`, 12-16 words, ~31
tokens), whose start is the LoRA SFT stage of experiments/llm_rl_study.py
(`sft_stage`: committed adapters merged into the GGUF base).

Arms (`ARMS`; every arm: the same start, K = `--samples` samples per
prompt, the seed's keys shared by all arms: LoRA init, prompt order and
the sampling key of every step): `sequence`, `reward_to_go`, `immediate`,
`lambda` (`--credit_lambda`), with `rl.credit_baseline=--baseline` for the
token credits (the mechanism, benchmarks/credit_variance.py, chose it),
and `ocd` (`rl.mode="ocd"`: the same DP's optimal completions as
targets). The reward is logged every step.

Results (`<out>/<task>/`): summary.json `{task, model, target_reward,
runs: [{arm, seed, rollouts_to_target, auc, test_exact, test_cer, steps,
rollouts, wall_s}]}` (`rollouts_to_target`: prompts x K at the first step
whose 5-record moving average reaches `target_reward`, null if never; `auc`:
the mean rollout reward over the run, `ir_jax.study.curve_area`), per run
`<arm>/seed<S>/curve.jsonl` ({step, rollouts, wall_s, reward,
completion_length, empty_fraction}) and `test.jsonl` ({prompt, target,
output}; for G2P the word, and phonemes joined by spaces, `target` the
reference closest to the output), report.json / report.md (each token
credit and ocd against `sequence`, paired by seed: `ir_jax.study.
paired_test` and the AUC's seed-level interval, Holm over the arms; the
edit-operation split), samples.md (20 decoded test items: the start's,
from `start/test.jsonl`, beside every arm's) and curves.png.
"""

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

from ir_jax import config as config_lib  # noqa: E402
from ir_jax import study  # noqa: E402
from ir_jax import workdir as workdir_lib  # noqa: E402

ARMS = ("sequence", "reward_to_go", "immediate", "lambda", "ocd")
# G2P task -> its data fields (words joined into one item) and CE steps of
# its start (the checkpoints benchmarks/credit_variance.py measured).
G2P_TASKS = {
    "g2p_words": ({"data.join_words": 3, "data.source_len": 40,
                   "data.target_len": 36, "data.length_buckets": 0}, 600),
    "g2p_words5": ({"data.join_words": 5, "data.source_len": 64,
                    "data.target_len": 60, "data.length_buckets": 0}, 300)}
# task -> (model, steps, B prompts a step)
TASKS = {"g2p_words": ("transformer", 150, 16),
         "g2p_words5": ("transformer", 150, 16),
         "spell_backward": ("smollm2-135m-instruct", 60, 4),
         "word_sorting_long": ("smollm2-135m-instruct", 40, 2)}


def _set(c, overrides):
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def start_config(args):
  """G2P: CE at a constant learning rate from scratch (the start)."""
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py") +
                      (":tiny" if args.tiny else ""))
  fields, steps = G2P_TASKS[args.task]
  _set(c, fields)
  c.seed = 0
  if not args.tiny:
    c.total_steps, c.batch_size = args.start_steps or steps, 256
    c.optim.learning_rate, c.optim.schedule = 3e-3, "constant"
  c.log_every = max(1, c.total_steps // 20)
  c.eval_every = c.checkpoint_every = c.total_steps
  config_lib.validate(c)
  return c


def arm_config(args, arm, seed, start):
  """The arm's config: GRPO (or OCD) from `start`, the seed's keys."""
  _, steps, batch = TASKS[args.task]
  tiny = ",tiny" if args.tiny else ""
  mode = "ocd" if arm == "ocd" else "grpo"
  if args.task in G2P_TASKS:
    c = config_lib.load(os.path.join(ROOT, "experiments", "g2p_rl.py") +
                        f":{mode}{tiny}")
    _set(c, G2P_TASKS[args.task][0])
    c.init_from = start
    c.rl.kl_weight = 0.0 if mode == "ocd" else c.rl.kl_weight
  else:
    import llm_rl_study
    c = llm_rl_study.stage_config(args.task, "grpo_sequence", args, start,
                                  seed)
    if mode == "ocd":
      c.rl.mode, c.rl.kl_weight, c.rl.baseline = "ocd", 0.0, "none"
  if mode == "ocd":          # OCD's loss alone: no CE mixed, no controller.
    c.objective.alpha, c.objective.alpha_schedule = 1.0, "constant"
    for field in ("epsilon_high", "inner_steps"):
      c.rl[field] = config_lib.default_config().rl[field]
    c.rl.loss_aggregation, c.rl.group_std = "sequence_mean", True
    c.rl.credit, c.rl.kl_estimator = "token", "k3"
  else:
    c.rl.credit = arm
    if arm != "sequence":
      c.rl.credit_baseline = args.baseline
    if arm == "lambda":
      c.rl.credit_lambda = args.credit_lambda
  c.seed = seed
  c.rl.num_samples = args.samples if not args.tiny else 2
  if not args.tiny:
    c.total_steps = args.steps or steps
    c.batch_size = batch
  c.log_every = 1
  c.eval_every = c.total_steps + 1          # One eval, at the end.
  c.checkpoint_every = c.total_steps
  config_lib.validate(c)
  return c


def credit_curve(wd, config):
  """study.curve with `rollouts` (prompts x K so far) on each point."""
  per_step = config.batch_size * config.rl.num_samples
  return [dict(p, rollouts=p["step"] * per_step) for p in study.curve(wd)]


def g2p_test(wd, dest):
  """`dest/test.jsonl` of a G2P run: the word, the reference closest to
  the output (phonemes joined by spaces) and the output."""
  from ir_jax import evaluate
  from ir_jax import state as state_lib
  data = state_lib.build_task(workdir_lib.load_config(wd)).eval_sets["test"]
  got = {}
  with open(os.path.join(wd, "outputs", "test.tsv"), encoding="utf-8") as f:
    for line in f:
      key, _, text = line.rstrip("\n").partition("\t")
      got[key] = text
  os.makedirs(dest, exist_ok=True)
  with open(os.path.join(dest, "test.jsonl"), "w") as f:
    for key, refs in zip(data.keys, data.references):
      out = got[key].split()
      refs = [list(r) for r in refs]
      best = (min(refs, key=lambda r: sum(evaluate.edit_operations(out, r)))
              if refs else [])
      f.write(json.dumps({"prompt": key, "target": " ".join(best),
                          "output": " ".join(out)}) + "\n")


def write_test(task, wd, dest):
  """`dest/test.jsonl` of the run in `wd`, in the task's form."""
  (g2p_test if task in G2P_TASKS else study.run_test)(wd, dest)


def run_arm(args, arm, seed, start):
  wd = os.path.join(args.runs, args.task, arm, f"seed{seed}")
  dest = os.path.join(args.out, args.task, arm, f"seed{seed}")
  c = arm_config(args, arm, seed, start)
  final = study.run(c, wd, files=("outputs/test.tsv",))[0]["test"]
  points = credit_curve(wd, c)
  write_test(args.task, wd, dest)
  with open(os.path.join(dest, "curve.jsonl"), "w") as f:
    for p in points:
      f.write(json.dumps({k: p[k] for k in (
          "step", "rollouts", "wall_s", "reward", "completion_length",
          "empty_fraction")}) + "\n")
  steps, _ = study.to_target(points, args.target_reward)
  per_step = c.batch_size * c.rl.num_samples
  exact_key = "exact_match" if "exact_match" in final else None
  test_exact = (float(final[exact_key]) if exact_key else
                1.0 - float(final["wer"]))
  test_cer = float(final["cer"] if "cer" in final else final["per"])
  study.show(dest, f"{args.task} {arm} seed {seed}", count=5)
  return {"arm": arm, "seed": seed,
          "rollouts_to_target": None if steps is None else steps * per_step,
          "auc": study.curve_area(points), "test_exact": test_exact,
          "test_cer": min(test_cer, 1.0) if exact_key else test_cer,
          "steps": c.total_steps, "rollouts": c.total_steps * per_step,
          "wall_s": points[-1]["wall_s"]}


def start_of(args):
  """The checkpoint every arm starts from (trained once)."""
  if args.task in G2P_TASKS:
    wd = os.path.join(args.runs, args.task, "start")
    study.run(start_config(args), wd, splits=("dev",))
    return wd
  import llm_rl_study
  from ir_jax.models import gguf
  gguf_path = args.gguf or gguf.fetch(llm_rl_study.MODEL)
  return llm_rl_study.sft_stage(args, args.task, gguf_path)[0]


def start_test(args, start, out_dir):
  """`<out>/<task>/start/test.jsonl`: the start's own test outputs (what
  every arm began from), where its run evaluated the test set."""
  dest = os.path.join(out_dir, "start")
  if os.path.exists(os.path.join(dest, "test.jsonl")):
    return
  if not os.path.exists(os.path.join(start, "outputs", "test.tsv")):
    return
  write_test(args.task, start, dest)


def samples(out_dir, summary, count=20):
  """samples.md: the first `count` test items decoded by the start and by
  every arm (its lowest seed), side by side: look at the outputs, not only
  the reward."""
  arms = sorted({r["arm"] for r in summary["runs"]})
  seed = {a: min(r["seed"] for r in summary["runs"] if r["arm"] == a)
          for a in arms}
  columns = [("start", os.path.join(out_dir, "start"))] + [
      (f"{a} (seed {seed[a]})", os.path.join(out_dir, a, f"seed{seed[a]}"))
      for a in arms]
  columns = [(name, study.read_test(d)) for name, d in columns
             if os.path.exists(os.path.join(d, "test.jsonl"))]
  if not columns:
    return
  lines = [f"# {summary['task']}: {count} decoded test items, the start "
           "and every arm", ""]
  cell = lambda text: text.replace("|", "\\|")   # G2P's word separator.
  for i in range(min(count, min(len(rows) for _, rows in columns))):
    first = columns[0][1][i]
    lines += [f"**{first['prompt']}**", "", "| system | output |",
              "|---|---|",
              f"| target (closest to {columns[0][0]}) | "
              f"{cell(first['target'])} |"]
    lines += [f"| {name} | {cell(rows[i]['output'])} |"
              for name, rows in columns]
    lines.append("")
  with open(os.path.join(out_dir, "samples.md"), "w") as f:
    f.write("\n".join(lines))


def report(out_dir, summary):
  """report.json / .md: each arm against `sequence`, paired by seed."""
  runs = {(r["arm"], r["seed"]): r for r in summary["runs"]}
  dest = lambda arm, seed: os.path.join(out_dir, arm, f"seed{seed}")
  tests = {}
  for arm in sorted({a for a, _ in runs} - {"sequence"}):
    seeds = sorted(s for a, s in runs if a == arm and ("sequence", s) in runs)
    if not seeds:
      continue
    out = study.paired_test([dest(arm, s) for s in seeds],
                            [dest("sequence", s) for s in seeds])
    auc = [runs[(arm, s)]["auc"] - runs[("sequence", s)]["auc"]
           for s in seeds]
    ratio = []   # Where sequence never reaches it, its budget bounds it.
    for s in seeds:
      a, b = runs[(arm, s)], runs[("sequence", s)]
      bound = b["rollouts_to_target"] or b["rollouts"]
      ratio.append(None if a["rollouts_to_target"] is None
                   else a["rollouts_to_target"] / bound)
    out.update(seeds=seeds, auc_deltas=auc, rollouts_ratio=ratio,
               auc_seed_level=study.seed_level(auc) if len(seeds) > 1
               else None)
    tests[f"{arm}_vs_sequence"] = out
  # The family: every arm against sequence on the AUC, seed level.
  adjusted = study.holm({name: (t["auc_seed_level"] or {}).get("p_value")
                         for name, t in tests.items()})
  for name, t in tests.items():
    t["auc_p_holm"] = adjusted[name]
  rep = {"task": summary["task"], "target_reward": summary["target_reward"],
         "tests": tests,
         "output_bytes": {f"{a}/seed{s}": study.output_bytes(dest(a, s))
                          for a, s in runs},
         "error_split": {f"{a}/seed{s}": study.error_split(dest(a, s))
                         for a, s in runs}}
  lines = [f"# Credit study, {summary['task']} ({summary['model']}), "
           f"target_reward {summary['target_reward']}", "",
           "| arm | seed | rollouts to target | AUC | test exact | test CER |",
           "|---|---|---|---|---|---|"]
  for r in sorted(summary["runs"], key=lambda r: (r["arm"], r["seed"])):
    lines.append(f"| {r['arm']} | {r['seed']} | {r['rollouts_to_target']} | "
                 f"{r['auc']:.4f} | {r['test_exact']:.4f} | "
                 f"{r['test_cer']:.4f} |")
  lines += ["", "| vs sequence | seeds | AUC deltas | AUC seed-level "
            "(95% CI) | p (Holm) | test CER delta, seed level | "
            "item-level CER delta (p) | rollouts ratio |",
            "|---|---|---|---|---|---|---|---|"]
  fmt = lambda x: "-" if x is None else f"{x:.3g}"
  for name, t in tests.items():
    s = t["auc_seed_level"]
    level = ("one seed" if s is None else
             f"{s['mean']:+.4f} ({s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f})"
             + (", underpowered" if s.get("underpowered") else ""))
    p = "-" if s is None else f"{fmt(s['p_value'])} ({fmt(t['auc_p_holm'])})"
    c = t["seed_cer"]
    cer = (f"{c['mean']:+.4f}" + ("" if c["ci95"][0] is None else
                                  f" ({c['ci95'][0]:+.4f}, "
                                  f"{c['ci95'][1]:+.4f})"))
    ratio = ", ".join("-" if r is None else f"{r:.2f}"
                      for r in t["rollouts_ratio"])
    lines.append(f"| {name} | {len(t['seeds'])} | "
                 f"{', '.join(f'{d:+.4f}' for d in t['auc_deltas'])} | "
                 f"{level} | {p} | {cer} | {t['delta_cer']:+.4f} "
                 f"({fmt(t['p_cer'])}) | {ratio} |")
  lines += ["", "Test errors split (edit operations over the targets' "
            "bytes, mean over seeds):", "",
            "| arm | sub | ins | del | output / target bytes | empty |",
            "|---|---|---|---|---|---|"]
  start = os.path.join(out_dir, "start")
  if os.path.exists(os.path.join(start, "test.jsonl")):
    rep["error_split"]["start"] = study.error_split(start)
    rep["output_bytes"]["start"] = study.output_bytes(start)
  arms = (["start"] if "start" in rep["error_split"] else []) + sorted(
      {a for a, _ in runs})
  for arm in arms:
    keys = ([arm] if arm == "start" else
            [f"{a}/seed{s}" for a, s in sorted(runs) if a == arm])
    split = {op: np.mean([rep["error_split"][k][op] for k in keys])
             for op in ("sub", "ins", "del")}
    size = [rep["output_bytes"][k] for k in keys]
    lines.append(f"| {arm} | {split['sub']:.4f} | {split['ins']:.4f} | "
                 f"{split['del']:.4f} | "
                 f"{np.mean([b['output'] for b in size]):.1f} / "
                 f"{np.mean([b['target'] for b in size]):.1f} | "
                 f"{sum(b['empty'] for b in size)} |")
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(rep, f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  samples(out_dir, summary)
  return rep


def plot(out_dir, runs):
  """curves.png: reward against rollouts, each arm's seeds as a band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for color, arm in zip(colors, sorted({r["arm"] for r in runs})):
    curves = []
    for r in runs:
      if r["arm"] == arm:
        with open(os.path.join(out_dir, arm, f"seed{r['seed']}",
                               "curve.jsonl")) as f:
          curves.append([json.loads(x) for x in f])
    n = min(len(c) for c in curves)
    xs = [p["rollouts"] for p in curves[0][:n]]
    ys = np.array([study.moving_average([p["reward"] for p in c[:n]])
                   for c in curves])
    ax.plot(xs, ys.mean(0), color=color, label=f"{arm} ({len(curves)})")
    if len(curves) > 1:
      ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.15)
  ax.set_xlabel("rollouts (prompts x K)")
  ax.set_ylabel(f"rollout reward ({study.WINDOW}-step average)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", default="g2p_words", choices=sorted(TASKS))
  p.add_argument("--arms", default=",".join(ARMS))
  p.add_argument("--seeds", default="0")
  p.add_argument("--target_reward", type=float, default=None)
  p.add_argument("--pilot", action="store_true", help="run the first arm "
                 "of the first seed and print the target to fix")
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--start_steps", type=int, default=0,
                 help="CE steps of the G2P start (0: the task's, G2P_TASKS)")
  p.add_argument("--sft_steps", type=int, default=0)
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--baseline", default="position",
                 choices=("position", "none"))
  p.add_argument("--credit_lambda", type=float, default=0.5)
  p.add_argument("--gguf", default="")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--report", action="store_true", help="only rewrite "
                 "report.{json,md} and curves.png from summary.json")
  p.add_argument("--runs", default=os.path.join(ROOT, "runs", "credit"))
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "credit"))
  args = p.parse_args(argv)
  arms = [a for a in args.arms.split(",") if a]
  if not arms or set(arms) - set(ARMS):
    p.error(f"--arms must name only {ARMS}, got {arms}.")
  seeds = [int(s) for s in args.seeds.split(",")]
  out_dir = os.path.join(args.out, args.task)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "summary.json")
  summary = {"task": args.task, "model": TASKS[args.task][0],
             "target_reward": args.target_reward, "runs": []}
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if (None not in (before["target_reward"], args.target_reward)
        and before["target_reward"] != args.target_reward):
      raise SystemExit(f"{path} was made with target_reward "
                       f"{before['target_reward']}; it stays fixed.")
    summary["runs"] = before["runs"]
    if summary["target_reward"] is None:
      summary["target_reward"] = args.target_reward = before["target_reward"]
  if args.report:
    start = os.path.join(args.runs, args.task, "start")
    if args.task in G2P_TASKS and os.path.isdir(start):
      start_test(args, start, out_dir)
    plot(out_dir, summary["runs"])
    return report(out_dir, summary)
  start = start_of(args)
  start_test(args, start, out_dir)
  for seed in seeds:
    for arm in arms:
      row = run_arm(args, arm, seed, start)
      if args.pilot:
        pts = study.curve(os.path.join(args.runs, args.task, arm,
                                       f"seed{seed}"))
        half = study.pilot_target(pts, row["steps"] // 2)
        print(f"pilot: {arm} seed {seed} reaches {half:.4f} (5-record "
              "average) at half its steps: pass it as --target_reward",
              flush=True)
        return row
      summary["runs"] = [r for r in summary["runs"] if (r["arm"], r["seed"])
                         != (arm, seed)] + [row]
      tmp = path + ".partial"
      with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
      os.replace(tmp, path)
      plot(out_dir, summary["runs"])
      report(out_dir, summary)
  return summary


if __name__ == "__main__":
  main()
