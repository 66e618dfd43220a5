"""ir_jax.workdir: run files, checkpoints, compatibility, prompts; and a
workdir written by an earlier version of ir_jax still resumes."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ir_jax import evaluate, train
from ir_jax import workdir as workdir_lib
from helpers import FIXTURE, FULL_RUN, read, tiny


@pytest.fixture
def old_workdir(tmp_path):
  wd = str(tmp_path / "old")
  shutil.copytree(FIXTURE, wd)
  return wd


def test_workdir_of_an_earlier_version_resumes_exactly(old_workdir):
  assert workdir_lib.latest_step(old_workdir) == 10
  results = train.train_and_evaluate(
      tiny(keep_checkpoints=1, eval_every=100), old_workdir)
  with open(FULL_RUN) as f:
    want = json.load(f)
  losses = {str(r["step"]): r["loss"] for r in read(
      os.path.join(old_workdir, "metrics.jsonl")) if "split" not in r}
  for step in ("15", "20"):   # Written after the resume.
    np.testing.assert_allclose(losses[step], want[step]["loss"], rtol=1e-6)
  # The same params as the uninterrupted run: unconstrained greedy outputs
  # score as they did then (evaluation now emits target symbols only).
  _, task, model, params = workdir_lib.load_run(old_workdir)
  for split in ("dev", "test"):
    data = task.eval_sets[split]
    outputs = evaluate.generate_symbols(model, {"params": params}, task,
                                        data.source, 64)
    np.testing.assert_allclose(
        evaluate.error_rates(outputs, data.references)["per"],
        want[split]["per"], rtol=1e-6)
    assert results[split]["per"] <= want[split]["per"]
  assert workdir_lib.latest_step(old_workdir) == 20


def test_run_files_and_load_run(old_workdir, tmp_path):
  config, task, model, params = workdir_lib.load_run(old_workdir)
  assert config.total_steps == 20 and config.model.embed_dim == 32
  assert params["embed"]["embedding"].shape == (128, 32)
  wd = str(tmp_path / "new")
  workdir_lib.write_run_files(wd, config, task)
  assert workdir_lib.run_mismatch(wd, config, task) == ""
  assert workdir_lib.load_config(wd).to_dict() == config.to_dict()
  with open(os.path.join(wd, "vocab.json")) as f:
    assert json.load(f) == list(task.vocab.symbols)
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    workdir_lib.restore_params(wd, params)
  wrong = jax.tree.map(lambda x: np.zeros(x.shape[:-1] + (x.shape[-1] + 1,)),
                       params)
  with pytest.raises(ValueError, match="do not fit this model"):
    workdir_lib.restore_params(old_workdir, wrong)


def test_incompatible_workdir_is_refused(old_workdir):
  before = sorted(os.listdir(os.path.join(old_workdir, "checkpoints")))
  with pytest.raises(ValueError, match="another model"):
    train.train_and_evaluate(tiny(**{"model.embed_dim": 48}), old_workdir)
  with pytest.raises(ValueError, match="another vocabulary"):
    train.train_and_evaluate(tiny(**{"data.stress": True}), old_workdir)
  assert sorted(os.listdir(os.path.join(old_workdir, "checkpoints"))) == before


def test_prompt_files_are_tied_to_their_checkpoint(old_workdir, tmp_path):
  params = workdir_lib.load_run(old_workdir)[3]
  assert workdir_lib.fingerprint(params) == workdir_lib.fingerprint(
      jax.tree.map(np.array, params))
  path = workdir_lib.save_prompt(str(tmp_path), np.arange(3, dtype=np.int32), {
      "kind": "discrete", "length": 3,
      "fingerprint": workdir_lib.fingerprint(params)})
  assert path == os.path.join(str(tmp_path), workdir_lib.PROMPT_DIR)
  loaded = workdir_lib.load_prompt(str(tmp_path), params)
  np.testing.assert_array_equal(loaded["value"], [0, 1, 2])
  assert loaded["kind"] == "discrete"
  other = dict(params, embed={"embedding": params["embed"]["embedding"] * 2})
  with pytest.raises(ValueError, match="another checkpoint"):
    workdir_lib.load_prompt(path, other)
  with pytest.raises(FileNotFoundError, match="No prompt.json"):
    workdir_lib.load_prompt(str(tmp_path / "missing"))


def test_metric_writer_writes_jsonl_and_tensorboard(tmp_path):
  writer = workdir_lib.MetricWriter(str(tmp_path))
  writer.write({"step": 1, "loss": 2.0})
  writer.write({"step": 1, "split": "dev", "per": 0.5})
  writer.text("dev/samples", "a  \nb", 1)
  writer.close()
  assert read(tmp_path / "metrics.jsonl") == [
      {"step": 1, "loss": 2.0}, {"step": 1, "split": "dev", "per": 0.5}]
  assert workdir_lib.read_metrics(str(tmp_path)) == read(
      tmp_path / "metrics.jsonl")
  assert workdir_lib.read_metrics(str(tmp_path / "none")) == []
  assert os.listdir(tmp_path / "tensorboard")
  silent = workdir_lib.MetricWriter(str(tmp_path / "other"), enabled=False)
  silent.write({"step": 1, "loss": 1.0})
  silent.close()
  assert not os.path.exists(tmp_path / "other")


def _corrupt_array_data(step_dir):
  """Overwrites bytes in the middle of every array data file of a step."""
  count = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) != "d":
      continue
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * min(64, max(1, size - size // 2)))
      count += 1
  assert count > 0


@pytest.mark.slow
def test_unreadable_newest_checkpoint_is_moved_aside_and_resumed_before(
    old_workdir, tmp_path, capsys):
  config = tiny(keep_checkpoints=2, eval_every=100)
  train.train_and_evaluate(config, old_workdir)        # Checkpoints 10, 20.
  marker = str(tmp_path / "marker")
  shutil.copytree(old_workdir, marker)
  _corrupt_array_data(os.path.join(old_workdir, "checkpoints", "20"))
  os.remove(os.path.join(marker, "checkpoints", "20", "state",
                         "commit_success.txt"))
  with open(FULL_RUN) as f:
    want = json.load(f)
  for wd in (old_workdir, marker):
    capsys.readouterr()
    # Read-only use (eval, generate) takes step 10 and leaves 20 in place.
    assert workdir_lib.load_run_with_step(wd)[4] == 10
    assert "Checkpoint step 20" in capsys.readouterr().err
    assert os.path.isdir(os.path.join(wd, "checkpoints", "20"))
    before = len(read(os.path.join(wd, "metrics.jsonl")))
    train.train_and_evaluate(config, wd)
    err = capsys.readouterr().err
    assert "Checkpoint step 20" in err and "unreadable" in err
    assert "Resumed from step 10" in err
    assert os.path.isdir(os.path.join(wd, "checkpoints", "20.unreadable"))
    losses = {r["step"]: r["loss"] for r in read(
        os.path.join(wd, "metrics.jsonl"))[before:] if "split" not in r}
    assert sorted(losses) == [15, 20]
    for step in (15, 20):
      np.testing.assert_allclose(losses[step], want[str(step)]["loss"],
                                 rtol=1e-6)
    assert workdir_lib.latest_step(wd) == 20
    assert workdir_lib.load_run_with_step(wd)[4] == 20


def test_no_readable_checkpoint_is_a_clear_error(old_workdir):
  _corrupt_array_data(os.path.join(old_workdir, "checkpoints", "10"))
  with pytest.raises(RuntimeError, match="No readable checkpoint in .*new "
                     "--workdir"):
    train.train_and_evaluate(tiny(keep_checkpoints=1, eval_every=100),
                             old_workdir)
  assert os.path.isdir(os.path.join(old_workdir, "checkpoints",
                                    "10.unreadable"))


def test_a_failed_save_stops_and_keeps_the_previous_checkpoint(
    old_workdir, monkeypatch):
  real = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 20:
      raise OSError(28, "No space left on device")
    return real(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(RuntimeError, match="Could not save the checkpoint of "
                     "step 20 .*No space left on device.*step 10 is intact"):
    train.train_and_evaluate(tiny(keep_checkpoints=1, eval_every=100),
                             old_workdir)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real)
  assert workdir_lib.load_run_with_step(old_workdir)[4] == 10


# ------------------------------------------- checksums (manifests) of steps


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
  """A tiny run from scratch: checkpoints 10 and 20, both with manifests."""
  wd = str(tmp_path_factory.mktemp("fresh") / "run")
  train.train_and_evaluate(tiny(keep_checkpoints=3, eval_every=100), wd)
  return wd


def _corrupt(step_dir, seed):
  """One seeded corruption of a step: (kind, changed?)."""
  rng = np.random.default_rng(seed)
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(step_dir)
                 for f in fs if not f.startswith(workdir_lib.MANIFEST))
  path = files[rng.integers(len(files))]
  before = open(path, "rb").read()
  kind = ("overwrite", "truncate", "delete", "extra", "flip")[seed % 5]
  if kind == "overwrite":
    size = max(1, len(before))
    start = int(rng.integers(size))
    junk = rng.integers(0, 256, int(rng.integers(1, 4097)), np.uint8)
    data = bytearray(before)
    data[start:start + len(junk)] = junk.tobytes()[:max(0, size - start)]
    open(path, "wb").write(bytes(data))
  elif kind == "truncate":
    open(path, "wb").write(before[:int(rng.integers(len(before) + 1)) - 1]
                           if before else b"")
  elif kind == "delete":
    os.remove(path)
  elif kind == "extra":
    with open(os.path.join(os.path.dirname(path), "stray.bin"), "wb") as f:
      f.write(b"x")
  else:
    small = [f for f in files if os.path.getsize(f) < 4096] or files
    path = small[rng.integers(len(small))]
    data = bytearray(open(path, "rb").read())
    data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    open(path, "wb").write(bytes(data))
  changed = kind in ("delete", "extra") or open(path, "rb").read() != before
  return kind, changed


def test_every_corruption_of_the_newest_step_is_detected(fresh_run, tmp_path):
  """20 seeded corruptions (random file, offset and length; truncation;
  deletion; an extra file; a flipped byte in a small file): each is
  refused before any array is read and the previous step is read, or it
  changed nothing and the arrays restore bit-equal to the saved ones."""
  step20 = os.path.join(fresh_run, "checkpoints", "20")
  assert os.path.exists(os.path.join(step20, workdir_lib.MANIFEST +
                                     ".process_0.json"))
  template = jax.tree.map(np.asarray, workdir_lib.readable_params(
      fresh_run, _params_like(fresh_run))[0])
  kinds = set()
  for seed in range(20):
    wd = str(tmp_path / f"c{seed}")
    shutil.copytree(fresh_run, wd)
    kind, changed = _corrupt(os.path.join(wd, "checkpoints", "20"), seed)
    kinds.add(kind)
    params, step = workdir_lib.readable_params(wd, template)
    if changed:
      assert step == 10, (seed, kind)
    else:
      assert step == 20
      jax.tree.map(np.testing.assert_array_equal,
                   jax.tree.map(np.asarray, params), template)
    shutil.rmtree(wd)
  assert len(kinds) == 5


def _params_like(wd):
  with workdir_lib.checkpoint_manager(wd) as manager:
    meta = manager.item_metadata(manager.latest_step())["state"]
  return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])


def test_verify_manifest_names_the_file(fresh_run, tmp_path):
  from etils import epath
  wd = str(tmp_path / "v")
  shutil.copytree(fresh_run, wd)
  step = epath.Path(wd) / "checkpoints" / "20"
  assert workdir_lib.verify_manifest(step) == ("verified", "")
  (step / "state" / "stray.bin").write_bytes(b"1")
  assert workdir_lib.verify_manifest(step) == (
      "mismatch", "state/stray.bin is not in the manifest (extra file)")
  (step / "state" / "stray.bin").unlink()
  target = sorted(p for p in (step / "data").iterdir() if p.is_file())[0]
  target.write_bytes(target.read_bytes() + b" ")
  status, what = workdir_lib.verify_manifest(step)
  assert status == "mismatch" and "another size" in what
  for manifest in step.glob(workdir_lib.MANIFEST + "*"):
    manifest.unlink()
  assert workdir_lib.verify_manifest(step)[0] == "absent"


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"),
                                   MemoryError("out of memory")])
def test_errors_after_verification_stop_and_move_nothing(fresh_run, tmp_path,
                                                         monkeypatch, error):
  wd = str(tmp_path / "e")
  shutil.copytree(fresh_run, wd)

  def failing(self, *args, **kwargs):
    raise error

  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing)
  with pytest.raises(RuntimeError, match="matches its checksums, but "
                     f"restoring it failed \\({type(error).__name__}.*"
                     "Nothing was moved"):
    train.train_and_evaluate(tiny(keep_checkpoints=3, eval_every=100,
                                  total_steps=30), wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10", "20"]


@pytest.mark.slow
def test_kill_corrupt_rerun_equals_an_uninterrupted_run(tmp_path):
  """kill -9 mid-run, 4 KB overwritten in the largest array file of the
  newest committed step, the same command again: the later losses equal an
  uninterrupted run's bit for bit."""
  import subprocess
  import sys
  import time
  from helpers import CONFIG
  flags = ["--config.total_steps=60", "--config.keep_checkpoints=3",
           "--config.eval_every=1000", "--config.log_every=5"]
  cmd = lambda wd: [sys.executable, "-m", "ir_jax.cli", "train", "--config",
                    CONFIG, "--workdir", wd] + flags
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  subprocess.run(cmd(full), env=env, check=True, capture_output=True)
  proc = subprocess.Popen(cmd(cut), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  manifest = os.path.join(cut, "checkpoints", "30",
                          workdir_lib.MANIFEST + ".process_0.json")
  deadline = time.time() + 600
  while not os.path.exists(manifest) and time.time() < deadline:
    time.sleep(0.02)
  proc.kill()
  proc.wait()
  steps = sorted(int(s) for s in os.listdir(os.path.join(cut, "checkpoints"))
                 if s.isdigit())
  newest = os.path.join(cut, "checkpoints", str(steps[-1]), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(newest) for f in fs
           if "/d" in d]
  largest = max(files, key=os.path.getsize)
  data = bytearray(open(largest, "rb").read())
  mid = len(data) // 2
  data[mid:mid + 4096] = os.urandom(len(data[mid:mid + 4096]))
  open(largest, "wb").write(bytes(data))
  rerun = subprocess.run(cmd(cut), env=env, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"Checkpoint step {steps[-1]}" in rerun.stderr
  assert f"Resumed from step {steps[-2]}" in rerun.stderr
  losses = lambda wd: {r["step"]: r["loss"] for r in read(
      os.path.join(wd, "metrics.jsonl")) if "split" not in r}
  want, got = losses(full), losses(cut)
  later = [s for s in want if s > steps[-2]]
  assert later and all(got[s] == want[s] for s in later)
