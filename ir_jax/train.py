"""train_and_evaluate(config, workdir): the one training loop.

config -> task (data) + model + objective -> one jitted step -> metrics and
checkpoints. Running the same command on the same workdir resumes from the
latest checkpoint, data iterator included, so the resumed run reproduces the
uninterrupted one bit for bit on CPU.

The pieces live one floor down: `config` (schema, every check), `state`
(model, optimizer, sharded TrainState), `objectives` (the losses), `step`
(the update), `workdir` (metrics, checkpoints, run files), `evaluate`
(PER/WER). Prompt search is not training: `ir_jax.prompt_search`.
"""

import functools
import os
import signal
import sys
import time
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ir_jax import evaluate, parallel, state as state_lib, step as step_lib
from ir_jax import workdir as workdir_lib
from ir_jax.data import tasks
from ir_jax.models import prompting


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`, then evaluates every eval set.

  The loop, in order: set-up (every config check runs before a device is
  touched; `workdir` must hold this config's run or nothing), the state
  created sharded on the config's mesh (from scratch, `config.init_from`,
  or a Hugging Face / GGUF checkpoint in `config.model.hf_path`), restored
  from the newest readable checkpoint in `workdir` if there is one (a run
  resumes bit for bit), then `config.total_steps` jitted steps (CE, RL or
  both as the config says) with at most `MAX_IN_FLIGHT` steps dispatched
  ahead of the last finished one, so the progress bar counts finished
  steps. Every `log_every` steps a record goes to `workdir/metrics.jsonl`
  and TensorBoard; every `eval_every` the dev sets are decoded and scored;
  every `checkpoint_every` (and at the end) an orbax checkpoint is saved.

  Args:
    config: a validated config (`ir_jax.config.load`; the fields are
      documented in ir_jax/config.py).
    workdir: a local path or gs:// URL; created if missing.

  Returns:
    {split: record} of the final evaluation (a record holds `step` and the
    task's scores, e.g. per, wer, exact_match, cer; decoded outputs go to
    `workdir/outputs/<split>.tsv`), or {"preempted_at": step} after a
    SIGTERM: the checkpoint of that step is written (within about
    MAX_IN_FLIGHT steps of the signal) and the same call resumes.

  Example (what `ir-jax train --config experiments/g2p.py:tiny --workdir
  /tmp/g2p` runs; a second call restores the last checkpoint and only
  evaluates):

    from ir_jax import config as config_lib, train
    c = config_lib.load("experiments/g2p.py:tiny")
    print(train.train_and_evaluate(c, "/tmp/g2p")["test"]["per"])
  """
  # ------------------------------------------------------------ Set-up
  # Every config check runs here, before anything touches a device.
  if config.prompt.mode == "search":
    raise ValueError("config.prompt.mode='search' trains nothing: run "
                     "ir_jax.prompt_search.search_and_evaluate (`ir-jax "
                     "train` dispatches to it).")
  task, model, tx, mesh, rules = state_lib.setup(config)
  soft_prompt = config.prompt.mode == "soft"
  workdir_lib.check_compatible(workdir, config, task)
  if soft_prompt:
    workdir_lib.check_frozen(config.init_from, config, task)
  lead = jax.process_index() == 0
  if lead:
    workdir_lib.write_run_files(workdir, config, task)
    from ir_jax.kernels import dispatch
    with jax.set_mesh(mesh):  # The platform the step compiles for.
      print(dispatch.describe(config.objective.soft_ed_implementation),
            file=sys.stderr)
    if any(task.report.values()):
      print(f"Data report (skipped / replaced, never silent): {task.report}",
            file=sys.stderr)
  else:
    os.makedirs(workdir, exist_ok=True)

  # The rules also drive the models' activation constraints; the manager
  # is closed (pending saves finished) however the run ends.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), \
      workdir_lib.checkpoint_manager(workdir, config) as manager:
    # ---------------------------------------------- Model & optimizer state
    # Created already sharded: nothing is materialised on one device first.
    _, shardings = state_lib.state_shardings(config, model, tx, task, mesh)
    ref_params = None
    if config.model.get("hf_path") and not config.init_from:
      state, ref_params = _start_from_hf(config, tx, task, model, mesh, rules,
                                         shardings)
    else:
      state = jax.jit(functools.partial(state_lib.init_state, config, model,
                                        tx, task), out_shardings=shardings)()
    if config.init_from:
      state, ref_params = _start_from(config, state, tx, task, shardings)

    # ----------------------------------------------------- Input pipeline
    buckets = None
    if config.data.length_buckets:
      buckets = tasks.LengthBuckets(task.train, config.batch_size,
                                    config.seed, config.data.length_buckets,
                                    task.pad_id)
      if lead:
        print(f"Length buckets (source, target widths): {buckets.shapes}; "
              f"{100 * buckets.padded_fraction:.0f}% of the unbucketed slots",
              file=sys.stderr)
    dataset = tasks.train_dataset(task.train, config.batch_size, config.seed,
                                  config.total_steps, jax.process_index(),
                                  jax.process_count(), buckets)
    iterator = iter(dataset.to_iter_dataset())

    # ---------------------------------------------------- Load checkpoint
    # After the init_from params: a resumed run continues its own state.
    # A LoRA run on a checkpoint saves its adapters only (the base is
    # model.hf_path, loaded above).
    restored, start = workdir_lib.restore_checkpoint(
        manager, state_lib.checkpointed(config, state), iterator)
    state = state_lib.from_checkpointed(config, restored, state)
    if start is not None:
      if lead:
        print(f"Resumed from step {start} in {workdir}.", file=sys.stderr)
    step = int(state.step)

    # -------------------------------------------------------- Update step
    # The byte-level rewards' table (char_*) is an argument, not a constant.
    byte_table = state_lib.byte_table(config, task, model)
    if byte_table is not None:
      byte_table = jax.device_put(byte_table, parallel.replicated(mesh))
    train_step = jax.jit(
        step_lib.make_train_step(config, model, tx),
        in_shardings=(shardings, parallel.batch_sharding(mesh),
                      None if ref_params is None else shardings.params,
                      None if byte_table is None else
                      parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=(0,))

    # --------------------------------------------------------- Train loop
    writer = workdir_lib.MetricWriter(workdir, enabled=lead)
    bar = _progress(config.total_steps, step)
    pending, t_log = [], time.time()
    collapse = _LengthCollapse(config.rl.rewards, enabled=lead)
    # Steps dispatched and not yet seen to finish: at most MAX_IN_FLIGHT,
    # so the bar counts finished steps (its rate and ETA are true ones),
    # no queue of steps hides behind a log step, and a SIGTERM's
    # checkpoint waits for at most that many steps.
    in_flight = _InFlight(bar)

    def save():
      workdir_lib.save_checkpoint(manager, step,
                                  state_lib.checkpointed(config, state),
                                  iterator)

    try:
      with _Preemption() as preemption:
        while step < config.total_steps:
          if preemption.requested:
            in_flight.wait(0)
            save()
            if lead:
              print(f"SIGTERM: saved step {step} in {workdir}; rerun the "
                    "same command to resume.", file=sys.stderr)
            # Closed now, not at interpreter exit: tensorboardX's exit hook
            # then starts a thread and prints a traceback on shutdown.
            writer.close()
            return {"preempted_at": step}
          batch = parallel.global_batch(next(iterator), mesh)
          in_flight.wait(MAX_IN_FLIGHT - 1)   # Step n - 2 has finished.
          state, metrics = train_step(state, batch, ref_params, byte_table)
          step += 1
          in_flight.add(metrics["loss"])
          pending.append(metrics)
          if step % config.log_every == 0 or step == config.total_steps:
            in_flight.wait(0)
            pending = jax.device_get(pending)
            means = jax.tree.map(lambda *x: float(np.mean(x)), *pending)
            for k in step_lib.GREEDY_METRICS:  # Computed on this step only.
              if k in pending[-1]:
                means[k] = float(pending[-1][k])
            means["skipped_nonfinite"] = int(state.skipped)
            means["steps_per_sec"] = len(pending) / max(time.time() - t_log,
                                                        1e-9)
            writer.write({"step": step, **means})
            collapse.update(means)
            bar.set_postfix(loss=f"{means['loss']:.3f}",
                            reward=f"{means['reward']:.3f}",
                            **({"greedy": f"{means['greedy_reward']:.3f}"}
                               if "greedy_reward" in means else {}))
            pending, t_log = [], time.time()
            _check_finite(state, step, config)
          if step % config.eval_every == 0 and step < config.total_steps:
            in_flight.wait(0)
            evaluate.evaluate_and_log(model, state.params, task,
                                      dev_splits(task), config.eval_batch_size,
                                      step, writer, **_decoding(config))
          if step % config.checkpoint_every == 0 or step == config.total_steps:
            in_flight.wait(0)
            save()
    finally:
      bar.close()  # Saves have finished: each one waits for itself.

    # --------------------------------------------------------- Final eval
    results = evaluate.evaluate_and_log(
        model, state.params, task, tuple(task.eval_sets),
        config.eval_batch_size, step, writer,
        outputs_dir=os.path.join(workdir, "outputs"), **_decoding(config))
    if soft_prompt and lead:
      _save_soft_prompt(config, workdir, state.params, step)
    writer.close()
  return results


# ------------------------------------------------------------- helpers


def _start_from(config, state, tx, task, shardings):
  """(state, KL reference params or None) with the params of the run in
  `config.init_from`: all of them, or the frozen model plus a fresh soft
  prompt. The optimizer starts fresh; the cosine reward's frozen table is
  the loaded embedding."""
  if config.prompt.mode == "soft":
    frozen = workdir_lib.restore_params(config.init_from, {
        k: v for k, v in state.params.items() if k != "prompt"})
    frozen["prompt"] = prompting.init_soft_prompt(
        config, task, frozen["embed"]["embedding"])
    loaded = jax.device_put(frozen, shardings.params)
  else:
    loaded = jax.device_put(
        workdir_lib.restore_params(config.init_from, state.params),
        shardings.params)
  state = state.replace(
      params=loaded,
      opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(loaded),
      reward_embeddings=jax.device_put(jnp.copy(loaded["embed"]["embedding"]),
                                       shardings.reward_embeddings))
  ref_params = None
  if config.rl.mode and config.rl.kl_weight:
    ref_params = jax.tree.map(jnp.copy, loaded)
  return state, ref_params


def _start_from_hf(config, tx, task, model, mesh, rules, shardings):
  """(state, KL reference or None) on the weights of the checkpoint
  `model.hf_path` (a Hugging Face directory or a `.gguf` file).

  The order keeps one copy of the weights: 1. each tensor is read and
  placed straight into its sharding, in the params' dtype (float32 master
  weights are never rounded through bf16); 2. the rest of the state
  (adapters, optimizer moments) is initialised around them in one jit
  that takes the loaded params donated, so no random base exists. A full
  fine-tune with a KL term keeps a frozen copy as its reference; a LoRA
  run needs none (the step turns the adapters off)."""
  from ir_jax import pretrained
  abstract = state_lib.abstract_params(config, model, tx, task)
  dtype = jax.tree.leaves(abstract)[0].dtype
  loaded = pretrained.load_params(config.model.hf_path, model, mesh=mesh,
                                  rules=rules, dtype=dtype)
  state = jax.jit(
      lambda base, rng: state_lib.init_state(config, model, tx, task,
                                             base=base, rng=rng),
      out_shardings=shardings, donate_argnums=0)(
          loaded, jax.random.PRNGKey(config.seed))
  ref_params = None
  if config.rl.mode and config.rl.kl_weight and \
      not state_lib.lora_targets(config):
    ref_params = jax.tree.map(jnp.copy, state.params)
  return state, ref_params


class _LengthCollapse:
  """One warning when `records` consecutive metric records have more than
  `share` of their samples empty (EOS first): the reward is being gamed by
  answering nothing (an unbounded negative distance does exactly that)."""

  def __init__(self, reward: str, enabled: bool, records: int = 20,
               share: float = 0.9):
    self.reward, self.enabled = reward, enabled
    self.records, self.share, self.run, self.warned = records, share, 0, False

  def update(self, means: Dict[str, float]) -> None:
    if "empty_fraction" not in means:
      return
    self.run = self.run + 1 if means["empty_fraction"] > self.share else 0
    if self.run >= self.records and not self.warned and self.enabled:
      self.warned = True
      print(f"Warning: {self.records} consecutive records with more than "
            f"{100 * self.share:.0f}% empty samples (EOS first): the reward "
            f"rl.rewards={self.reward!r} is being maximised by answering "
            "nothing. Use a bounded reward (char_error) or check the outputs.",
            file=sys.stderr)


def _check_finite(state, step: int, config) -> None:
  if int(state.nonfinite) >= config.max_nonfinite:
    raise FloatingPointError(
        f"{int(state.nonfinite)} consecutive non-finite losses at step "
        f"{step} (limit config.max_nonfinite={config.max_nonfinite}); lower "
        "optim.learning_rate or check the data. The last finite params are "
        "in the latest checkpoint.")


def _save_soft_prompt(config, workdir: str, params, step: int) -> None:
  params = jax.device_get(params)
  workdir_lib.save_prompt(workdir, params["prompt"], {
      "kind": "soft", "length": int(config.prompt.length),
      "init": config.prompt.init, "fingerprint": workdir_lib.fingerprint(params),
      "frozen_from": os.path.abspath(config.init_from), "step": step,
      "data": config.data.to_dict()})


def dev_splits(task):
  """Eval sets scored during training: "dev" and the other directions'."""
  return tuple(s for s in task.eval_sets if s.split("_")[0] == "dev")


# Train steps dispatched ahead of the newest finished one (see _InFlight).
MAX_IN_FLIGHT = 2


class _InFlight:
  """The dispatched steps not yet seen to finish, oldest first; the bar
  advances when one is seen to finish. `wait(n)` blocks until at most n
  remain: with n = MAX_IN_FLIGHT - 1 before each dispatch, step n waits
  for step n - 2, which keeps the device fed (one step queued behind the
  running one) while the host never runs more than two steps ahead."""

  def __init__(self, bar):
    self._bar, self._steps = bar, []

  def add(self, marker) -> None:
    """`marker`: an array the step outputs (its loss)."""
    self._steps.append(marker)

  def wait(self, at_most: int) -> None:
    while len(self._steps) > at_most:
      jax.block_until_ready(self._steps.pop(0))
      self._bar.update(1)


def _progress(total, initial):
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, file=sys.stderr, unit="step",
              dynamic_ncols=True, disable=jax.process_index() != 0)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks before each step."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, no preemption.
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _decoding(config):
  """Eval decoding settings (`config.eval`): greedy or beam search."""
  return {"beam": int(config.eval.beam_size),
          "length_penalty": float(config.eval.length_penalty)}
