"""`ir-jax` from the command line: exit codes and one-line errors.

Every config mistake is refused by `ir-jax train --dry-run` (exit 2, the
field named, no traceback), because `config.validate` runs before any
device work; the eval/generate paths run on a workdir written by an
earlier version of ir_jax (tests/fixtures).
"""

import json
import os
import shutil

import pytest

from ir_jax import cli
from ir_jax import workdir as workdir_lib
from test_config import BAD
from helpers import CONFIG, FIXTURE, ROOT


def _flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.mark.parametrize("overrides,field,fix", BAD,
                         ids=[",".join(b[0]) for b in BAD])
def test_dry_run_rejects_every_config_error(overrides, field, fix, capsys):
  assert cli.main(["train", "--config", CONFIG, "--dry-run",
                   *_flags(overrides)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("ir-jax train: error: ") and field in err and fix in err
  assert "Traceback" not in err


def test_dry_run_rejects_kl_without_reference(capsys):
  spec = os.path.join(ROOT, "experiments", "g2p_rl.py:instant,tiny")
  assert cli.main(["train", "--config", spec, "--dry-run"]) == 2
  assert "config.rl.kl_weight > 0 needs --config.init_from" in (
      capsys.readouterr().err)


def test_wrong_types_in_a_config_file_are_refused(tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text(
      "import ml_collections\n"
      "from ir_jax.config import default_config\n"
      "def get_config(arg=None):\n"
      "  c = default_config()\n"
      "  c.optim = ml_collections.ConfigDict(dict(c.optim, "
      "learning_rate='fast'))\n"
      "  return c\n")
  assert cli.main(["train", "--config", str(path), "--dry-run"]) == 2
  assert "config.optim.learning_rate must be a number, got 'fast'" in (
      capsys.readouterr().err)


def test_usage_errors(capsys, tmp_path):
  assert cli.main(["train", "--config", CONFIG]) == 2
  assert "--workdir is required" in capsys.readouterr().err
  assert cli.main(["train", "--config", str(tmp_path / "none.py"),
                   "--dry-run"]) == 2
  assert "no such file" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["eval", "--workdir", "x", "--config.seed=1"])
  assert cli.main(["eval", "--workdir", str(tmp_path)]) == 2
  assert "not a trained ir_jax workdir" in capsys.readouterr().err
  assert cli.main(["generate", "--workdir", str(tmp_path)]) == 2
  assert "No input" in capsys.readouterr().err


def test_eval_and_generate_on_a_workdir_of_an_earlier_version(tmp_path,
                                                              capsys):
  wd = str(tmp_path / "run")
  shutil.copytree(FIXTURE, wd)
  assert cli.main(["eval", "--workdir", wd, "--split", "nope"]) == 2
  assert "this task's eval sets are dev, test" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", wd, "--split", "dev"]) == 0
  assert capsys.readouterr().out.startswith("dev: PER ")
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  assert last["split"] == "dev" and last["step"] == 10
  assert last["source"] == "ir-jax eval" and last["words"] == 64
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert cli.main(["generate", "--workdir", wd, "hello", "world"]) == 0
  lines = capsys.readouterr().out.strip().split("\n")
  assert [l.split("\t")[0] for l in lines] == ["hello", "world"]


def test_generate_reports_bad_lines_and_emits_only_target_symbols(tmp_path,
                                                                   capsys):
  wd = str(tmp_path / "run")
  shutil.copytree(FIXTURE, wd)
  path = tmp_path / "words.txt"
  path.write_bytes(b"hello\n\n\xff\xfebad\n" + b"a" * 34 + b"\nh3llo\n")
  assert cli.main(["generate", "--workdir", wd, "--input", str(path)]) == 0
  captured = capsys.readouterr()
  assert "skipped 2 lines" in captured.err
  assert "not UTF-8 at lines [3]" in captured.err
  assert "empty at lines [2]" in captured.err
  assert "1 of 3 inputs are longer than the 16 symbols" in captured.err
  assert "unseen in training map to <unk>: ['3']" in captured.err
  lines = captured.out.strip().split("\n")
  assert [l.split("\t")[0] for l in lines] == ["hello", "a" * 34, "h3llo"]
  # The barely trained model would print letters; decoding cannot.
  _, task, _, _ = workdir_lib.load_run(wd)
  phonemes = {task.vocab.symbols[i] for i in task.target_ids["g2p"]}
  for line in lines:
    out = line.split("\t")[1].split()
    assert out and set(out) <= phonemes, line


def test_generate_with_mbr(tmp_path, capsys):
  wd = str(tmp_path / "run")
  shutil.copytree(FIXTURE, wd)
  assert cli.main(["generate", "--workdir", wd, "--mbr", "1", "hello"]) == 2
  assert "--mbr K needs K >= 2" in capsys.readouterr().err
  args = ["generate", "--workdir", wd, "--mbr", "4", "hello", "world"]
  assert cli.main(args) == 0
  first = capsys.readouterr().out
  assert cli.main(args) == 0               # Seeded: the same choice again.
  assert capsys.readouterr().out == first
  _, task, _, _ = workdir_lib.load_run(wd)
  phonemes = {task.vocab.symbols[i] for i in task.target_ids["g2p"]}
  lines = first.strip().split("\n")
  assert [l.split("\t")[0] for l in lines] == ["hello", "world"]
  for line in lines:
    assert set(line.split("\t")[1].split()) <= phonemes, line


def test_beam_search_in_generate_and_eval(tmp_path, capsys):
  wd = str(tmp_path / "run")
  shutil.copytree(FIXTURE, wd)           # Its config predates config.eval.
  assert cli.main(["generate", "--workdir", wd, "--beam", "3", "--mbr", "2",
                   "hello"]) == 2
  assert "do not combine" in capsys.readouterr().err
  assert cli.main(["generate", "--workdir", wd, "--beam", "1", "hello",
                   "world"]) == 0
  greedy = capsys.readouterr().out
  assert cli.main(["generate", "--workdir", wd, "hello", "world"]) == 0
  assert capsys.readouterr().out == greedy            # Beam 1 == greedy.
  assert cli.main(["generate", "--workdir", wd, "--beam", "4", "hello"]) == 0
  assert capsys.readouterr().out.startswith("hello\t")
  assert cli.main(["generate", "--workdir", wd, "--mbr-nbest", "hello"]) == 2
  assert "--beam K with K >= 2" in capsys.readouterr().err
  assert cli.main(["generate", "--workdir", wd, "--beam", "4", "--mbr-nbest",
                   "hello"]) == 0
  assert capsys.readouterr().out.startswith("hello\t")
  assert cli.main(["eval", "--workdir", wd, "--split", "dev", "--beam",
                   "2"]) == 0
  assert capsys.readouterr().out.startswith("dev: PER ")
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    last = json.loads(f.readlines()[-1])
  assert last["beam"] == 2 and last["split"] == "dev"
