"""What the experiment drivers share: runs that resume, curves and targets,
test outputs, paired statistics with the seed as the unit, and the output
diagnostics that tell a reward from a reward bug.

A study is a set of runs (an arm x a seed each) in workdirs that a rerun
finds finished and skips (`run`). Each run's training records give its
curve (`curve`); a target reward is reached at the first record whose
`WINDOW`-record moving average gets there (`to_target`), and the area
under the curve (`curve_area`) needs no target. Test outputs are one
`test.jsonl` per run ({prompt, target, output} a line), compared by
`paired_test`: item-level tests pooled over seeds beside a seed-level one
(`seed_level`), which is what a claim rests on. `output_bytes`,
`answer_variety` and `error_split` show what a reward did to the answers.

Answers are compared as `evaluate.answer_bytes` compares them (UTF-8,
ASCII whitespace stripped at both ends), the rule of the byte rewards.

  from ir_jax import study
  final, records, wall_s = study.run(config, "runs/a/seed0")
  study.paired_test(["a/seed0", "a/seed1"], ["b/seed0", "b/seed1"])
"""

import collections
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ir_jax import evaluate, train
from ir_jax import state as state_lib
from ir_jax import workdir as workdir_lib

WINDOW = 5   # Records in the moving average of steps to target.
Dests = Union[str, Sequence[str]]

# ------------------------------------------------------------------ runs


def finished(config, wd: str, splits: Sequence[str] = ("test",),
             files: Sequence[str] = ()) -> bool:
  """A finished run of `config` is in `wd`: an eval record of each of
  `splits` at `config.total_steps`, and each of `files` (relative to `wd`)."""
  final = {r["split"] for r in workdir_lib.read_metrics(wd)
           if "split" in r and r["step"] == config.total_steps}
  return set(splits) <= final and all(
      os.path.exists(os.path.join(wd, f)) for f in files)


def run(config, wd: str, splits: Sequence[str] = ("test",),
        files: Sequence[str] = ()
        ) -> Tuple[Dict[str, dict], List[dict], float]:
  """Trains `config` in `wd` unless a finished run is there (`finished`);
  a stopped run resumes from its checkpoint.

  Returns (final eval records by split, training records, wall seconds of
  the training call, kept in `wd/wall_s.txt`; NaN for a run finished
  before that file existed). A preempted run raises SystemExit: rerun.
  """
  wall_path = os.path.join(wd, "wall_s.txt")
  if not finished(config, wd, splits, files):
    t0 = time.time()
    results = train.train_and_evaluate(config, wd)
    if "preempted_at" in results:
      raise SystemExit(f"preempted in {wd}: rerun to resume.")
    with open(wall_path, "w") as f:
      f.write(f"{time.time() - t0!r}\n")
  records = workdir_lib.read_metrics(wd)
  final = {r["split"]: r for r in records
           if "split" in r and r["step"] == config.total_steps}
  wall = (float(open(wall_path).read()) if os.path.exists(wall_path)
          else float("nan"))
  return final, [r for r in records if "split" not in r], wall


# ---------------------------------------------------------------- curves


def curve(wd: str) -> List[dict]:
  """[{step, wall_s, reward, completion_length, empty_fraction}] of a
  run's training records; wall_s adds up each record's steps /
  steps_per_sec. reward is None on records without rollouts (CE)."""
  out, wall, last = [], 0.0, 0
  for r in workdir_lib.read_metrics(wd):
    if "split" in r:
      continue
    wall += (r["step"] - last) / max(r["steps_per_sec"], 1e-9)
    last = r["step"]
    out.append({"step": r["step"], "wall_s": wall,
                "reward": r.get("reward") if "completion_length" in r
                else None,
                "completion_length": r.get("completion_length"),
                "empty_fraction": r.get("empty_fraction")})
  return out


def moving_average(values: Sequence[float], window: int = WINDOW
                   ) -> np.ndarray:
  """m_i = mean(values[max(0, i - window + 1) : i + 1]): the trailing mean,
  over fewer values at the start."""
  v = np.asarray(values, np.float64)
  return np.array([v[max(0, i - window + 1):i + 1].mean()
                   for i in range(len(v))])


def _rewarded(points):
  return [p for p in points if p["reward"] is not None]


def pilot_target(points: Sequence[dict], half_steps: int,
                 window: int = WINDOW) -> float:
  """The `window`-record moving average of the rollout reward at the last
  record at or before step `half_steps` (half the real budget: a pilot may
  run just that far)."""
  rewarded = _rewarded(points)
  ma = moving_average([p["reward"] for p in rewarded], window)
  upto = [i for i, p in enumerate(rewarded) if p["step"] <= half_steps]
  if not upto:
    raise ValueError(f"the pilot logged no reward by step {half_steps}.")
  return float(ma[upto[-1]])


def to_target(points: Sequence[dict], target: Optional[float],
              window: int = WINDOW) -> Tuple[Optional[int], Optional[float]]:
  """(steps, seconds) at the first record whose `window`-record moving
  average of the rollout reward is >= `target`; (None, None) if never.
  Its resolution is the logging interval: log every step or two."""
  rewarded = _rewarded(points)
  if not rewarded or target is None:
    return None, None
  hit = np.flatnonzero(moving_average([p["reward"] for p in rewarded],
                                      window) >= target)
  if not len(hit):
    return None, None
  p = rewarded[int(hit[0])]
  return int(p["step"]), float(p["wall_s"])


def curve_area(points: Sequence[dict], upto: Optional[int] = None,
               key: str = "reward") -> float:
  """The mean of `key` over training steps 0..upto (trapezoids between
  records, the first record held back to step 0): the area under the
  curve over its length, in the reward's units. Needs no target, and
  every record counts. `upto`: the last record's step by default; a run
  that stops earlier is not extrapolated (ValueError)."""
  pts = [(p["step"], p[key]) for p in points if p.get(key) is not None]
  if not pts:
    raise ValueError(f"no record has {key!r}.")
  upto = pts[-1][0] if upto is None else upto
  if pts[-1][0] < upto:
    raise ValueError(f"the curve ends at step {pts[-1][0]} < {upto}.")
  steps = np.array([0] + [s for s, _ in pts], np.float64)
  values = np.array([pts[0][1]] + [v for _, v in pts], np.float64)
  grid = np.unique(np.concatenate([steps[steps < upto], [upto]]))
  y = np.interp(grid, steps, values)
  area = np.sum((y[1:] + y[:-1]) / 2 * np.diff(grid))
  return float(area / upto) if upto > 0 else float(y[0])


# ------------------------------------------------------------ test files


def write_test(dest: str, data, texts: Sequence[str]) -> None:
  """`dest/test.jsonl`: {prompt, target, output} per item of an eval set
  (`data.keys`, and `data.items` where it has them), in order."""
  items = getattr(data, "items", None) or [{} for _ in data.keys]
  os.makedirs(dest, exist_ok=True)
  with open(os.path.join(dest, "test.jsonl"), "w") as f:
    for key, item, text in zip(data.keys, items, texts):
      f.write(json.dumps({"prompt": item.get("prompt", key),
                          "target": item.get("target", ""),
                          "output": text}) + "\n")


def run_test(wd: str, dest: str) -> None:
  """`dest/test.jsonl` of a finished run, from its own outputs file
  (`wd/outputs/test.tsv`; the items from its config's data, no weights
  loaded)."""
  data = state_lib.build_task(workdir_lib.load_config(wd)).eval_sets["test"]
  got = {}
  with open(os.path.join(wd, "outputs", "test.tsv"), encoding="utf-8") as f:
    for line in f:
      key, _, text = line.rstrip("\n").partition("\t")
      got[key] = text.replace("\\n", "\n").replace("\\t", "\t").replace(
          "\\r", "\r")
  write_test(dest, data, [got[k] for k in data.keys])


def read_test(dest: str) -> List[dict]:
  """The rows of `dest/test.jsonl`: [{prompt, target, output}], in order."""
  with open(os.path.join(dest, "test.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def show(dest: str, title: str, count: int = 20) -> None:
  """Prints the first `count` decoded test outputs of `dest/test.jsonl`
  (look at the outputs, not only the reward)."""
  print(f"--- {title}: {count} test outputs (prompt -> output | target)")
  for r in read_test(dest)[:count]:
    print(f"{r['prompt'][-40:]!r} -> {r['output']!r} | {r['target']!r}")
  sys.stdout.flush()


# ------------------------------------------------------------ statistics


def seed_level(deltas: Sequence[float], *, groups: Optional[Sequence] = None,
               resamples: int = 10_000, seed: int = 0) -> Dict[str, Any]:
  """A difference with the seed as the unit.

  deltas: one a - b per seed (paired: both arms of a seed share its keys).
  With n < 5 seeds: the mean and a Student t 95% interval,
  mean +- t_{0.975, n-1} s / sqrt(n), labelled underpowered (3 seeds give
  3 numbers; a bootstrap of them has 10 distinct resamples). With n >= 5
  and `groups` (per seed, (errors_a, errors_b, lengths) arrays over its
  items): a hierarchical bootstrap that resamples seeds, then items within
  each seed, of the pooled rate difference; without `groups`, the
  bootstrap of the per-seed deltas. p: two-sided (t test, or twice the
  smaller tail of the resamples).

  Returns {seeds, deltas, mean, ci95, p_value, method, underpowered}.
  """
  from scipy import stats
  d = np.asarray(deltas, np.float64)
  n = len(d)
  if n == 0:
    raise ValueError("seed_level: no seeds.")
  out = {"seeds": n, "deltas": d.tolist(), "mean": float(d.mean()),
         "underpowered": n < 5}
  if n < 5:
    if n == 1:
      return dict(out, ci95=[None, None], p_value=None, method="one seed")
    s = d.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * s / np.sqrt(n)
    p = (1.0 if s == 0 and d.mean() == 0 else 0.0 if s == 0 else
         float(stats.ttest_1samp(d, 0.0).pvalue))
    return dict(out, ci95=[float(d.mean() - half), float(d.mean() + half)],
                p_value=p, method="t interval over seeds")
  rng = np.random.default_rng(seed)
  picks = rng.integers(0, n, (resamples, n))
  if groups is None:
    boot = d[picks].mean(1)
    method = "bootstrap over seeds"
  else:
    groups = [tuple(np.asarray(x, np.float64) for x in g) for g in groups]
    boot = np.empty(resamples)
    for r in range(resamples):
      ea = eb = length = 0.0
      for s in picks[r]:
        a, b, m = groups[s]
        i = rng.integers(0, len(m), len(m))
        ea, eb, length = ea + a[i].sum(), eb + b[i].sum(), length + m[i].sum()
      boot[r] = (ea - eb) / max(length, 1e-12)
    method = "hierarchical bootstrap (seeds, then items)"
  lo, hi = np.percentile(boot, [2.5, 97.5])
  p = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
  return dict(out, ci95=[float(lo), float(hi)], p_value=float(p),
              method=method)


def _runs(dests: Dests) -> List[str]:
  return [dests] if isinstance(dests, str) else list(dests)


def paired_test(dest_a: Dests, dest_b: Dests) -> Dict[str, Any]:
  """System a vs b on the same test items (their test.jsonl files; a list
  of folders a side: the seeds, paired in order).

  Item level, pooled over the seeds: exact match with McNemar's exact p,
  byte CER (errors over the targets' bytes) with a paired bootstrap CI and
  p. Seed level (`seed_level`), the unit a claim rests on: the per-seed
  CER and exact-match deltas (a - b) with their interval.
  """
  runs_a, runs_b = _runs(dest_a), _runs(dest_b)
  if len(runs_a) != len(runs_b):
    raise ValueError(f"{len(runs_a)} runs of a, {len(runs_b)} of b: pair "
                     "them seed by seed.")
  per_seed = []
  for da, db in zip(runs_a, runs_b):
    a, b = read_test(da), read_test(db)
    if [r["prompt"] for r in a] != [r["prompt"] for r in b]:
      raise ValueError(f"{da} and {db} hold different test items.")
    per_seed.append((a, b))

  def errors(rows):
    return evaluate.word_errors(
        [tuple(evaluate.answer_bytes(r["output"])) for r in rows],
        [[tuple(evaluate.answer_bytes(r["target"]))] for r in rows])

  def right(rows):
    return np.array([evaluate.answer_bytes(r["output"]) ==
                     evaluate.answer_bytes(r["target"]) for r in rows])

  # Per seed (errors a, errors b, target bytes), pooled by concatenation.
  groups = []
  for a, b in per_seed:   # Same items, so b's target bytes are a's.
    (sa, _), (sb, m) = errors(a), errors(b)
    groups.append((sa, sb, m))
  ea, eb, n = (np.concatenate(x) for x in zip(*groups))
  rights = [(right(a), right(b)) for a, b in per_seed]
  right_a, right_b = (np.concatenate(x) for x in zip(*rights))
  boot = evaluate.paired_bootstrap(ea, eb, n)
  mc = evaluate.mcnemar(right_a, right_b)
  cer_deltas = [(sa.sum() - sb.sum()) / m.sum() for sa, sb, m in groups]
  exact_deltas = [ra.mean() - rb.mean() for ra, rb in rights]
  return {"items": len(ea), "seeds": len(per_seed),
          "exact_a": float(right_a.mean()), "exact_b": float(right_b.mean()),
          "mcnemar_p": mc["p_value"], "only_a_right": mc["only_a"],
          "only_b_right": mc["only_b"],
          "cer_a": float(ea.sum() / n.sum()),
          "cer_b": float(eb.sum() / n.sum()),
          "delta_cer": boot["delta"], "ci95": boot["ci95"],
          "p_cer": boot["p_value"],
          "seed_cer": seed_level(cer_deltas, groups=groups),
          "seed_exact": seed_level(exact_deltas)}


# ------------------------------------------------------ output diagnostics


def output_bytes(dest: str) -> Dict[str, Any]:
  """{output, target, empty}: the mean bytes of a system's test outputs and
  of the targets (`evaluate.answer_bytes`), and how many outputs are empty
  (a reward gamed by shorter answers shows here first)."""
  rows = read_test(dest)
  size = lambda s: len(evaluate.answer_bytes(s))
  return {"output": float(np.mean([size(r["output"]) for r in rows])),
          "target": float(np.mean([size(r["target"]) for r in rows])),
          "empty": int(sum(size(r["output"]) == 0 for r in rows))}


def answer_variety(dest: str) -> Dict[str, Any]:
  """{distinct, target_distinct, top: [output, count]}: the share of
  distinct test outputs (and of distinct targets) and the most common
  output. A reward paid for a formula (the same few answers whatever the
  prompt) shows as `distinct` falling and `top` growing."""
  rows = read_test(dest)
  key = lambda s: evaluate.answer_bytes(s).decode("utf-8")
  outputs = collections.Counter(key(r["output"]) for r in rows)
  top, count = outputs.most_common(1)[0]
  return {"distinct": len(outputs) / len(rows),
          "target_distinct": len({key(r["target"]) for r in rows})
                             / len(rows),
          "top": [top, count]}


def error_split(dest: str) -> Dict[str, float]:
  """{sub, ins, del}: a system's test errors split into substituted, extra
  and missing bytes (`evaluate.edit_operations`), each over the targets'
  bytes; they sum to its byte CER. CER gains that come from dropping
  uncertain letters show as `del` up and `sub` down."""
  rows = read_test(dest)
  ops = np.array([evaluate.edit_operations(evaluate.answer_bytes(r["output"]),
                                           evaluate.answer_bytes(r["target"]))
                  for r in rows])
  total = sum(len(evaluate.answer_bytes(r["target"])) for r in rows)
  return dict(zip(("sub", "ins", "del"), (ops.sum(0) / total).tolist()))


def holm(p_values: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
  """Holm-Bonferroni adjusted p-values of a family of tests ({name: p};
  None stays None and is not counted): sorted ascending, p_(i) x (m - i)
  (i from 0), made monotone, capped at 1. Reject at level a where the
  adjusted p < a: the family-wise error stays <= a."""
  named = sorted(((p, k) for k, p in p_values.items() if p is not None))
  m, out, running = len(named), {k: None for k in p_values}, 0.0
  for i, (p, k) in enumerate(named):
    running = max(running, min(1.0, p * (m - i)))
    out[k] = running
  return out


__all__ = ["WINDOW", "answer_variety", "curve", "curve_area", "error_split",
           "finished", "holm", "moving_average", "output_bytes", "paired_test",
           "pilot_target", "read_test", "run", "run_test", "seed_level", "show",
           "to_target", "write_test"]
