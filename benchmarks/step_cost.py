"""What an OCD step costs next to a CE step, side by side, in one run.

  python benchmarks/step_cost.py      # ~3 min on a 2-core CPU

The "equal compute" of experiments/compare.py's `ocd_scratch` arm rests on
this ratio: its steps are sized so that OCD's steps x this ratio match the
CE model's steps. Both steps are the G2P Transformer of experiments/g2p.py
at the branch batch (256): `ce` is the CE train step; `ocd_k1` is
`ocd_scratch`'s (one sample per word at temperature 1, OCD targets, alpha
1, no baseline), built by compare.py's own config function. The two are
timed in alternation (five rounds, each the median of several calls), so
drift in the machine hits both alike. Writes
benchmarks/results/step_cost.{json,md}.
"""

import argparse
import os
import sys

import jax
import numpy as np

ROOT = __file__.rsplit("/", 2)[0]
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
from benchmarks import common  # noqa: E402
import compare  # noqa: E402
from ir_jax import config as config_lib  # noqa: E402
from ir_jax import state as state_lib  # noqa: E402
from ir_jax import step as step_lib  # noqa: E402
from ir_jax.data import tasks  # noqa: E402


def arm_steps(batch: int):
  """{name: (jitted step, state, batch)} of the CE and OCD (K=1) steps."""
  args = argparse.Namespace(scratch_steps=700, branch_batch=batch, lr=3e-3,
                            tiny=False)
  configs = {"ce": config_lib.load(os.path.join(compare.EXPERIMENTS,
                                                "g2p.py")),
             "ocd_k1": compare.ocd_scratch_config("g2p", 0, args)}
  configs["ce"].batch_size = batch
  task = tasks.build(configs["ce"])
  out = {}
  for name, c in configs.items():
    config_lib.validate(c)
    model = state_lib.make_model(c, task)
    tx = state_lib.make_optimizer(c)
    state = state_lib.init_state(c, model, tx, task)
    data = jax.device_put({k: v[:batch] for k, v in task.train.items()})
    out[name] = (jax.jit(step_lib.make_train_step(c, model, tx)), state, data)
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  steps = arm_steps(args.batch)
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, (fn, state, data) in steps.items():
      times[name].append(common.timeit(fn, state, data, repeats=3,
                                       min_time=1.0))
  ratios = np.array(times["ocd_k1"]) / np.array(times["ce"])
  row = {"batch": args.batch,
         "ce_ms": 1e3 * float(np.median(times["ce"])),
         "ocd_k1_ms": 1e3 * float(np.median(times["ocd_k1"])),
         "ocd_over_ce": float(np.median(ratios)),
         "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max())}
  md = ["Machine: " + ", ".join(f"{k} {v}" for k, v in
                                common.machine().items()),
        f"OCD (K = 1) step over CE step, G2P Transformer, {args.rounds} "
        "alternating rounds (median, min, max of the per-round ratios):",
        "", common.markdown_table([row], list(row))]
  common.write("step_cost", {"machine": common.machine(), "row": row,
                             "rounds": times}, "\n".join(md))
  return row


if __name__ == "__main__":
  main()
