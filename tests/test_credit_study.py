"""experiments/credit_study.py end to end on the tiny G2P model: every arm
from one start, the result files of the issue's format, the paired report;
and the arms' configs differ only where they should."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import credit_study  # noqa: E402


def _args(tmp_path, **kw):
  import argparse
  base = dict(task="g2p_words", tiny=True, steps=0, start_steps=600,
              sft_steps=0, samples=8, baseline="position", credit_lambda=0.5,
              gguf="", runs=str(tmp_path / "runs"),
              out=str(tmp_path / "out"))
  return argparse.Namespace(**{**base, **kw})


def test_arms_differ_only_in_their_credit(tmp_path):
  args = _args(tmp_path)
  configs = {arm: credit_study.arm_config(args, arm, 3, "START").to_dict()
             for arm in credit_study.ARMS}
  flat = lambda d, p="": {k2: v2 for k, v in d.items() for k2, v2 in (
      flat(v, p + k + ".").items() if isinstance(v, dict) else
      [(p + k, v)])}
  seq = flat(configs["sequence"])
  for arm in ("reward_to_go", "immediate", "lambda"):
    diff = {k for k, v in flat(configs[arm]).items() if seq.get(k) != v}
    assert diff <= {"rl.credit", "rl.credit_baseline", "rl.credit_lambda"}
    assert configs[arm]["rl"]["credit"] == arm
  for c in configs.values():
    assert c["seed"] == 3 and c["init_from"] == "START"
    assert c["log_every"] == 1
  assert configs["ocd"]["rl"]["mode"] == "ocd"
  assert configs["lambda"]["rl"]["credit_lambda"] == 0.5


@pytest.mark.slow
def test_driver_end_to_end_on_tiny_g2p(tmp_path):
  summary = credit_study.main([
      "--task", "g2p_words", "--tiny", "--seeds", "0,1", "--arms",
      "sequence,immediate,ocd", "--target_reward", "-5",
      "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
  out = tmp_path / "out" / "g2p_words"
  disk = json.loads((out / "summary.json").read_text())
  assert disk == json.loads(json.dumps(summary))
  assert set(disk) == {"task", "model", "target_reward", "runs"}
  assert len(disk["runs"]) == 6
  for r in disk["runs"]:
    assert {"arm", "seed", "rollouts_to_target", "auc", "test_exact",
            "test_cer"} <= set(r)
    run = out / r["arm"] / f"seed{r['seed']}"
    curve = [json.loads(x) for x in (run / "curve.jsonl").read_text()
             .splitlines()]
    # A target every run reaches: at a logged step, counted in rollouts.
    assert r["rollouts_to_target"] in [c["rollouts"] for c in curve]
    assert [c["step"] for c in curve] == list(range(1, r["steps"] + 1))
    assert all(set(c) == {"step", "rollouts", "wall_s", "reward",
                          "completion_length", "empty_fraction"}
               for c in curve)
    test = [json.loads(x) for x in (run / "test.jsonl").read_text()
            .splitlines()]
    assert all(set(t) == {"prompt", "target", "output"} for t in test)
    assert "|" in test[0]["prompt"] and test[0]["target"]
  rep = json.loads((out / "report.json").read_text())
  assert set(rep["tests"]) == {"immediate_vs_sequence", "ocd_vs_sequence"}
  assert len(rep["tests"]["ocd_vs_sequence"]["auc_deltas"]) == 2
  assert (out / "curves.png").exists()
  tests = rep["tests"].values()
  # Holm over the family: each adjusted p >= its own.
  assert all(t["auc_p_holm"] >= t["auc_seed_level"]["p_value"] for t in tests)
  assert set(rep["error_split"]) == {"start"} | {
      f"{a}/seed{s}" for a in ("sequence", "immediate", "ocd")
      for s in (0, 1)}
  (out / "report.md").unlink()
  credit_study.main(["--task", "g2p_words", "--tiny", "--report", "--runs",
                     str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
  assert "Test errors split" in (out / "report.md").read_text()
  # 20 decoded items (fewer if the tiny test set is smaller): the start's
  # beside every arm's, G2P's "|" escaped in the table.
  text = (out / "samples.md").read_text()
  assert "| start |" in text and "| ocd (seed 0) |" in text
  assert "| start |" in (out / "report.md").read_text()
  # The target stays fixed once results exist.
  with pytest.raises(SystemExit, match="stays fixed"):
    credit_study.main(["--task", "g2p_words", "--tiny", "--arms",
                       "sequence", "--target_reward", "-4", "--runs",
                       str(tmp_path / "runs"), "--out",
                       str(tmp_path / "out")])
