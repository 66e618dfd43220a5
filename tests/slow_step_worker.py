"""Subprocess helper for tests/test_train.py (not a test module).

  python tests/slow_step_worker.py WORKDIR COUNTER_FILE SECONDS

Trains experiments/g2p.py:tiny for many steps with each step slowed down
on the device side (a host callback that sleeps SECONDS, then writes the
number of finished steps to COUNTER_FILE), logging and checkpointing only
at the end: what a slow real-LLM step looks like to the loop.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  workdir, counter, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
  import jax
  import numpy as np
  from ir_jax import config as config_lib
  from ir_jax import step as step_lib
  from ir_jax import train
  finished = [0]

  def slow(loss):
    time.sleep(seconds)
    finished[0] += 1
    with open(counter, "w") as f:
      f.write(str(finished[0]))
    return np.asarray(loss)

  original = step_lib.make_train_step

  def make_slow_step(*args, **kwargs):
    step = original(*args, **kwargs)

    def slowed(*a):
      state, metrics = step(*a)
      loss = jax.pure_callback(slow, jax.ShapeDtypeStruct((), np.float32),
                               metrics["loss"])
      return state, dict(metrics, loss=loss)
    return slowed

  step_lib.make_train_step = make_slow_step
  c = config_lib.load("experiments/g2p.py:tiny")
  c.total_steps = c.log_every = c.checkpoint_every = c.eval_every = 10_000
  results = train.train_and_evaluate(c, workdir)
  print(f"preempted_at={results.get('preempted_at')}", flush=True)


if __name__ == "__main__":
  main()
