"""ir_jax.step: non-finite steps leave the state untouched and are counted;
the loop stops after `max_nonfinite` of them."""

import jax
import numpy as np
import pytest

from ir_jax import state as state_lib
from ir_jax import step as step_lib
from ir_jax import train
from helpers import read, tiny


def test_a_nonfinite_step_changes_nothing_but_the_counters():
  c = tiny()
  task, model, tx, _, _ = state_lib.setup(c)
  batch = {k: v[:c.batch_size] for k, v in task.train.items()}
  train_step = jax.jit(step_lib.make_train_step(c, model, tx))
  state, _ = train_step(state_lib.init_state(c, model, tx, task), batch)
  # A NaN weight makes the loss and every gradient NaN.
  kernel = state.params["logits"]["kernel"]
  poisoned = state.replace(params=dict(state.params, logits={
      "kernel": kernel.at[0, 0].set(np.nan)}))
  after, metrics = train_step(poisoned, batch)
  assert not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, after.params, poisoned.params)
  jax.tree.map(np.testing.assert_array_equal, after.opt_state,
               poisoned.opt_state)
  assert int(after.nonfinite) == 1 and int(after.skipped) == 1
  assert int(after.step) == int(poisoned.step) + 1
  healed, metrics = train_step(after.replace(params=state.params), batch)
  assert np.isfinite(float(metrics["loss"]))
  assert int(healed.nonfinite) == 0 and int(healed.skipped) == 1


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
  c = tiny(**{"optim.learning_rate": 1e30, "optim.grad_clip": 1e30,
              "max_nonfinite": 3, "log_every": 1, "total_steps": 12})
  with pytest.raises(FloatingPointError, match="non-finite"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  records = read(tmp_path / "run" / "metrics.jsonl")
  assert records[-1]["skipped_nonfinite"] >= 3


def test_alpha_of_a_step():
  c = tiny(**{"objective.alpha": 0.5, "objective.alpha_schedule": "warmup",
              "objective.alpha_warmup_steps": 10})
  task, model, tx, _, _ = state_lib.setup(c)
  state = jax.eval_shape(lambda: state_lib.init_state(c, model, tx, task))
  alpha_of = step_lib.make_alpha_fn(c.objective)
  assert float(alpha_of(state.replace(step=np.int32(5)))) == pytest.approx(0.25)
  c.objective.alpha_schedule = "adaptive"
  controller = {"alpha": np.float32(0.7)}
  assert float(step_lib.make_alpha_fn(c.objective)(
      state.replace(controller=controller))) == pytest.approx(0.7)
