"""The pipeline end to end on the `tiny` config: CLI, outputs, exact resume."""

import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator)

from ir_jax import cli, evaluate
from ir_jax import config as config_lib
from ir_jax import train
from ir_jax import workdir as workdir_lib
from ir_jax.data import tasks
from helpers import ROOT, read, tiny

CONFIG = "experiments/g2p.py:tiny"


@pytest.fixture(autouse=True)
def _chdir(monkeypatch):
  monkeypatch.chdir(ROOT)


def latest_params(workdir):
  _, _, _, params = workdir_lib.load_run(str(workdir))
  return params


@pytest.mark.slow
def test_cli_train_eval_generate_plot(tmp_path, capsys):
  wd = str(tmp_path / "run")
  assert cli.main(["train", "--config", CONFIG, "--workdir", wd,
                   "--config.objective.alpha=0.5"]) == 0
  out = capsys.readouterr().out
  assert "test: PER" in out and "TensorBoard" in out
  records = read(os.path.join(wd, "metrics.jsonl"))
  steps = [r for r in records if "split" not in r]
  assert [r["step"] for r in steps] == [5, 10, 15, 20]
  for key in ("loss", "ce", "soft_ed", "cosine", "reward", "alpha",
              "token_accuracy", "grad_norm"):
    assert np.isfinite(steps[-1][key])
  assert steps[-1]["soft_ed"] > 0
  evals = [r for r in records if "split" in r]
  assert {r["split"] for r in evals} == {"dev", "test"}
  assert all(0 <= r["per"] and 0 <= r["wer"] <= 1 for r in evals)
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert os.path.exists(os.path.join(wd, "config.json"))
  # TensorBoard's own reader finds the scalars and the sample predictions.
  events = EventAccumulator(os.path.join(wd, "tensorboard"),
                            size_guidance={"scalars": 0, "tensors": 0})
  events.Reload()
  tags = events.Tags()
  for tag in ("train/loss", "train/soft_ed", "train/reward", "dev/per",
              "dev/wer", "test/per"):
    assert tag in tags["scalars"], tag
  assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
  assert any(t.startswith("dev/samples") for t in tags["tensors"])

  assert cli.main(["eval", "--workdir", wd, "--split", "dev"]) == 0
  assert "dev: PER" in capsys.readouterr().out
  assert read(os.path.join(wd, "metrics.jsonl"))[-1]["split"] == "dev"

  # The final eval's outputs, one `ir-jax generate` line per item.
  task = tasks.build(config_lib.from_json(os.path.join(wd, "config.json")))
  for split in ("dev", "test"):
    saved = evaluate.read_outputs(os.path.join(wd, "outputs", f"{split}.tsv"))
    assert list(saved) == task.eval_sets[split].keys
    rates = evaluate.error_rates([saved[k] for k in saved],
                                 task.eval_sets[split].references)
    final = [r for r in evals if r["split"] == split][-1]
    assert rates["per"] == pytest.approx(final["per"])

  assert cli.main(["generate", "--workdir", wd, "hello", "world"]) == 0
  lines = capsys.readouterr().out.strip().split("\n")
  assert [l.split("\t")[0] for l in lines] == ["hello", "world"]
  vocab = set(tasks.build(config_lib.from_json(
      os.path.join(wd, "config.json"))).vocab.symbols)
  for line in lines:
    phones = line.split("\t")[1].split()
    assert all(p in vocab and not p[-1].isdigit() for p in phones)

  assert cli.main(["plot", "--workdir", wd]) == 0
  for name in ("loss.png", "reward.png", "eval.png"):
    assert os.path.getsize(os.path.join(wd, name)) > 1000


@pytest.mark.slow
@pytest.mark.smoke
def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
  # Length-bucketed batches (full-width ones resume in test_workdir's and
  # test_parallel's resume tests).
  config = lambda: tiny(**{"data.length_buckets": 2})
  full = tmp_path / "full"
  train.train_and_evaluate(config(), str(full))

  # Crash after step 12: the checkpoint of step 10 survives.
  real = tasks.train_dataset
  def crashing(*args, **kwargs):
    ds = real(*args, **kwargs)
    count = {"n": 0}
    def fail_after(batch):
      count["n"] += 1
      if count["n"] > 12:
        raise KeyboardInterrupt("simulated crash")
      return batch
    return ds.map(fail_after)
  monkeypatch.setattr(tasks, "train_dataset", crashing)
  part = tmp_path / "part"
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config(), str(part))
  monkeypatch.setattr(tasks, "train_dataset", real)
  train.train_and_evaluate(config(), str(part))

  a, b = latest_params(full), latest_params(part)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  train_a = {r["step"]: r["loss"] for r in read(full / "metrics.jsonl")
             if "split" not in r}
  train_b = {r["step"]: r["loss"] for r in read(part / "metrics.jsonl")
             if "split" not in r}
  assert train_a[15] == train_b[15] and train_a[20] == train_b[20]


def test_lstm_config_trains(tmp_path):
  c = config_lib.load("experiments/g2p.py:lstm,tiny")
  c.total_steps, c.eval_every = 6, 100
  results = train.train_and_evaluate(c, str(tmp_path / "lstm"))
  assert set(results) == {"dev", "test"}


def test_charlm_tiny_trains_and_generates(tmp_path, capsys):
  wd = str(tmp_path / "charlm")
  assert cli.main(["train", "--config", "experiments/charlm.py:tiny",
                   "--workdir", wd]) == 0
  capsys.readouterr()
  assert cli.main(["generate", "--workdir", wd, "The quick brown fox"]) == 0
  line = capsys.readouterr().out.rstrip("\n")
  assert line.startswith("The quick brown fox\t")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["seq", "instant", "ocd"])
def test_rl_modes_train_from_ce_checkpoint(tmp_path_factory, mode):
  base = tmp_path_factory.getbasetemp() / "ce_for_rl"
  if not (base / "checkpoints").exists():
    train.train_and_evaluate(tiny(total_steps=10, eval_every=100), str(base))
  c = config_lib.load(f"experiments/g2p_rl.py:{mode},tiny")
  c.init_from, c.total_steps, c.log_every, c.eval_every = str(base), 4, 2, 100
  wd = tmp_path_factory.mktemp(mode)
  results = train.train_and_evaluate(c, str(wd))
  rows = [r for r in read(wd / "metrics.jsonl") if "split" not in r]
  for key in ("reward", "reward_std", "kl", "alpha", "token_reward_mean",
              "edit_distance", "rl_loss"):
    assert np.isfinite(rows[-1][key]), key
  assert rows[-1]["reward"] <= 0
  assert 0.2 <= rows[-1]["alpha"] <= 0.8
  assert set(results) == {"dev", "test"}


def test_length_collapse_warns_once_naming_the_reward(capsys):
  watch = train._LengthCollapse("edit_distance:1.0", enabled=True, records=3)
  for empty in (0.95, 0.95, 0.5, 0.95, 0.95, 0.95, 0.99, 0.99):
    watch.update({"empty_fraction": empty})
  err = capsys.readouterr().err
  assert err.count("Warning: 3 consecutive records") == 1
  assert "edit_distance:1.0" in err
  watch = train._LengthCollapse("x", enabled=True, records=3)
  for empty in (0.95, 0.95, 0.5, 0.95, 0.95):
    watch.update({"empty_fraction": empty})
  assert capsys.readouterr().err == ""


class _Bar:
  n = 0

  def update(self, k):
    self.n += k


def test_the_bar_counts_finished_steps_only():
  """_InFlight: the bar moves when a step is seen to finish, and waiting
  for at most n steps leaves n in flight."""
  import jax.numpy as jnp
  bar = _Bar()
  in_flight = train._InFlight(bar)
  for i in range(3):
    in_flight.add(jnp.float32(i))
  assert bar.n == 0
  in_flight.wait(train.MAX_IN_FLIGHT - 1)
  assert bar.n == 3 - (train.MAX_IN_FLIGHT - 1)
  in_flight.wait(0)
  assert bar.n == 3


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_saves_within_two_slow_steps(tmp_path):
  """A 1 s step (a host callback that sleeps): SIGTERM after 4 finished
  steps saves a checkpoint at most MAX_IN_FLIGHT steps past the finished
  ones and within a few steps' time (before, the loop dispatched every
  step up to the log step and the checkpoint waited for all of them)."""
  import signal
  import subprocess
  import sys
  import time
  counter, wd = tmp_path / "finished", tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tests", "slow_step_worker.py"),
       str(wd), str(counter), "1.0"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finished = lambda: int(counter.read_text() or 0) if counter.exists() else 0
  deadline = time.time() + 300
  while finished() < 4 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  at_signal = finished()
  assert at_signal >= 4, proc.stderr.read()[-3000:]
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  elapsed = time.time() - sent
  assert proc.returncode == 0, err[-3000:]
  saved = int(out.split("preempted_at=")[1].split()[0])
  assert at_signal <= saved <= at_signal + train.MAX_IN_FLIGHT + 1, (
      at_signal, saved)
  assert os.path.isdir(wd / "checkpoints" / str(saved))
  # The steps still in flight (<= 3 s) plus saving and exiting a tiny run.
  assert elapsed < 3 * 1.0 + 15, elapsed
