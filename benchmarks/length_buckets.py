"""Length-bucketed batches vs full-width batches, side by side, in one run.

  python benchmarks/length_buckets.py      # ~4 min on a 2-core CPU

The main job's train step (experiments/g2p.py: B=256, source 18 + target
18 slots; Transformer and LSTM) on the same stream of training items, once
as full-width batches and once as `data.length_buckets=3` batches (each cut
to its length class's widths, `ir_jax.data.tasks.LengthBuckets`). Every
class shape is compiled first (the compile seconds are reported: a run pays
them once per class); then rounds alternate the two pipelines over the
same number of batches, and the medians give ms/step and the ratio.
Writes benchmarks/results/length_buckets.{json,md}.
"""

import functools
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import config as config_lib  # noqa: E402
from ir_jax import state as state_lib  # noqa: E402
from ir_jax import step as step_lib  # noqa: E402
from ir_jax.data import tasks  # noqa: E402

BATCHES = 24     # Per round and pipeline.
ROUNDS = 3


def _step(config, task):
  """(jitted train step without the greedy-reward log, a fresh state)."""
  model = state_lib.make_model(config, task)
  tx = state_lib.make_optimizer(config)
  state = jax.jit(functools.partial(state_lib.init_state, config, model, tx,
                                    task))()
  return jax.jit(step_lib.make_train_step(config, model, tx)), state


def _run(step, state, batches):
  t0 = time.perf_counter()
  for b in batches:
    state, metrics = step(state, b, None)
  jax.block_until_ready(metrics)
  return state, (time.perf_counter() - t0) / len(batches)


def measure(variant: str, k: int = 3):
  config = config_lib.load(f"experiments/g2p.py{variant}")
  config.log_greedy_reward = False
  task = tasks.build(config)
  plan = tasks.LengthBuckets(task.train, config.batch_size, config.seed, k,
                             task.pad_id)
  full = tasks.train_dataset(task.train, config.batch_size, config.seed,
                             BATCHES * ROUNDS)
  cut = tasks.train_dataset(task.train, config.batch_size, config.seed,
                            BATCHES * ROUNDS, buckets=plan)
  step, state = _step(config, task)
  # One compile per shape: each class's first batch, and a full-width one.
  first = {}
  for i, (c, _) in enumerate(plan.epoch(0)):
    first.setdefault(c, i)
  warm = [plan.batch(i) for i in first.values()] + [full[0]]
  compile_s = {}
  for batch in warm:
    shape = f"{batch['source'].shape[1]}x{batch['target'].shape[1]}"
    t0 = time.perf_counter()
    state, m = step(state, batch, None)
    jax.block_until_ready(m)
    compile_s.setdefault(shape, time.perf_counter() - t0)
  times = {"full": [], "bucketed": []}
  for r in range(ROUNDS):
    rows = range(r * BATCHES, (r + 1) * BATCHES)
    for name, ds in (("full", full), ("bucketed", cut)):
      state, t = _run(step, state, [ds[i] for i in rows])
      times[name].append(t)
  slots = lambda ds: np.mean([ds[i]["source"].shape[1] +
                              ds[i]["target"].shape[1]
                              for i in range(BATCHES * ROUNDS)])
  full_ms = 1e3 * float(np.median(times["full"]))
  cut_ms = 1e3 * float(np.median(times["bucketed"]))
  saved = (full_ms - cut_ms) / 1e3
  extra_compile = sum(compile_s.values()) - compile_s[
      f"{task.source_len}x{task.target_len}"]
  return {"model": config.model.kind, "batch": config.batch_size,
          "shapes": len(plan.shapes),
          "slots_full": float(slots(full)), "slots_bucketed": float(
              slots(cut)),
          "ms_full": full_ms, "ms_bucketed": cut_ms,
          "speedup": full_ms / cut_ms,
          "compile_s_per_shape": float(np.mean(list(compile_s.values()))),
          "extra_compile_s": extra_compile,
          "break_even_steps": extra_compile / saved if saved > 0 else
          float("inf")}


def main():
  rows = [measure(""), measure(":lstm")]
  payload = {"machine": common.machine(), "length_buckets": 3,
             "batches": BATCHES * ROUNDS, "rows": rows}
  table = common.markdown_table(rows, [
      "model", "batch", "shapes", "slots_full", "slots_bucketed", "ms_full",
      "ms_bucketed", "speedup", "compile_s_per_shape", "extra_compile_s",
      "break_even_steps"])
  m = payload["machine"]
  common.write("length_buckets", payload,
               f"Length-bucketed vs full-width batches, main-job train step "
               f"(`python benchmarks/length_buckets.py`, {m['date']}, "
               f"{m['cpu_count']} CPU cores, jax {m['jax']}):\n\n" + table)


if __name__ == "__main__":
  main()
