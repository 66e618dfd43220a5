"""RL on a real LLM (#33): SFT -> GRPO on SmolLM2-135M-Instruct, token-level
instant credit vs sequence credit vs CE at equal compute.

  python experiments/llm_rl_study.py --task spell_backward          # hours
  python experiments/llm_rl_study.py --task spell_backward --arms grpo_token \\
      --seeds 0 --pilot        # the short pilot that fixes target_reward
  python experiments/llm_rl_study.py --task spell_backward --tiny \\
      --gguf tiny.gguf         # seconds (CI, a random tiny llama GGUF)

Protocol, per task (configs: experiments/llm_rl.py):

1. **SFT start**: LoRA SFT (rank 8 on attention + MLP) of the GGUF model on
   the task's train split, seed 0. Its adapters are committed small (bf16,
   `<out>/<task>/sft/adapters.npz`) and the merged base is always rebuilt
   from them (GGUF + bf16 adapters, merged in f32, `hf.save`d with the
   tokenizer under `<runs>/<task>/merged`), so every arm on every machine
   starts from the committed weights. `sft/seed0/test.jsonl` scores it.
2. **Arms** from the merged base with fresh adapters (their KL reference is
   the base with adapters off: the merged base): `grpo_token`,
   `grpo_sequence` (identical but for `rl.credit`), `sft_wall` (CE for the
   seconds `grpo_token` took on that seed, sized by the SFT stage's
   measured seconds per step).
3. **Target**: `--target_reward` fixed before the real runs (from the
   pilot: the 5-record moving average its `grpo_token` reached at half its
   budget; `--pilot` prints it). Steps / seconds to target = the first
   logged step where the 5-record moving average of the rollout reward
   reaches it.

Results (`<out>/<task>/`): summary.json ({model, task, target_reward, runs:
[{arm, seed, steps, wall_s, test_exact, test_cer, steps_to_target,
seconds_to_target, reward_at_equal_rollouts}]}), `<arm>/seed<S>/test.jsonl`
({prompt, target, output} per test item, the decoded text as `ir-jax
generate --text` prints it), `<arm>/seed<S>/curve.jsonl` ({step, wall_s,
reward, completion_length, empty_fraction} per logged step; wall_s sums
the logged seconds per step, compile included, no eval), curves.png.
A finished run is not retrained (rerun to resume a cut one).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ir_jax import config as config_lib  # noqa: E402
from ir_jax import evaluate, pretrained  # noqa: E402
from ir_jax import workdir as workdir_lib  # noqa: E402
from ir_jax import state as state_lib  # noqa: E402
from ir_jax.study import (  # noqa: E402,F401  (the shared machinery)
    WINDOW, answer_variety, curve, error_split, moving_average, output_bytes,
    paired_test, pilot_target, read_test, run_test, show, to_target,
    write_test)
from ir_jax import study  # noqa: E402
from ir_jax.models import lora  # noqa: E402

ARMS = ("grpo_token", "grpo_sequence", "sft_wall", "tunix_grpo")
EXPERIMENT = os.path.join(ROOT, "experiments", "llm_rl.py")
MODEL = "smollm2-135m-instruct"


# ------------------------------------------------------------------ runs


def stage_config(task, stage, args, hf_path, seed=0, steps=None):
  c = config_lib.load(f"{EXPERIMENT}:{task},{stage}" +
                      (",tiny" if args.tiny else ""))
  c.model.hf_path = hf_path
  c.seed = seed
  steps = steps or (args.steps if stage.startswith("grpo") else
                    args.sft_steps if stage == "sft" else 0)
  if steps:
    c.total_steps = int(steps)
    c.eval_every = c.total_steps + 1     # One eval, at the end.
  config_lib.validate(c)
  return c


# ------------------------------------------------- SFT adapters and base


def with_adapters(config, path):
  """(model, params): the checkpoint at `path` with fresh adapters of
  `config.model.lora` (rank, alpha, targets), a no-op until trained."""
  import jax
  model, params = pretrained.load(path)
  lc = config.model.lora
  return lora.add_adapters(
      model, params, rank=lc.rank, alpha=lc.alpha,
      targets=tuple(t for t in lc.targets.split(",") if t),
      rng=jax.random.key(0))


def merged_base(config, adapters_path, dest):
  """`dest`: the GGUF base with the committed adapters folded in (f32),
  as an HF checkpoint with the tokenizer. Built once."""
  if os.path.exists(os.path.join(dest, "config.json")):
    return dest
  from ir_jax.models import hf
  adapted, p = with_adapters(config, config.model.hf_path)
  lc = config.model.lora
  base = lora.split(p)[1]
  adapters = lora.load_adapters(adapters_path)
  want = set(lora.split(p)[0])
  if set(adapters) != want:
    raise SystemExit(f"{adapters_path}: its adapters are not those of "
                     f"{config.model.hf_path} with rank {lc.rank} on "
                     f"{lc.targets}.")
  tmp = dest + ".partial"
  hf.save(tmp, adapted, lora.join(adapters, base))
  pretrained.tokenizer(config.model.hf_path).save(tmp)
  os.replace(tmp, dest)
  return dest


# ------------------------------------------------------------ test files


def test_outputs(config, model, params, dest):
  """Greedy outputs of the test split: `dest/test.jsonl` ({prompt, target,
  output} per item, the text `ir-jax generate --text` prints) and the
  scores ({exact_match, cer, ...})."""
  task = state_lib.build_task(config)
  data = task.eval_sets["test"]
  outputs = evaluate.generate_symbols(model, {"params": params}, task,
                                      data.source, config.eval_batch_size,
                                      data.direction)
  scores = evaluate.split_scores(task, outputs, data.references,
                                 getattr(data, "items", None))
  write_test(dest, data, [task.vocab.text(o) for o in outputs])
  return scores


# ----------------------------------------------------------------- main


def sft_stage(args, task, gguf_path):
  """(merged base dir, SFT seconds per step)."""
  c = stage_config(task, "sft", args, gguf_path)
  out = os.path.join(args.out, task, "sft")
  adapters = os.path.join(out, "adapters.npz")
  wd = os.path.join(args.runs, task, "sft")
  if not os.path.exists(adapters):
    study.run(c, wd)
    params = workdir_lib.load_run(wd)[3]
    lora.save_adapters(params, adapters)
  steps_per_s = [r["steps_per_sec"] for r in workdir_lib.read_metrics(wd) if "split" not in r]
  timing_path = os.path.join(out, "timing.json")
  if steps_per_s:     # The first record holds the compile: left out.
    tail = steps_per_s[1:] or steps_per_s
    with open(timing_path, "w") as f:
      json.dump({"sft_seconds_per_step": float(1 / np.median(tail)),
                 "steps": c.total_steps, "batch": c.batch_size}, f)
  merged = merged_base(c, adapters, os.path.join(args.runs, task, "merged"))
  start = os.path.join(out, "seed0")
  if not os.path.exists(os.path.join(start, "test.jsonl")):
    cw = stage_config(task, "sft_wall", args, merged)
    model, params = pretrained.load(merged)
    scores = test_outputs(cw, model, params, start)
    with open(os.path.join(start, "scores.json"), "w") as f:
      json.dump(scores, f, indent=1)
  show(start, f"{task} SFT start (merged base)")
  with open(timing_path) as f:
    return merged, json.load(f)["sft_seconds_per_step"]


def arm_run(args, task, arm, seed, merged, sft_step_s, runs):
  wd = os.path.join(args.runs, task, arm, f"seed{seed}")
  dest = os.path.join(args.out, task, arm, f"seed{seed}")
  if arm == "sft_wall":
    token = next((r for r in runs if r["arm"] == "grpo_token" and
                  r["seed"] == seed), None)
    if token is None:
      raise SystemExit(f"sft_wall seed {seed} needs grpo_token seed {seed} "
                       "first (it runs for that run's seconds).")
    steps = max(1, int(round(token["wall_s"] / sft_step_s)))
    c = stage_config(task, arm, args, merged, seed, steps=steps)
  else:    # tunix_grpo: grpo_sequence's settings (Tunix's credit).
    c = stage_config(task, "grpo_sequence" if arm == "tunix_grpo" else arm,
                     args, merged, seed)
  t0 = time.time()
  if arm == "tunix_grpo":
    final, points = tunix_run(c, merged, wd, dest)
  else:
    final = study.run(c, wd)[0]["test"]
    points = curve(wd)
    run_test(wd, dest)
  os.makedirs(dest, exist_ok=True)
  with open(os.path.join(dest, "curve.jsonl"), "w") as f:
    for p in points:
      f.write(json.dumps(p) + "\n")
  show(dest, f"{task} {arm} seed {seed}")
  steps, seconds = to_target(points, args.target_reward)
  rewarded = [p["reward"] for p in points if p["reward"] is not None]
  print(f"{task} {arm} seed {seed}: test exact {final['exact_match']:.3f} "
        f"cer {final['cer']:.3f} ({time.time() - t0:.0f} s)", flush=True)
  return {"arm": arm, "seed": seed, "steps": c.total_steps,
          "wall_s": points[-1]["wall_s"] if points else 0.0,
          "test_exact": float(final["exact_match"]),
          "test_cer": float(min(final["cer"], 1.0)),
          "steps_to_target": steps, "seconds_to_target": seconds,
          "reward_at_equal_rollouts": (float(moving_average(rewarded)[-1])
                                       if rewarded else None)}


def tunix_run(c, merged, wd, dest):
  """(test scores, curve points) of Tunix's GRPO from the merged base
  (experiments/llm_rl_tunix.py); its adapters folded into the base and the
  test split decoded by our decoder, as every other arm's."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import llm_rl_tunix
  from ir_jax.models import lora
  points, adapters = llm_rl_tunix.train(c, merged, wd)
  adapted, fresh = with_adapters(c, merged)
  model, params = lora.merge(adapted, lora.join(adapters,
                                                lora.split(fresh)[1]))
  scores = test_outputs(c, model, params, dest)
  return scores, points


# Comparisons of the report: (a, b), a's seeds paired with b's (the start
# has one: it is repeated).
COMPARISONS = (("grpo_token", "sft"), ("grpo_sequence", "sft"),
               ("tunix_grpo", "sft"), ("sft_wall", "sft"),
               ("grpo_token", "grpo_sequence"), ("grpo_token", "sft_wall"),
               ("grpo_token", "tunix_grpo"))


def _ratio(a, b):
  return None if a is None or b is None else a / b


def over_seeds(runs, lengths):
  """{arm: {seeds, test_exact, test_cer, output_bytes: [mean, min, max],
  steps_to_target: [per seed, None = never], reached: count}}: each arm's
  runs over its seeds (the table a reader compares arms by; the paired
  tests are what says whether a difference is noise)."""
  spread = lambda xs: [float(np.mean(xs)), float(min(xs)), float(max(xs))]
  arms = {}
  for arm in sorted({r["arm"] for r in runs}):
    rs = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
    arms[arm] = {
        "seeds": [r["seed"] for r in rs],
        "test_exact": spread([r["test_exact"] for r in rs]),
        "test_cer": spread([r["test_cer"] for r in rs]),
        "output_bytes": spread([lengths[f"{arm}/seed{r['seed']}"]["output"]
                                for r in rs]),
        "steps_to_target": [r["steps_to_target"] for r in rs],
        "reached": sum(r["steps_to_target"] is not None for r in rs)}
  return arms


def report(out_dir, summary):
  """report.json and report.md of a task's results: every run; each
  comparison pooled over the seeds both arms have (paired_test) with the
  per-seed CER deltas; per seed, grpo_token's rollouts to target over
  grpo_sequence's and its seconds to target over Tunix's."""
  runs = {(r["arm"], r["seed"]): r for r in summary["runs"]}
  dest = lambda arm, seed: os.path.join(out_dir, arm, f"seed{seed}")
  tests = {}
  for a, b in COMPARISONS:
    seeds = sorted(s for arm, s in runs if arm == a and (b == "sft" or
                                                         (b, s) in runs))
    if not seeds:
      continue
    side_b = [dest(b, 0 if b == "sft" else s) for s in seeds]
    out = paired_test([dest(a, s) for s in seeds], side_b)
    out["seeds"] = seeds
    out["per_seed_delta_cer"] = out["seed_cer"]["deltas"]
    tests[f"{a}_vs_{b}"] = out
  ratios = []
  for seed in sorted({s for _, s in runs}):
    token = runs.get(("grpo_token", seed))
    if token is None:
      continue
    seq, tunix = runs.get(("grpo_sequence", seed)), runs.get(
        ("tunix_grpo", seed))
    ratios.append({
        "seed": seed,
        "rollouts_token_over_sequence": _ratio(
            token["steps_to_target"], seq and seq["steps_to_target"]),
        "seconds_token_over_tunix": _ratio(
            token["seconds_to_target"], tunix and tunix["seconds_to_target"]),
        "step_seconds_token_over_tunix": _ratio(
            token["wall_s"] / token["steps"],
            tunix and tunix["wall_s"] / tunix["steps"])})
  lengths = {"sft/seed0": output_bytes(dest("sft", 0))}
  lengths.update({f"{a}/seed{s}": output_bytes(dest(a, s)) for a, s in runs})
  errors = {key: error_split(os.path.join(out_dir, key)) for key in lengths}
  variety = {key: answer_variety(os.path.join(out_dir, key))
             for key in lengths}
  rep = {"task": summary["task"], "target_reward": summary["target_reward"],
         "arms": over_seeds(summary["runs"], lengths), "tests": tests,
         "ratios": ratios, "output_bytes": lengths, "error_split": errors,
         "variety": variety}
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(rep, f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(report_markdown(summary, rep))
  return rep


def _f(x, fmt="{:.3f}", none="never"):
  return none if x is None else fmt.format(x)


def _seed_level(s) -> str:
  """'mean (lo, hi), p' in CER points, the seed as the unit (`study.
  seed_level`); 'underpowered' under 5 seeds."""
  if s["ci95"][0] is None:
    return f"{100 * s['mean']:+.2f} (one seed)"
  return (f"{100 * s['mean']:+.2f} ({100 * s['ci95'][0]:+.2f}, "
          f"{100 * s['ci95'][1]:+.2f}), p {s['p_value']:.2g}"
          + (", underpowered" if s["underpowered"] else ""))


def report_markdown(summary, rep) -> str:
  pct = lambda x: f"{100 * x:.2f}%"
  lines = [f"# {summary['task']}: {summary['model']}, target_reward "
           f"{summary['target_reward']}", "",
           "| arm | seed | steps | seconds | test exact | test CER | CER as "
           "sub / ins / del | output bytes (empty) | distinct outputs (most "
           "common) | steps to target | seconds to target | final reward "
           "(5-rec.) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  size = lambda key: (f"{rep['output_bytes'][key]['output']:.2f} "
                      f"({rep['output_bytes'][key]['empty']})")
  split = lambda key: " / ".join(f"{100 * rep['error_split'][key][k]:.2f}"
                                 for k in ("sub", "ins", "del"))
  variety = lambda key: (f"{pct(rep['variety'][key]['distinct'])} "
                         f"(`{rep['variety'][key]['top'][0]}` x"
                         f"{rep['variety'][key]['top'][1]})")
  start = rep["tests"].get("grpo_token_vs_sft") or next(
      (t for n, t in rep["tests"].items() if n.endswith("_vs_sft")), None)
  if start:
    lines.append(f"| SFT start | 0 | - | - | {pct(start['exact_b'])} | "
                 f"{pct(start['cer_b'])} | {split('sft/seed0')} | "
                 f"{size('sft/seed0')} | {variety('sft/seed0')} | - | - | "
                 "- |")
  for r in sorted(summary["runs"], key=lambda r: (r["arm"], r["seed"])):
    never = "-" if r["arm"] == "sft_wall" else "never"    # CE: no reward.
    lines.append(
        f"| {r['arm']} | {r['seed']} | {r['steps']} | {r['wall_s']:.0f} | "
        f"{pct(r['test_exact'])} | {pct(r['test_cer'])} | "
        f"{split(r['arm'] + '/seed' + str(r['seed']))} | "
        f"{size(r['arm'] + '/seed' + str(r['seed']))} | "
        f"{variety(r['arm'] + '/seed' + str(r['seed']))} | "
        f"{_f(r['steps_to_target'], '{}', never)} | "
        f"{_f(r['seconds_to_target'], '{:.0f}', never)} | "
        f"{_f(r['reward_at_equal_rollouts'], none=never)} |")
  lines += ["", f"Targets average {rep['output_bytes']['sft/seed0']['target']:.2f}"
            f" bytes; {pct(rep['variety']['sft/seed0']['target_distinct'])}"
            " of them are distinct.", "", "Over seeds (mean, min..max):", "",
            "| arm | seeds | test exact | test CER | output bytes | steps "
            "to target (per seed) |", "|---|---|---|---|---|---|"]
  spread = lambda v, f: f"{f(v[0])} ({f(v[1])}..{f(v[2])})"
  for arm, a in rep["arms"].items():
    lines.append(
        f"| {arm} | {len(a['seeds'])} | {spread(a['test_exact'], pct)} | "
        f"{spread(a['test_cer'], pct)} | "
        f"{spread(a['output_bytes'], '{:.2f}'.format)} | "
        + ("-" if arm == "sft_wall" else ", ".join(
            _f(x, "{}") for x in a["steps_to_target"])) + " |")
  lines += ["", "Paired on the test items, pooled over the seeds both have "
            "(the SFT start repeated); dCER in points, a minus b. The item "
            "tests treat the pooled items as independent; the seed-level "
            "column is the one a claim rests on (a t interval over the "
            "per-seed deltas under 5 seeds):", "",
            "| a vs b | seeds | exact a / b | McNemar p | CER a / b | dCER "
            "(95% CI) | bootstrap p | dCER per seed | seed level: dCER "
            "(95% CI), p |", "|---|---|---|---|---|---|---|---|---|"]
  for name, t in rep["tests"].items():
    lines.append(
        f"| {name.replace('_vs_', ' vs ')} | {','.join(map(str, t['seeds']))}"
        f" | {pct(t['exact_a'])} / {pct(t['exact_b'])} | "
        f"{t['mcnemar_p']:.3g} | {pct(t['cer_a'])} / {pct(t['cer_b'])} | "
        f"{100 * t['delta_cer']:+.2f} ({100 * t['ci95'][0]:+.2f}, "
        f"{100 * t['ci95'][1]:+.2f}) | {t['p_cer']:.3g} | "
        + ", ".join(f"{100 * d:+.2f}" for d in t["per_seed_delta_cer"])
        + f" | {_seed_level(t['seed_cer'])} |")
  lines += ["", "Per seed ('-': an arm missing or never at the target):",
            "", "| seed | rollouts to target, token / sequence | seconds to "
            "target, token / Tunix | seconds a step, token / Tunix |",
            "|---|---|---|---|"]
  for r in rep["ratios"]:
    lines.append(f"| {r['seed']} | "
                 f"{_f(r['rollouts_token_over_sequence'], '{:.2f}x', '-')} | "
                 f"{_f(r['seconds_token_over_tunix'], '{:.2f}x', '-')} | "
                 f"{_f(r['step_seconds_token_over_tunix'], '{:.2f}x', '-')} |")
  return "\n".join(lines) + "\n"


def plot(out_dir, runs, target_reward=None):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  arms = sorted({r["arm"] for r in runs})
  for color, arm in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"],
                        arms):
    curves = []
    for r in runs:
      if r["arm"] != arm:
        continue
      path = os.path.join(out_dir, arm, f"seed{r['seed']}", "curve.jsonl")
      with open(path) as f:
        curves.append([json.loads(line) for line in f])
    for row, key in enumerate(("reward", "completion_length")):
      for col, x in enumerate(("step", "wall_s")):
        ax = axes[row, col]
        pts = [[p for p in c if p[key] is not None] for c in curves]
        pts = [p for p in pts if p]
        if not pts:
          continue
        n = min(len(p) for p in pts)
        xs = np.mean([[q[x] for q in p[:n]] for p in pts], 0)
        ys = np.array([[q[key] for q in p[:n]] for p in pts])
        ax.plot(xs, ys.mean(0), color=color, label=f"{arm} ({len(pts)})")
        if len(pts) > 1:
          ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.2)
        ax.set_xlabel("rollout steps" if x == "step" else "seconds")
        ax.set_ylabel(key.replace("_", " "))
  if target_reward is not None:
    for ax in axes[0]:
      ax.axhline(target_reward, color="gray", ls="--", lw=1,
                 label="target_reward (on the 5-record average)")
  axes[0, 0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "curves.png"), dpi=100)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--task", default="spell_backward")
  p.add_argument("--arms", default=",".join(ARMS),
                 help="comma list of arms; 'sft': the SFT start alone")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--target_reward", type=float, default=None,
                 help="fixed from the pilot before the real runs")
  p.add_argument("--pilot", action="store_true",
                 help="print the reward the first arm's 5-record average "
                 "reaches at half its steps (the target to fix)")
  p.add_argument("--steps", type=int, default=0, help="GRPO steps (0: the "
                 "config's)")
  p.add_argument("--sft_steps", type=int, default=0)
  p.add_argument("--gguf", default="", help="default: fetch " + MODEL)
  p.add_argument("--tiny", action="store_true", help="seconds, for tests")
  p.add_argument("--runs", default=os.path.join(ROOT, "runs", "llm_rl"))
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "llm_rl"))
  p.add_argument("--report", action="store_true", help="only rewrite "
                 "report.{json,md} and curves.png from the results")
  args = p.parse_args(argv)
  if args.report:
    out_dir = os.path.join(args.out, args.task)
    with open(os.path.join(out_dir, "summary.json")) as f:
      summary = json.load(f)
    plot(out_dir, summary["runs"], summary["target_reward"])
    return report(out_dir, summary)
  arms = [a for a in args.arms.split(",") if a]
  if arms == ["sft"]:
    arms = []            # The SFT start alone (its adapters and scores).
  elif not arms or set(arms) - set(ARMS):
    p.error(f"--arms must name only {ARMS} (or be sft alone), got {arms}.")
  seeds = [int(s) for s in args.seeds.split(",")]
  if args.gguf:
    gguf_path = args.gguf
  else:
    from ir_jax.models import gguf
    gguf_path = gguf.fetch(MODEL)
  out_dir = os.path.join(args.out, args.task)
  os.makedirs(out_dir, exist_ok=True)
  summary_path = os.path.join(out_dir, "summary.json")
  summary = {"model": MODEL if not args.gguf else os.path.basename(
      args.gguf), "task": args.task, "target_reward": args.target_reward,
             "runs": []}
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      before = json.load(f)
    if (before.get("target_reward") is not None and args.target_reward
        is not None and before["target_reward"] != args.target_reward):
      raise SystemExit(f"{summary_path} was made with target_reward "
                       f"{before['target_reward']}; it stays fixed.")
    summary["runs"] = before["runs"]
    if summary["target_reward"] is None:
      summary["target_reward"] = before.get("target_reward")
      args.target_reward = summary["target_reward"]
  merged, sft_step_s = sft_stage(args, args.task, gguf_path)
  for seed in seeds:
    for arm in arms:
      row = arm_run(args, args.task, arm, seed, merged, sft_step_s,
                    summary["runs"])
      summary["runs"] = [r for r in summary["runs"] if (r["arm"], r["seed"])
                         != (arm, seed)] + [row]
      if args.pilot:
        pts = curve(os.path.join(args.runs, args.task, arm, f"seed{seed}"))
        budget = config_lib.load(f"{EXPERIMENT}:{args.task},{arm}")
        half = pilot_target(pts, budget.total_steps // 2)
        print(f"pilot: {arm} seed {seed} reaches {half:.4f} (5-record "
              "average) at half the task's GRPO steps: pass it as "
              "--target_reward", flush=True)
        return summary
      with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
      plot(out_dir, summary["runs"], summary["target_reward"])
      report(out_dir, summary)
  return summary


if __name__ == "__main__":
  main()
