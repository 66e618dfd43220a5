"""experiments/llm_rl_study.py (#33) end to end on a tiny random llama GGUF:
SFT, the merged base rebuilt from the committed adapters, every arm, the
results files in their format; steps to target on hand-made curves; the
KL reference of an arm is the merged base, not the pre-SFT model."""

import json
import os
import sys

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
pytest.importorskip("gguf")


def _point(step, reward, wall=None):
  return {"step": step, "wall_s": wall if wall is not None else step * 2.0,
          "reward": reward, "completion_length": 3.0, "empty_fraction": 0.0}


def test_steps_to_target_uses_the_five_record_moving_average():
  import llm_rl_study as study
  rewards = [-0.9, -0.8, -0.5, -0.4, -0.3, -0.2, -0.1]
  points = [_point(5 * (i + 1), r) for i, r in enumerate(rewards)]
  # 5-record averages: -0.9, -0.85, -0.733, -0.65, -0.58, -0.44, -0.3.
  assert study.to_target(points, -0.45) == (30, 60.0)
  assert study.to_target(points, -0.3) == (35, 70.0)
  # A single record above the target is not enough: never reached.
  assert study.to_target(points, -0.2) == (None, None)
  assert study.to_target([_point(5, None)], -0.5) == (None, None)
  assert study.to_target(points, None) == (None, None)


@pytest.mark.slow
def test_driver_end_to_end_on_a_tiny_gguf(tmp_path):
  import gguf_files
  import llm_rl_study as study
  from ir_jax import pretrained, workdir
  from ir_jax.models import lora
  path = str(tmp_path / "tiny.gguf")
  gguf_files.write(path)
  out, runs = tmp_path / "out", tmp_path / "runs"
  summary = study.main(["--task", "spell_backward", "--tiny", "--gguf", path,
                        "--seeds", "0", "--target_reward", "-0.99",
                        "--runs", str(runs), "--out", str(out)])
  task_dir = out / "spell_backward"
  disk = json.load(open(task_dir / "summary.json"))
  assert disk == json.loads(json.dumps(summary))
  assert set(disk) == {"model", "task", "target_reward", "runs"}
  assert disk["target_reward"] == -0.99
  assert sorted(r["arm"] for r in disk["runs"]) == sorted(study.ARMS)
  for r in disk["runs"]:
    assert set(r) == {"arm", "seed", "steps", "wall_s", "test_exact",
                      "test_cer", "steps_to_target", "seconds_to_target",
                      "reward_at_equal_rollouts"}
    assert 0 <= r["test_exact"] <= 1 and 0 <= r["test_cer"] <= 1
    assert r["wall_s"] > 0
    if r["arm"] == "sft_wall":
      assert r["reward_at_equal_rollouts"] is None
      assert r["steps_to_target"] is None and r["seconds_to_target"] is None
    else:
      assert -1 <= r["reward_at_equal_rollouts"] <= 0
    seed_dir = task_dir / r["arm"] / "seed0"
    test = [json.loads(line) for line in open(seed_dir / "test.jsonl")]
    assert len(test) == 6 and all(set(t) == {"prompt", "target", "output"}
                                  for t in test)
    assert test[0]["prompt"].startswith("Spell this word backward")
    curve = [json.loads(line) for line in open(seed_dir / "curve.jsonl")]
    assert [c["step"] for c in curve] == list(range(1, r["steps"] + 1))
    assert all(set(c) == {"step", "wall_s", "reward", "completion_length",
                          "empty_fraction"} for c in curve)
    walls = [c["wall_s"] for c in curve]
    assert walls == sorted(walls) and r["wall_s"] == walls[-1]
    rollout = r["arm"] != "sft_wall"
    assert all((c["reward"] is not None) == rollout for c in curve)
  start = [json.loads(line) for line in open(task_dir / "sft" / "seed0" /
                                             "test.jsonl")]
  assert len(start) == 6
  assert os.path.getsize(task_dir / "curves.png") > 1000
  adapters = task_dir / "sft" / "adapters.npz"
  assert os.path.getsize(adapters) < 200_000
  # The merged base is the GGUF plus the committed (bf16) adapters ...
  merged = str(runs / "spell_backward" / "merged")
  model, params = pretrained.load(path)
  _, merged_params = pretrained.load(merged)
  import flax
  flat_gguf = flax.traverse_util.flatten_dict(params)
  flat_merged = flax.traverse_util.flatten_dict(merged_params)
  changed = [k for k in flat_gguf if k[-1] == "kernel" and not np.array_equal(
      np.asarray(flat_gguf[k]), np.asarray(flat_merged[k]))]
  assert changed            # SFT moved the adapted kernels.
  # ... and an arm's KL reference (its params with the adapters off) is
  # that merged base, not the pre-SFT model.
  _, _, arm_model, arm_params = workdir.load_run(
      str(runs / "spell_backward" / "grpo_token" / "seed0"))
  reference = lora.merge(arm_model, lora.adapters_off(arm_params))[1]
  flat_ref = flax.traverse_util.flatten_dict(reference)
  for k in changed:
    np.testing.assert_allclose(np.asarray(flat_ref[k]),
                               np.asarray(flat_merged[k]), rtol=0, atol=0)
  # A rerun trains nothing and keeps every number; the target stays fixed.
  again = study.main(["--task", "spell_backward", "--tiny", "--gguf", path,
                      "--seeds", "0", "--runs", str(runs), "--out", str(out)])
  assert again["runs"] == summary["runs"]
  with pytest.raises(SystemExit, match="target_reward"):
    study.main(["--task", "spell_backward", "--tiny", "--gguf", path,
                "--seeds", "0", "--target_reward", "-0.5", "--runs",
                str(runs), "--out", str(out)])


def test_paired_test_by_hand(tmp_path):
  import llm_rl_study as study
  rows = [("p1", "abc", "abc", "abd"), ("p2", "xy", "x", "xy"),
          ("p3", "hello", "hello", "hello"), ("p4", "q", "", "z")]
  for name, col in (("a", 2), ("b", 3)):
    (tmp_path / name).mkdir()
    with open(tmp_path / name / "test.jsonl", "w") as f:
      for r in rows:
        f.write(json.dumps({"prompt": r[0], "target": r[1],
                            "output": r[col]}) + "\n")
  out = study.paired_test(str(tmp_path / "a"), str(tmp_path / "b"))
  # a: right on p1, p3; errors 0, 1, 0, 1 over 3 + 2 + 5 + 1 = 11 bytes.
  # b: right on p2, p3; errors 1, 0, 0, 1.
  assert out["exact_a"] == out["exact_b"] == 0.5
  assert out["only_a_right"] == 1 and out["only_b_right"] == 1
  assert out["mcnemar_p"] == 1.0
  assert out["cer_a"] == pytest.approx(2 / 11)
  assert out["cer_b"] == pytest.approx(2 / 11)
  assert out["delta_cer"] == pytest.approx(0.0)
