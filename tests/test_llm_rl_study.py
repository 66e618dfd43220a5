"""experiments/llm_rl_study.py (#33) end to end on a tiny random llama GGUF:
SFT, the merged base rebuilt from the committed adapters, every arm, the
results files in their format; steps to target on hand-made curves; the
KL reference of an arm is the merged base, not the pre-SFT model."""

import json
import os
import sys

import numpy as np
import pytest

from helpers import ROOT, levenshtein

sys.path.insert(0, os.path.join(ROOT, "experiments"))
pytest.importorskip("gguf")
try:
  import tunix  # noqa: F401
  _HAVE_TUNIX = True
except ImportError:
  _HAVE_TUNIX = False


@pytest.mark.slow
def test_driver_end_to_end_on_a_tiny_gguf(tmp_path):
  import gguf_files
  import llm_rl_study as study
  from ir_jax import pretrained, workdir
  from ir_jax.models import lora
  path = str(tmp_path / "tiny.gguf")
  gguf_files.write(path)
  out, runs = tmp_path / "out", tmp_path / "runs"
  # The Tunix arm is skipped only where tunix is absent (CI installs it).
  arms = [a for a in study.ARMS if a != "tunix_grpo" or _HAVE_TUNIX]
  summary = study.main(["--task", "spell_backward", "--tiny", "--gguf", path,
                        "--seeds", "0", "--target_reward", "-0.99",
                        "--arms", ",".join(arms),
                        "--runs", str(runs), "--out", str(out)])
  task_dir = out / "spell_backward"
  disk = json.load(open(task_dir / "summary.json"))
  assert disk == json.loads(json.dumps(summary))
  assert set(disk) == {"model", "task", "target_reward", "runs"}
  assert disk["target_reward"] == -0.99
  assert sorted(r["arm"] for r in disk["runs"]) == sorted(arms)
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
    # Tunix's records also say whether some group's rewards differed.
    extra = {"signal"} if r["arm"] == "tunix_grpo" else set()
    assert all(set(c) == {"step", "wall_s", "reward", "completion_length",
                          "empty_fraction"} | extra for c in curve)
    walls = [c["wall_s"] for c in curve]
    assert walls == sorted(walls) and r["wall_s"] == walls[-1]
    rollout = r["arm"] != "sft_wall"
    assert all((c["reward"] is not None) == rollout for c in curve)
  start = [json.loads(line) for line in open(task_dir / "sft" / "seed0" /
                                             "test.jsonl")]
  assert len(start) == 6
  assert os.path.getsize(task_dir / "curves.png") > 1000
  rep = json.load(open(task_dir / "report.json"))
  assert set(rep["tests"]) == {f"{a}_vs_{b}" for a, b in study.COMPARISONS
                               if a in arms and b in arms + ["sft"]}
  assert "| grpo_token vs sft |" in open(task_dir / "report.md").read()
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
  if _HAVE_TUNIX:   # Tunix trained the adapters its test outputs use,
    # wherever a rollout had a signal (some group's rewards differed); a
    # tiny random model can score -1 on every sample: no advantage, no update.
    tunix_dir = runs / "spell_backward" / "tunix_grpo" / "seed0"
    with open(tunix_dir / "curve.jsonl") as f:
      signal = any(json.loads(line)["signal"] for line in f)
    with np.load(tunix_dir / "adapters.npz") as z:
      moved = any(np.any(z[k]) for k in z.files if k.endswith("lora_b"))
    assert moved or not signal
  # A rerun trains nothing and keeps every number; the target stays fixed.
  again = study.main(["--task", "spell_backward", "--tiny", "--gguf", path,
                      "--seeds", "0", "--arms", ",".join(arms),
                      "--runs", str(runs), "--out", str(out)])
  assert again["runs"] == summary["runs"]
  with pytest.raises(SystemExit, match="target_reward"):
    study.main(["--task", "spell_backward", "--tiny", "--gguf", path,
                "--seeds", "0", "--target_reward", "-0.5", "--runs",
                str(runs), "--out", str(out)])


# ------------------------------------------------------------ the Tunix arm


def test_tunix_host_reward_is_char_error_by_hand():
  import llm_rl_tunix as lt
  cases = [("olleh", "olleh"), (" olleh\n", "olleh"), ("oleh", " olleh"),
           ("", "abc"), ("abcdefgh", "ab"), ("café", "cafe"), ("x y", "xy"),
           ("\tq", "")]
  for out, target in cases:
    a = out.strip(" \t\r\n").encode()
    b = target.strip(" \t\r\n").encode()
    want = -min(levenshtein(a, b) / max(len(b), 1), 1.0)
    assert lt.char_error(out, target) == pytest.approx(want, abs=1e-12)
  assert lt.char_error("", "abc") == -1.0
  assert lt.char_error("abcdefgh", "ab") == -1.0      # Clipped at CER 1.
  assert lt.char_error("café", "cafe") == pytest.approx(-2 / 4)  # 2 bytes.


def test_tunix_records_are_means_over_log_every_steps():
  import llm_rl_tunix as lt
  per_step = [{"reward": -r, "completion_length": float(r),
               "empty_fraction": 0.0} for r in range(1, 8)]
  points = lt.records(per_step, np.arange(1.0, 8.0), every=3)
  assert [p["step"] for p in points] == [3, 6, 7]
  assert [p["wall_s"] for p in points] == [6.0, 21.0, 28.0]
  assert [p["reward"] for p in points] == [-2.0, -5.0, -7.0]
  assert [p["completion_length"] for p in points] == [2.0, 5.0, 7.0]


@pytest.mark.skipif(not _HAVE_TUNIX, reason="tunix is not installed")
def test_tunix_model_and_adapters_are_our_function(tmp_path):
  """Our weights in Tunix's Llama3 give our logits (with the rope theta
  patch; without it they do not), and Tunix's trained LoRA folded back into
  our layout gives Tunix's logits."""
  import jax
  import jax.numpy as jnp
  import gguf_files
  import llm_rl_tunix as lt
  import qwix
  from flax import nnx
  from tunix.models.llama3 import model as llama3
  from ir_jax import pretrained
  from ir_jax.models import lora
  path = str(tmp_path / "tiny.gguf")
  gguf_files.write(path, rope_theta=50_000.0)
  model, params = pretrained.load(path)
  cfg = lt.model_config(pretrained.hf_config(path))
  assert cfg.rope_theta == 50_000 and cfg.weight_tying
  tm = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
  lt.to_tunix(tm, params, cfg)
  ids = np.random.default_rng(0).integers(5, cfg.vocab_size, (2, 40))
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids))[0])
  assert np.abs(ours - np.asarray(lt.logits(tm, ids))).max() > 0.1
  targets = ("query", "key", "value", "out", "wi_gate", "wi_up", "wo")
  with lt.patched_rope(cfg.rope_theta):
    np.testing.assert_allclose(np.asarray(lt.logits(tm, ids)), ours,
                               atol=1e-4, rtol=0)
    provider = qwix.LoraProvider(
        module_path="|".join(f".*{lt.TARGETS[t][1]}" for t in targets),
        rank=4, alpha=16.0)
    actor = qwix.apply_lora_to_model(tm, provider, rngs=nnx.Rngs(1),
                                     **tm.get_model_input())
    # Trained adapters: B is no longer zero.
    state = nnx.state(actor, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(2), 1000))
    state = jax.tree.map(lambda v: v + 0.05 * jax.random.normal(
        next(keys), v.shape), state)
    nnx.update(actor, state)
    theirs = np.asarray(lt.logits(actor, ids))
  assert np.abs(theirs - ours).max() > 0.1
  adapters = lt.adapters_of(actor, targets)
  adapted, fresh = lora.add_adapters(model, params, rank=4, alpha=16.0,
                                     targets=targets, rng=jax.random.key(0))
  assert set(adapters) == set(lora.split(fresh)[0])
  merged_model, merged = lora.merge(adapted, lora.join(
      adapters, lora.split(fresh)[1]))
  np.testing.assert_allclose(
      np.asarray(merged_model.apply({"params": merged}, jnp.asarray(ids))[0]),
      theirs, atol=1e-4, rtol=0)


def test_report_pools_seeds_and_takes_ratios_by_hand(tmp_path):
  import llm_rl_study as study
  items = [("p1", "abcd"), ("p2", "xy")]
  outputs = {("sft", 0): ["abcd", "x"], ("grpo_token", 0): ["abcd", "xy"],
             ("grpo_token", 1): ["abc", "xy"],
             ("grpo_sequence", 0): ["ab", "xy"],
             ("grpo_sequence", 1): ["abcd", ""]}
  for (arm, seed), outs in outputs.items():
    d = tmp_path / arm / f"seed{seed}"
    d.mkdir(parents=True)
    with open(d / "test.jsonl", "w") as f:
      for (prompt, target), out in zip(items, outs):
        f.write(json.dumps({"prompt": prompt, "target": target,
                            "output": out}) + "\n")
  row = lambda arm, seed, steps, secs: {
      "arm": arm, "seed": seed, "steps": 60, "wall_s": 600.0,
      "test_exact": 0.5, "test_cer": 0.1, "steps_to_target": steps,
      "seconds_to_target": secs, "reward_at_equal_rollouts": -0.4}
  summary = {"model": "m", "task": "t", "target_reward": -0.5, "runs": [
      row("grpo_token", 0, 20, 200.0), row("grpo_token", 1, 30, 300.0),
      row("grpo_sequence", 0, 40, 400.0), row("grpo_sequence", 1, None,
                                               None)]}
  rep = study.report(str(tmp_path), summary)
  assert set(rep["tests"]) == {"grpo_token_vs_sft", "grpo_sequence_vs_sft",
                               "grpo_token_vs_grpo_sequence"}
  t = rep["tests"]["grpo_token_vs_sft"]
  # Token: 0 + 0 errors (seed 0), 1 + 0 (seed 1) over 6 + 6 bytes; the
  # start (repeated): 0 + 1, 0 + 1.
  assert t["seeds"] == [0, 1] and t["items"] == 4
  assert t["cer_a"] == pytest.approx(1 / 12)
  assert t["cer_b"] == pytest.approx(2 / 12)
  assert t["per_seed_delta_cer"] == pytest.approx([-1 / 6, 0.0])
  assert t["exact_a"] == 0.75 and t["exact_b"] == 0.5
  s = rep["tests"]["grpo_token_vs_grpo_sequence"]
  # Sequence: 2 + 0 (seed 0), 0 + 2 (seed 1).
  assert s["cer_b"] == pytest.approx(4 / 12)
  assert rep["ratios"] == [
      {"seed": 0, "rollouts_token_over_sequence": 0.5,
       "seconds_token_over_tunix": None,
       "step_seconds_token_over_tunix": None},
      {"seed": 1, "rollouts_token_over_sequence": None,
       "seconds_token_over_tunix": None,
       "step_seconds_token_over_tunix": None}]
  assert rep["output_bytes"]["sft/seed0"] == {"output": 2.5, "target": 3.0,
                                              "empty": 0}
  assert rep["output_bytes"]["grpo_sequence/seed1"] == {
      "output": 2.0, "target": 3.0, "empty": 1}
  # Over seeds: the rows' 0.5 / 0.1; token outputs 6 / 2 = 3 and 5 / 2 bytes.
  assert rep["arms"]["grpo_token"] == {
      "seeds": [0, 1], "test_exact": [0.5, 0.5, 0.5],
      "test_cer": [0.1, 0.1, 0.1], "output_bytes": [2.75, 2.5, 3.0],
      "steps_to_target": [20, 30], "reached": 2}
  assert rep["arms"]["grpo_sequence"]["reached"] == 1
  md = open(tmp_path / "report.md").read()
  assert "| grpo_token | 2 | 50.00% (50.00%..50.00%) |" in md
  # The start: "x" for "xy" is one missing byte of 6; sequence seed 1's
  # "" for "xy" two.
  assert rep["error_split"]["sft/seed0"] == pytest.approx(
      {"sub": 0.0, "ins": 0.0, "del": 1 / 6})
  assert rep["error_split"]["grpo_sequence/seed1"]["del"] == pytest.approx(
      2 / 6)
  # Variety: the start's 2 outputs are distinct; grpo_token seed 1's too.
  assert rep["variety"]["sft/seed0"] == {"distinct": 1.0,
                                         "target_distinct": 1.0,
                                         "top": ["abcd", 1]}
  assert ("| SFT start | 0 | - | - | 50.00% | 16.67% | 0.00 / 0.00 / 16.67 "
          "| 2.50 (0) | 100.00% (`abcd` x1) |") in md
  assert "| 0 | 0.50x | - | - |" in md and "| 1 | - | - | - |" in md
