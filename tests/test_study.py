"""ir_jax.study: targets and areas on hand-made curves, paired tests by
hand, the seed-level interval against its formula, the answer rule, and a
run that a rerun finds finished."""

import json
import math
import os

import numpy as np
import pytest

from ir_jax import config as config_lib
from ir_jax import evaluate, study

from helpers import ROOT


def _point(step, reward, wall=None):
  return {"step": step, "wall_s": wall if wall is not None else step * 2.0,
          "reward": reward, "completion_length": 3.0, "empty_fraction": 0.0}


def _write(dest, rows):
  os.makedirs(dest, exist_ok=True)
  with open(os.path.join(dest, "test.jsonl"), "w") as f:
    for prompt, target, output in rows:
      f.write(json.dumps({"prompt": prompt, "target": target,
                          "output": output}) + "\n")


def test_steps_to_target_uses_the_five_record_moving_average():
  rewards = [-0.9, -0.8, -0.5, -0.4, -0.3, -0.2, -0.1]
  points = [_point(5 * (i + 1), r) for i, r in enumerate(rewards)]
  # 5-record averages: -0.9, -0.85, -0.733, -0.65, -0.58, -0.44, -0.3.
  assert study.to_target(points, -0.45) == (30, 60.0)
  assert study.to_target(points, -0.3) == (35, 70.0)
  # A single record above the target is not enough: never reached.
  assert study.to_target(points, -0.2) == (None, None)
  assert study.to_target([_point(5, None)], -0.5) == (None, None)
  assert study.to_target(points, None) == (None, None)


def test_pilot_target_is_the_moving_average_at_half_the_budget():
  rewards = [-0.9, -0.8, -0.5, -0.4, -0.3, -0.2, -0.1]
  points = [_point(5 * (i + 1), r) for i, r in enumerate(rewards)]
  # Half of a 30-step budget: the record at step 15, mean(-0.9, -0.8, -0.5).
  assert np.isclose(study.pilot_target(points, 15), -2.2 / 3)
  # A pilot cut at step 20 of a 40-step budget: its last record (step 20).
  assert np.isclose(study.pilot_target(points[:4], 20), -0.65)
  assert np.isclose(study.pilot_target(points, 17), -2.2 / 3)  # Not past.
  with pytest.raises(ValueError, match="no reward by step 4"):
    study.pilot_target(points, 4)


def test_paired_test_by_hand(tmp_path):
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


def test_answer_variety_counts_a_formula_by_hand(tmp_path):
  rows = [("1+1", "2", "-10"), ("2+2", "4", " -10 "), ("9-9", "0", "-1"),
          ("3*3", "9", "-10")]
  with open(tmp_path / "test.jsonl", "w") as f:
    for prompt, target, out in rows:
      f.write(json.dumps({"prompt": prompt, "target": target,
                          "output": out}) + "\n")
  # Outputs strip to "-10" x3 and "-1": 2 distinct of 4; targets 4 of 4.
  assert study.answer_variety(str(tmp_path)) == {
      "distinct": 0.5, "target_distinct": 1.0, "top": ["-10", 3]}


def test_curve_area_is_the_mean_reward_over_steps_by_hand():
  points = [_point(2, -1.0), _point(4, -0.5), _point(6, 0.0)]
  # Held at -1 from step 0 to 2, then trapezoids: (0 * 2 + 2 * -0.75 +
  # 2 * -0.25 + 2 * -1) / 6 over steps 0..6.
  assert study.curve_area(points) == pytest.approx((-2 - 1.5 - 0.5) / 6)
  # Up to step 5: the curve interpolated there (-0.25).
  assert study.curve_area(points, upto=5) == pytest.approx(
      (-2 - 1.5 - 0.375) / 5)
  assert study.curve_area(points + [_point(8, None)]) == study.curve_area(
      points)
  with pytest.raises(ValueError, match="ends at step 6"):
    study.curve_area(points, upto=7)
  with pytest.raises(ValueError, match="no record"):
    study.curve_area([_point(2, None)])


def test_seed_level_t_interval_by_its_formula():
  deltas = [-3.12, -1.48, 0.77]
  out = study.seed_level(deltas)
  mean, s = np.mean(deltas), np.std(deltas, ddof=1)
  half = 4.302652729911275 * s / math.sqrt(3)     # t_{0.975, 2}
  assert out["mean"] == pytest.approx(mean)
  assert out["ci95"] == pytest.approx([mean - half, mean + half])
  assert out["underpowered"] and out["seeds"] == 3
  assert out["method"] == "t interval over seeds"
  # t = mean / (s / sqrt(n)) on 2 degrees of freedom, two-sided.
  t = abs(mean) / (s / math.sqrt(3))
  p = 1 - t / math.sqrt(2 + t * t)        # Closed form of the t_2 tails.
  assert out["p_value"] == pytest.approx(p, rel=1e-9)
  assert study.seed_level([0.5])["ci95"] == [None, None]
  with pytest.raises(ValueError, match="no seeds"):
    study.seed_level([])


def test_seed_level_bootstrap_from_five_seeds():
  rng = np.random.default_rng(0)
  deltas = [-0.2, -0.25, -0.15, -0.22, -0.18, -0.21]
  out = study.seed_level(deltas)
  assert not out["underpowered"] and out["method"] == "bootstrap over seeds"
  assert -0.25 <= out["ci95"][0] < out["mean"] < out["ci95"][1] <= -0.15
  assert out["p_value"] == 0.0      # Every resample is below 0.
  # Hierarchical: item errors of a and b per seed; a makes one error fewer
  # in every seed, so every resample favours a.
  groups = []
  for _ in range(5):
    m = rng.integers(1, 6, 20)
    eb = rng.integers(0, 2, 20) + 1
    groups.append((eb - 1, eb, m))
  deltas = [(a.sum() - b.sum()) / m.sum() for a, b, m in groups]
  h = study.seed_level(deltas, groups=groups, resamples=500)
  assert h["method"].startswith("hierarchical")
  assert h["ci95"][1] < 0 and h["p_value"] == 0.0
  # Noise only (a and b the same errors): the interval holds 0.
  same = [(b, b, m) for _, b, m in groups]
  z = study.seed_level([0.0] * 5, groups=same, resamples=200)
  assert z["ci95"] == [0.0, 0.0] and z["p_value"] == 1.0


def test_paired_test_over_seeds_by_hand(tmp_path):
  a0, b0, a1, b1 = (str(tmp_path / n) for n in ("a0", "b0", "a1", "b1"))
  _write(a0, [("p1", "abcd", "abcd"), ("p2", "xy", "xy")])
  _write(b0, [("p1", "abcd", "abc"), ("p2", "xy", "xy")])
  _write(a1, [("p1", "abcd", "abcd"), ("p2", "xy", "x")])
  _write(b1, [("p1", "abcd", "ab"), ("p2", "xy", "")])
  out = study.paired_test([a0, a1], [b0, b1])
  assert out["items"] == 4 and out["seeds"] == 2
  # Seed 0: a 0 errors, b 1, over 6 bytes; seed 1: a 1, b 4.
  assert out["seed_cer"]["deltas"] == pytest.approx([-1 / 6, -3 / 6])
  assert out["seed_exact"]["deltas"] == pytest.approx([0.5, 0.5])
  assert out["cer_a"] == pytest.approx(1 / 12)
  assert out["cer_b"] == pytest.approx(5 / 12)
  assert out["seed_cer"]["underpowered"]
  with pytest.raises(ValueError, match="pair them"):
    study.paired_test([a0, a1], [b0])
  _write(b1, [("p1", "abcd", "ab"), ("p3", "xy", "")])
  with pytest.raises(ValueError, match="different test items"):
    study.paired_test([a0, a1], [b0, b1])


def test_one_answer_rule_ascii_whitespace_only():
  assert evaluate.answer_bytes(" \tab c\r\n") == b"ab c"
  # Other whitespace is part of the answer (str.strip() would drop it).
  assert evaluate.answer_bytes("\u00a0ab\u2028") == "\u00a0ab\u2028".encode()
  from ir_jax.rewards import chars
  assert {chr(b) for b in chars.WHITESPACE} == set(" \t\r\n")


def test_diagnostics_use_the_answer_rule(tmp_path):
  _write(str(tmp_path), [("p1", "ab", " ab\n"), ("p2", "cd", "\u00a0cd")])
  # Outputs of 2 and 4 bytes (NBSP is 2): 3 on average.
  assert study.output_bytes(str(tmp_path)) == {"output": 3.0, "target": 2.0,
                                               "empty": 0}
  # NBSP (2 bytes) is an insertion before "cd": 2 extra bytes of 4.
  assert study.error_split(str(tmp_path)) == pytest.approx(
      {"sub": 0.0, "ins": 0.5, "del": 0.0})


@pytest.mark.slow
def test_run_trains_once_and_a_rerun_finds_it_finished(tmp_path):
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py") + ":tiny")
  c.total_steps, c.eval_every, c.log_every = 4, 4, 2
  wd = str(tmp_path / "run")
  assert not study.finished(c, wd)
  final, records, wall = study.run(c, wd)
  assert final["test"]["step"] == 4 and wall > 0
  assert [r["step"] for r in records] == [2, 4]
  assert study.finished(c, wd) and not study.finished(c, wd, files=("x",))
  points = study.curve(wd)
  assert [p["step"] for p in points] == [2, 4]
  assert all(p["reward"] is None for p in points)     # CE: no rollouts.
  before = os.path.getmtime(os.path.join(wd, "metrics.jsonl"))
  again = study.run(c, wd)
  assert again[0] == final and again[2] == wall
  assert os.path.getmtime(os.path.join(wd, "metrics.jsonl")) == before


def test_holm_adjusts_step_down():
  """Holm: sorted p x (m - i), monotone, capped; None is not counted."""
  got = study.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
  assert got["d"] is None
  np.testing.assert_allclose([got["a"], got["c"], got["b"]],
                             [0.03, 0.06, 0.06])
  assert study.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
