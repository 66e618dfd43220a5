"""ir_jax.workdir: run files, checkpoints, compatibility, prompts; and a
workdir written by an earlier version of ir_jax still resumes."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from ir_jax import train
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
  for split in ("dev", "test"):
    np.testing.assert_allclose(results[split]["per"], want[split]["per"],
                               rtol=1e-6)
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
  assert os.listdir(tmp_path / "tensorboard")
  silent = workdir_lib.MetricWriter(str(tmp_path / "other"), enabled=False)
  silent.write({"step": 1, "loss": 1.0})
  silent.close()
  assert not os.path.exists(tmp_path / "other")
