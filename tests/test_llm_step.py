"""benchmarks/llm_step.py end to end on a tiny random llama GGUF: every
system's row (Tunix's skipped only where tunix is absent), phases, peak
memory from a process of its own, and shared-vs-repeated parity."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_llm_step_benchmark_end_to_end(tmp_path):
  import gguf_files
  from benchmarks import llm_step
  gguf = str(tmp_path / "tiny.gguf")
  gguf_files.write(gguf)
  out = tmp_path / "llm_step.json"
  llm_step.main(["--gguf", gguf, "--tiny", "--shapes", "study", "--rounds",
                 "2", "--json", str(out)])
  payload = json.loads(out.read_text())
  systems = [r["system"] for r in payload["rows"]]
  want = ["ir_jax", "ir_jax_repeated"] + (["tunix"] if llm_step.have_tunix()
                                          else [])
  assert systems == want
  for r in payload["rows"]:
    assert set(r) >= {"shape", "system", "step_s", "step_iqr_s", "phases",
                      "peak_mb"}
    assert r["shape"] == "study" and r["step_s"] > 0 and r["peak_mb"] > 100
    assert len(r["steps"]) == 4 and r["step_iqr_s"] >= 0
    assert all(v >= 0 for v in r["phases"].values())
  ours = payload["rows"][0]["phases"]
  assert set(ours) == {"sampling", "reward", "reference_forward",
                       "policy_forward_backward", "optimizer"}
  parity = payload["parity"]
  assert payload["parity_rel"] == max(parity["loss_rel"], parity["grad_rel"])
  assert 0 <= payload["parity_rel"] < 1e-5
  assert parity["floor_grad_rel"] < 1e-5
  md = (tmp_path / "llm_step.md").read_text()
  assert "x Tunix steps/s" in md and "parity_rel" in md
