"""Ahead-of-time compilation for TPU topologies (ir_jax.aot, `ir-jax compile`).

The pod configs are compiled for their real topologies with libtpu on this
CPU (the `tpu-aot` extra, installed by .ci/run); without libtpu those tests
skip and say why. FLOP counting is checked on the CPU backend.
"""

import copy
import glob
import json
import os
import subprocess
import sys

import jax
import pytest

from ir_jax import aot
from ir_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(
    os.path.join(ROOT, "tpu_configs", "*.py")) if "/_" not in p)
needs_libtpu = pytest.mark.tpu_compile   # Skipped without libtpu (conftest).


def test_every_pod_config_names_its_topology():
  assert POD_CONFIGS, "no tpu_configs found"
  for name in POD_CONFIGS:
    c = config_lib.load(os.path.join(ROOT, "tpu_configs", name))
    chip = aot.chip_of(c.topology)
    dims = [int(d) for d in c.topology.split(":")[1].split("x")]
    assert c.chips == int(__import__("math").prod(dims)), name
    assert chip.hbm_bytes > 0


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("name", POD_CONFIGS)
def test_pod_config_compiles_for_its_topology_and_fits(name):
  """Real shapes and topology, fast compile (FAST_OPTIONS), and fast mode
  tracks the full-effort compile: its memory is within 10% of the README
  table's (benchmarks/tpu_compile.py, full effort; rerun it when a config
  or the model changes)."""
  c = config_lib.load(os.path.join(ROOT, "tpu_configs", name))
  report = aot.compile_config(c, flops=False, fast=True,
                              print_fn=lambda *_: None)
  assert report["chips"] == c.chips
  assert report["fits"], report
  train = report["train"]
  assert 0 < train["total_bytes"] <= train["hbm_bytes"]
  # Params + Adam moments (f32) sharded over the mesh are a lower bound
  # (a LoRA config's moments are the adapters' only: params alone).
  lora = c.model.get("lora") is not None and c.model.lora.rank > 0
  assert train["argument_bytes"] >= (4 if lora else 12) * report["params"] / \
      c.chips * 0.9
  assert report["sampling"]["prompts"] == c.batch_size
  with open(os.path.join(ROOT, "benchmarks", "results",
                         "tpu_compile.json")) as f:
    full = json.load(f)["tpu_configs/" + name]
  assert report["params"] == full["params"]
  for part in ("train", "sampling"):
    assert report[part]["argument_bytes"] == full[part]["argument_bytes"]
    fast, want = report[part]["total_bytes"], full[part]["total_bytes"]
    if c.rl.mode:
      # The 8B RL step: fast mode keeps more temporaries (measured 22.7 vs
      # 18.6 GB for Llama LoRA), never fewer: a safe over-estimate.
      assert 0.9 * want <= fast <= 1.3 * want, part
    else:
      assert fast == pytest.approx(want, rel=0.1), part


@needs_libtpu
@pytest.mark.slow
def test_compile_cli_fails_and_names_buffers_when_it_does_not_fit(tmp_path):
  out = tmp_path / "r.json"
  proc = subprocess.run(
      [sys.executable, "-m", "ir_jax.cli", "compile", "--config",
       os.path.join(ROOT, "experiments", "g2p.py") + ":tiny",
       "--topology", "v5e:2x2", "--no-sampling", "--json", str(out),
       "--config.batch_size=4194304", "--config.mesh.data=-1"],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "DOES NOT FIT" in proc.stdout
  assert "does not fit in HBM" in proc.stderr
  report = json.loads(out.read_text())
  assert not report["fits"]
  assert "RESOURCE_EXHAUSTED" in report["train"]["compiler_error"]
  sizes = [b[0] for b in report["train"]["largest_buffers_global"]]
  assert sizes and sizes == sorted(sizes, reverse=True)
  assert sizes[0] > 2 ** 30
  assert "[4194304," in report["train"]["largest_buffers_global"][0][2]


def test_unknown_topology_and_chip_mismatch_are_clear():
  with pytest.raises(ValueError, match="Unknown TPU generation"):
    aot.chip_of("v9z:2x2")
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py") + ":tiny")
  with pytest.raises(ValueError, match="No topology"):
    aot.compile_config(c)


def _three_layer_config(kind, tmp_path):
  """A 3-layer scanned config: the project's Transformer, or a Hugging Face
  one, whose depth is its config.json's (not config.model.num_layers)."""
  if kind == "g2p":
    c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py") + ":tiny")
    c.model.update(num_layers=3, scan_layers=True)
  else:
    c = config_lib.load(os.path.join(ROOT, "tpu_configs",
                                     "qwen3_8b_v6e_64.py"))
    with open(os.path.join(c.model.hf_path, "config.json")) as f:
      hf = json.load(f)
    hf.update(num_hidden_layers=3, hidden_size=64, intermediate_size=128,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              vocab_size=256, bos_token_id=1, eos_token_id=2)
    with open(tmp_path / "config.json", "w") as f:
      json.dump(hf, f)
    c.model.hf_path = str(tmp_path)
    c.rl.mode = ""
    c.batch_size = 2
    c.data.source_len, c.data.target_len = 8, 4
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  return c


@pytest.mark.parametrize("kind", ["g2p", "hf"])
def test_flops_extrapolated_from_one_and_two_layers_equal_unrolled(kind,
                                                                  tmp_path):
  c = _three_layer_config(kind, tmp_path)
  devices = jax.devices()[:1]
  extrapolated, how = aot.step_flops(c, devices)
  assert "extrapolated" in how
  unrolled = copy.deepcopy(c)
  unrolled.model.scan_layers = False
  direct = aot.compiled_flops(aot.lower_step(unrolled, devices)[0].compile())
  assert extrapolated == pytest.approx(direct, rel=1e-3)
  if kind == "hf":  # The 1-layer compile is 1 layer (not the checkpoint's 3).
    lowered, *_, model, _, _ = aot.lower_step(c, devices, unrolled_layers=1)
    assert (model.num_layers, model.scan_layers) == (1, False)
    assert aot.compiled_flops(lowered.compile()) < 0.6 * direct
  else:
    scanned = aot.compiled_flops(aot.lower_step(c, devices)[0].compile())
    assert scanned < 0.8 * direct  # Why the extrapolation exists.


def test_throughput_and_largest_buffers():
  chip = aot.chip_of("v5p:2x2x1")
  t = aot.throughput(chip.peak_bf16_flops * 0.4, 1000, chip)
  assert t["step_s_at_40"] == pytest.approx(1.0)
  assert t["tokens_per_s_at_60"] == pytest.approx(1500.0)
  hlo = ("  %a = f32[1024,1024]{1,0} fusion(...)\n"
         "  ROOT %b = bf16[8]{0} add(...)\n  %c = (f32[2], s32[]) tuple()\n")
  assert aot.largest_buffers(hlo) == [(4 * 2 ** 20, "a", "f32[1024,1024]"),
                                      (16, "b", "bf16[8]")]


def test_rl_step_with_kl_reference_lowers():
  """The RL step takes the frozen KL reference as an argument: lowering
  (compile, dry-run) passes params-shaped stand-ins for it."""
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p_rl.py") +
                      ":instant,tiny")
  c.rl.kl_weight = 0.1
  c.init_from = "runs/g2p"   # The reference (only shapes are lowered).
  c.mesh.data = 1
  lowered = aot.lower_step(c, jax.devices()[:1])[0]
  assert aot.compiled_flops(lowered.compile()) > 0
