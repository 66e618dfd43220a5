"""Curves from metrics.jsonl: one PNG per panel, readable and non-empty."""

import json
import os

from ir_jax import plots


def test_plot_workdir_writes_three_pngs(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in (5, 10, 15):
      f.write(json.dumps({"step": step, "loss": 3.0 / step, "ce": 3.0 / step,
                          "reward": -1.0 / step, "soft_ed": 0.5,
                          "alpha": 0.1}) + "\n")
    for split in ("dev", "test"):
      f.write(json.dumps({"step": 15, "split": split, "per": 0.2,
                          "wer": 0.5, "words": 10}) + "\n")
  paths = plots.plot_workdir(str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == [
      "eval.png", "loss.png", "reward.png"]
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(p) > 1000
