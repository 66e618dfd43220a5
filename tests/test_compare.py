"""experiments/compare.py end to end on the tiny config: branch point,
arms, seeds, the results files of #15 and their statistics."""

import json
import os
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))


@pytest.mark.slow
def test_compare_runs_end_to_end_and_writes_the_results_format(tmp_path):
  import compare
  from ir_jax import evaluate, workdir
  out = tmp_path / "out"
  call = lambda arms, seeds: compare.main([
      "--task", "g2p", "--tiny", "--arms", arms, "--seeds", seeds, "--runs",
      str(tmp_path / "runs"), "--out", str(out)])
  call("ce,mwer", "0,1")
  # A later call adds an arm without retraining ce; every arm needs the
  # ce run of its seed.
  summary = call("ocd_scratch", "0,1")
  with pytest.raises(SystemExit):
    call("mwer", "5")
  disk = json.load(open(out / "g2p" / "summary.json"))
  curves = json.load(open(out / "g2p" / "curves.json"))
  assert set(curves) == {f"{a}/seed{s}" for a in ("ce", "mwer", "ocd_scratch")
                         for s in (0, 1)}
  assert disk["runs"] == json.loads(json.dumps(summary["runs"]))
  assert {(r["arm"], r["seed"]) for r in disk["runs"]} == {
      (a, s) for a in ("ce", "mwer", "ocd_scratch") for s in (0, 1)}
  for r in disk["runs"]:
    assert set(r) == {"arm", "seed", "test_per", "test_wer", "dev_per",
                      "dev_wer", "steps", "wall_s"}
    assert 0 <= r["test_wer"] <= 1
    assert r["steps"] == (10 if r["arm"] == "ocd_scratch" else 4)
  task = workdir.load_run(str(tmp_path / "runs" / "g2p" / "ce" / "seed0"))[1]
  scratch = workdir.load_run(str(tmp_path / "runs" / "g2p" / "ocd_scratch" /
                                 "seed0"))[0]
  assert not scratch.init_from and scratch.rl.mode == "ocd"  # No branch.
  test = task.eval_sets["test"]
  for r in disk["runs"]:
    path = out / "g2p" / r["arm"] / f"seed{r['seed']}" / "test.tsv"
    lines = path.read_text().splitlines()
    assert [l.split("\t")[0] for l in lines] == test.keys
    outputs = evaluate.read_outputs(str(path))
    rates = evaluate.error_rates([outputs[k] for k in test.keys],
                                 test.references)
    assert rates["per"] == pytest.approx(r["test_per"])
  def pooled_per(arm, seeds):
    """PER over the seeds' test.tsv files together, from scratch."""
    outs, refs = [], []
    for s in seeds:
      got = evaluate.read_outputs(str(out / "g2p" / arm / f"seed{s}" /
                                      "test.tsv"))
      outs += [got[k] for k in test.keys]
      refs += list(test.references)
    return evaluate.error_rates(outs, refs)["per"]

  item = evaluate.item_lengths(test.references)
  per_bucket = {n: int(((item >= lo) & (item <= hi)).sum())
                for n, lo, hi in compare.BUCKETS["g2p"]}
  for arm in ("mwer", "ocd_scratch"):
    v = disk["vs_ce"][arm]
    assert {"delta_per", "ci95", "p_value", "mcnemar_p"} <= set(v)
    assert v["ci95"][0] <= v["delta_per"] <= v["ci95"][1]
    assert 0 < v["p_value"] <= 1 and 0 < v["mcnemar_p"] <= 1
    # The pooled and per-seed deltas are the PER differences of the files
    # (planted bug this catches: the arm's seed 0 paired with ce's seed 1,
    # or ce's errors over the arm's reference lengths).
    assert v["delta_per"] == pytest.approx(
        pooled_per(arm, v["seeds"]) - pooled_per("ce", v["seeds"]), abs=1e-12)
    for s in v["per_seed"]:
      assert s["delta_per"] == pytest.approx(
          pooled_per(arm, [s["seed"]]) - pooled_per("ce", [s["seed"]]),
          abs=1e-12)
    # Buckets hold items by their own shortest reference: the same counts
    # for every arm, every pooled item in one bucket.
    assert {n: x["items"] for n, x in v["buckets"].items()} == {
        n: len(v["seeds"]) * c for n, c in per_bucket.items()
        if len(v["seeds"]) * c >= 2}
  b = disk["branch"]
  assert 0 <= b["oracle_test_wer"] <= b["test_wer"] <= 1
  assert disk["branches"] == {"0": b, "1": b}
  assert (out / "g2p" / "summary.md").read_text().startswith("| arm |")
  assert os.path.getsize(out / "g2p" / "reward.png") > 1000
  # A rerun finds every run finished and trains nothing.
  again = compare.main(["--task", "g2p", "--tiny", "--arms", "ce,mwer",
                        "--seeds", "0", "--runs", str(tmp_path / "runs"),
                        "--out", str(tmp_path / "out2")])
  assert [r["wall_s"] for r in again["runs"]] == [
      r["wall_s"] for r in disk["runs"] if r["seed"] == 0 and r["arm"] in
      ("ce", "mwer")]
  # A seed's arms all start from one branch: a call that would retrain
  # seed 0's ce from another branch than its other arms had is refused.
  summary_path = out / "g2p" / "summary.json"
  saved = summary_path.read_text()
  other = json.loads(saved)
  other["branches"]["0"] = dict(other["branches"]["0"], dev_per=0.5)
  summary_path.write_text(json.dumps(other))
  with pytest.raises(SystemExit, match="seed 0.*mwer"):
    compare.main(["--task", "g2p", "--tiny", "--arms", "ce", "--seeds", "0",
                  "--runs", str(tmp_path / "runs"), "--out", str(out)])
  summary_path.write_text(saved)
  # A later call adds decoding arms (the ce run of seed 0, beam 4 and MBR
  # over 8 samples) and keeps the earlier calls' runs.
  more = compare.main(["--task", "g2p", "--tiny", "--arms",
                       "ce,ce_beam4,ce_mbr8", "--seeds", "0", "--runs",
                       str(tmp_path / "runs"), "--out", str(out)])
  keys = lambda rs: sorted((r["arm"], r["seed"]) for r in rs)
  assert keys(more["runs"]) == sorted(keys(disk["runs"]) + [
      ("ce_beam4", 0), ("ce_mbr8", 0)])
  for arm, kw in (("ce_beam4", {"beam": 4}), ("ce_mbr8", {"mbr": 8})):
    r = next(r for r in more["runs"] if r["arm"] == arm)
    assert r["decode_s"] > 0 and r["steps"] == 4
    config, task, model, params = workdir.load_run(
        str(tmp_path / "runs" / "g2p" / "ce" / "seed0"))
    want = evaluate.generate_symbols(model, {"params": params}, task,
                                     test.source, 1024, test.direction,
                                     seed=config.seed, **kw)
    outputs = evaluate.read_outputs(
        str(out / "g2p" / arm / "seed0" / "test.tsv"))
    assert [outputs[k] for k in test.keys] == [tuple(o) for o in want]
    assert more["vs_ce"][arm]["seeds"] == [0]
  assert "ce_mbr8" in (out / "g2p" / "summary.md").read_text()
