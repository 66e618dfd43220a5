"""ir_jax.step: non-finite steps leave the state untouched and are counted;
the loop stops after `max_nonfinite` of them."""

import os

import jax
import jax.numpy as jnp
import optax
import numpy as np
import pytest

from ir_jax import state as state_lib
from ir_jax import step as step_lib
from ir_jax import train
from helpers import levenshtein, read, tiny


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


# ------------------------------------------------------------------ GRPO


def _grpo(**overrides):
  c = tiny(**{"rl.mode": "grpo", "objective.alpha": 1.0, "rl.num_samples": 2,
              **overrides})
  task, model, tx, _, _ = state_lib.setup(c)
  batch = {k: v[:c.batch_size] for k, v in task.train.items()}
  return c, model, tx, state_lib.init_state(c, model, tx, task), batch


def test_grpo_inner_steps_reuse_one_rollout():
  from ir_jax import objectives
  warm = {"optim.warmup_steps": 1}  # Full learning rate from step 1.
  c, model, tx, state, batch = _grpo(**{"rl.inner_steps": 2, **warm})
  # Past step 0, whose warm-up learning rate is 0.
  once_config = _grpo(**warm)[0]
  state, _ = jax.jit(step_lib.make_train_step(once_config, model, tx))(
      state, batch)
  after, metrics = jax.jit(step_lib.make_train_step(c, model, tx))(state,
                                                                   batch)
  # By hand: one rollout, two updates on it (old log-probs held fixed).
  rng = jax.random.fold_in(state.rng, state.step)
  rollout_rng, update_rng = jax.random.split(rng)
  rollout, _ = jax.jit(lambda p: objectives.grpo_rollout(
      c, model, p, batch, rollout_rng))(state.params)

  @jax.jit
  def update(params, opt_state, key):
    logp, _ = objectives.policy_logprobs(model, params, rollout["samples"],
                                         c.rl.temperature)
    mask = objectives.token_mask(rollout["samples"]["target_lengths"],
                                 logp.shape[1])
    drift = jnp.where(mask, jnp.abs(logp - rollout["old_logprobs"]), 0).max()
    (_, m), grads = jax.value_and_grad(
        lambda p: objectives.grpo_update_loss(c, model, p, batch, rollout,
                                              key, alpha=1.0),
        has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            m["ratio_mean"], drift)

  params, opt_state = state.params, state.opt_state
  ratios, drift = [], []
  for key in jax.random.split(update_rng, 2):
    params, opt_state, ratio, d = update(params, opt_state, key)
    ratios.append(float(ratio))
    drift.append(float(d))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
               after.params, params)
  # The first update is on-policy (old log-probs = the sampler's, equal to
  # the learner's up to rounding); the second sees the moved policy
  # against the same old log-probs.
  assert ratios[0] == pytest.approx(1.0, abs=1e-5) and drift[0] < 1e-5
  assert drift[1] > 1e-3
  once, _ = jax.jit(step_lib.make_train_step(
      once_config, model, tx))(state, batch)
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       after.params, once.params)
  assert max(jax.tree.leaves(moved)) > 1e-3  # ~ the learning rate.
  assert int(after.step) == 2
  for key in ("loss", "pg_loss", "reward", "clip_fraction", "grad_norm",
              "reward/edit_distance"):
    assert np.isfinite(float(metrics[key])), key


@pytest.mark.slow
def test_grpo_resumes_bit_exact(tmp_path, monkeypatch):
  from ir_jax.data import tasks
  c = lambda: _grpo(**{"total_steps": 6, "checkpoint_every": 3,
                       "log_every": 1, "eval_every": 100,
                       "rl.inner_steps": 2})[0]
  full = tmp_path / "full"
  train.train_and_evaluate(c(), str(full))
  real = tasks.train_dataset

  def crashing(*args, **kwargs):
    count = {"n": 0}

    def fail_after(batch):
      count["n"] += 1
      if count["n"] > 4:
        raise KeyboardInterrupt("simulated crash")
      return batch
    return real(*args, **kwargs).map(fail_after)

  monkeypatch.setattr(tasks, "train_dataset", crashing)
  part = tmp_path / "part"
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(c(), str(part))
  monkeypatch.setattr(tasks, "train_dataset", real)
  train.train_and_evaluate(c(), str(part))
  rows = lambda wd: {r["step"]: (r["loss"], r["reward"])
                     for r in read(wd / "metrics.jsonl") if "split" not in r}
  a, b = rows(full), rows(part)
  assert a[5] == b[5] and a[6] == b[6]


def test_a_user_reward_trains_by_import_path(tmp_path):
  c = _grpo(**{"rl.rewards": "edit_distance:1.0,helpers.position_match:0.5,"
               "exact_match:1.0", "total_steps": 3, "log_every": 1,
               "eval_every": 100})[0]
  train.train_and_evaluate(c, str(tmp_path / "run"))
  row = [r for r in read(tmp_path / "run" / "metrics.jsonl")
         if "split" not in r][-1]
  for key in ("reward/edit_distance", "reward/helpers.position_match",
              "reward/exact_match"):
    assert np.isfinite(row[key]), key
  assert row["reward/helpers.position_match"] >= 0
  assert 0 <= row["reward/exact_match"] <= 1


@pytest.mark.parametrize("variant", ["tiny", "tiny,lstm"])
def test_grpo_trains_both_model_kinds(variant):
  """A GRPO iteration (rollout with in-loop rewards, k3 KL to the start,
  two inner updates) moves the params of the Transformer and the LSTM,
  with no update skipped."""
  from ir_jax import config as config_lib
  from helpers import ROOT
  c = config_lib.load(os.path.join(ROOT, f"experiments/g2p_rl.py:grpo,"
                                         f"{variant}"))
  c = config_lib.apply_overrides(c, ["rl.inner_steps=2", "rl.kl_weight=0",
                                     "optim.warmup_steps=1"])
  task, model, tx, _, _ = state_lib.setup(c)
  c.rl.kl_weight = 0.04   # The reference: the start (no init_from run here).
  batch = {k: v[:c.batch_size] for k, v in task.train.items()}
  start = state_lib.init_state(c, model, tx, task)
  step = jax.jit(step_lib.make_train_step(c, model, tx))
  state = start
  for _ in range(2):
    state, metrics = step(state, batch, start.params)
  assert int(state.skipped) == 0
  for key in ("loss", "grad_norm", "kl", "reward"):
    assert np.isfinite(float(metrics[key])), key
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       state.params, start.params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_every_objective_logs_the_greedy_reward_of_its_batch(tmp_path):
  """The step returns the greedy outputs' exact reward on log steps (equal
  to a plain-Python edit distance of `decode.generate`'s outputs) and zeros
  on the others; the loop writes it on every log line."""
  from ir_jax import decode
  c = tiny()
  c.log_every = 2
  task, model, tx, _, _ = state_lib.setup(c)
  batch = {k: jnp.asarray(v[:c.batch_size]) for k, v in task.train.items()}
  train_step = jax.jit(step_lib.make_train_step(c, model, tx))
  state, metrics = train_step(state_lib.init_state(c, model, tx, task), batch)
  assert float(metrics["greedy_reward"]) == 0.0  # Step 1: not logged.
  state, metrics = train_step(state, batch)
  tokens, lengths = decode.generate(model, {"params": state.params},
                                    batch["source"],
                                    max_len=batch["target"].shape[1])
  eds, acc = [], []
  for y, n, t, m in zip(np.asarray(tokens), np.asarray(lengths),
                        np.asarray(batch["target"]),
                        np.asarray(batch["target_lengths"])):
    ed = levenshtein(list(y[:n]), list(t[:m]))
    eds.append(-ed / max(m - 1, 1))
    acc.append(ed == 0)
  np.testing.assert_allclose(float(metrics["greedy_reward"]), np.mean(eds),
                             rtol=1e-5)
  assert float(metrics["greedy_exact_match"]) == pytest.approx(np.mean(acc))
  assert float(metrics["greedy_reward"]) < 0  # An untrained model errs.
  train.train_and_evaluate(c, str(tmp_path / "run"))
  rows = [r for r in read(tmp_path / "run" / "metrics.jsonl")
          if "split" not in r]
  assert rows and all(r["greedy_reward"] < 0 for r in rows)
  assert all(0 <= r["greedy_exact_match"] <= 1 for r in rows)
