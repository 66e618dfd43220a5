"""End to end: a random tiny Hugging Face Llama -> `ir-jax train` on a JSONL
text task (experiments/hf.py, LoRA or full, CE / RL with in-loop rewards)
-> metrics -> `hf.save` -> `transformers` loads it with the same logits."""

import json
import os
import sys

import flax
import jax
import numpy as np
import pytest

# Needs torch (its CPU wheel: Python 3.11; CI's jax 0.10.2 leg runs it).
pytestmark = pytest.mark.torch
torch = pytest.importorskip(
    "torch", reason='pip install -e ".[test]" (pins the CPU torch==2.13.0)')
transformers = pytest.importorskip("transformers")

from helpers import ROOT, read  # noqa: E402
from ir_jax import cli, config as config_lib, models, train, workdir  # noqa: E402
from ir_jax.models import hf, lora  # noqa: E402

sys.path[:0] = [os.path.join(ROOT, "tests", d) for d in ("models", "data")]
import test_hf  # noqa: E402
from test_hf_tokenizer import make_tokenizer  # noqa: E402

WORDS = ["quick", "brown", "lazy", "dog", "fox", "over", "the", "cafe"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A tiny random Llama with a BPE tokenizer whose pad / BOS / EOS are 0 /
  1 / 2 (not the project vocabulary's 0 / 1 / 3), and a JSONL task."""
  path = tmp_path_factory.mktemp("llama")
  vocab = len(make_tokenizer(path))
  old, test_hf.VOCAB = test_hf.VOCAB, vocab
  try:
    test_hf.make_hf("llama", path, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0)
  finally:
    test_hf.VOCAB = old
  for split in ("train", "dev"):
    with open(path / f"{split}.jsonl", "w") as f:
      for w in WORDS:
        f.write(json.dumps({"prompt": f"the {w}", "target": f" {w}"}) + "\n")
  return str(path)


def config_for(checkpoint, arg, **over):
  c = config_lib.load(os.path.join(ROOT, "experiments", "hf.py") + ":" + arg
                      + ",tiny")
  c.model.hf_path = checkpoint
  c.data.train_path = os.path.join(checkpoint, "train.jsonl")
  c.data.eval_path = os.path.join(checkpoint, "dev.jsonl")
  c.data.source_len, c.data.target_len = 8, 6
  c.log_every = 1
  for k, v in over.items():
    section, field = k.split(".") if "." in k else (None, k)
    (c[section] if section else c)[field] = v
  return c


def flat(params):
  return {"/".join(k): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(params).items()}


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["lora,instant", "full,mwer", "lora,grpo"])
def test_train_rl_on_a_hf_llama_then_export(checkpoint, arg, tmp_path):
  config = config_for(checkpoint, arg, **({"rl.kl_weight": 0.1}
                                          if "lora" in arg else {}))
  wd = str(tmp_path / "run")
  results = train.train_and_evaluate(config, wd)
  assert set(results["dev"]) >= {"per", "wer", "exact_match", "cer", "ter"}
  rows = [r for r in read(os.path.join(wd, "metrics.jsonl")) if "split" not in r]
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  assert all("greedy_reward" in r and "reward" in r for r in rows)
  if "lora" in arg:
    # Step 1 starts from zero adapters: the policy is the reference (the
    # adapters off) up to rounding; then they move apart.
    assert abs(rows[0]["kl"]) < 1e-6
    assert abs(rows[-1]["kl"]) > 1e-5

  with workdir.checkpoint_manager(wd) as manager:
    saved = manager.item_metadata(manager.latest_step())["state"]["params"]
  saved = ["/".join(k) for k in flax.traverse_util.flatten_dict(saved)]
  if "lora" in arg:  # Checkpoints hold the adapters; the base is hf_path.
    assert saved and all(k.split("/")[-1] in lora.ADAPTERS for k in saved)
  else:
    assert "embed/embedding" in saved
  _, task, model, params = workdir.load_run(wd)
  assert models.special_ids(model) == (0, 2)
  base = flat(hf.load(checkpoint)[1])
  trained = flat(params)
  adapters = {k: v for k, v in trained.items() if "lora_" in k}
  if "lora" in arg:
    assert adapters and any(np.abs(v).max() > 0 for k, v in adapters.items()
                            if k.endswith("lora_b"))
    for k, v in base.items():   # The frozen base, bit for bit.
      np.testing.assert_array_equal(trained[k], v, err_msg=k)
  else:
    assert not adapters
    assert any(not np.array_equal(trained[k], v) for k, v in base.items())

  out = str(tmp_path / "export")
  hf.save(out, model, params)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert theirs.config.eos_token_id == 2 and theirs.config.pad_token_id == 0
  ids, mask = test_hf.ragged([6, 3], 6, seed=2)
  ours = hf.logits(*lora.merge(model, params), ids, mask)
  unmerged = hf.logits(model, params, ids, mask)
  want = test_hf.torch_logits(theirs, ids, mask)
  assert test_hf.max_diff(ours, want, mask) < 1e-4
  assert test_hf.max_diff(unmerged, want, mask) < 1e-4


@pytest.mark.slow
def test_generate_text_and_adapter_only_optimizer_state(checkpoint, tmp_path,
                                                        capsys):
  config = config_for(checkpoint, "lora", total_steps=2, eval_every=2,
                      checkpoint_every=2)
  wd = str(tmp_path / "run")
  train.train_and_evaluate(config, wd)
  capsys.readouterr()
  assert cli.main(["generate", "--workdir", wd, "--text", "the quick",
                   "--text", "the lazy"]) == 0
  lines = capsys.readouterr().out.rstrip("\n").split("\n")
  assert [l.split("\t")[0] for l in lines] == ["the quick", "the lazy"]
  assert cli.main(["generate", "--workdir", wd, "quick"]) == 0  # Prompts too.

  from ir_jax import state as state_lib
  task = state_lib.setup(config).task
  model = state_lib.make_model(config, task)
  tx = state_lib.make_optimizer(config)
  state = jax.eval_shape(lambda: state_lib.init_state(config, model, tx,
                                                      task))
  size = lambda t: sum(x.size for x in jax.tree.leaves(t))
  adapters = size(lora.split(state.params)[0])
  assert adapters and size(state.opt_state) <= 2 * adapters + 8
  # No second copy of the embedding table without a cosine reward.
  assert state.reward_embeddings.shape[0] == 1


@pytest.mark.slow
def test_own_charlm_exports_with_a_tokenizer_and_generates_alike(tmp_path):
  """The pre-train -> export half of the pipeline (experiments/
  hf_pipeline.py): `ir-jax export` of a from-scratch char LM is a complete
  checkpoint; transformers' tokenizer gives the model's source layout and
  its greedy generate the same text as ir_jax; `hf.load` reads it back
  with the project's special ids."""
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import hf_pipeline
  wd, out = str(tmp_path / "lm"), str(tmp_path / "hf")
  assert cli.main(["train", "--config", "experiments/charlm.py:tiny",
                   "--workdir", wd, "--config.total_steps=20"]) == 0
  assert cli.main(["export", "--workdir", wd, "--out", out]) == 0
  for name in ("config.json", "model.safetensors", "tokenizer.json"):
    assert os.path.exists(os.path.join(out, name)), name
  _, task, _, _ = workdir.load_run(wd)
  prompts = task.eval_sets["test"].keys[:6]
  tok = transformers.AutoTokenizer.from_pretrained(out)
  np.testing.assert_array_equal(
      tok(prompts[0])["input_ids"],
      [i for i in task.encode_sources([list(prompts[0])])[0] if i])
  matches, pairs = hf_pipeline.hf_parity(out, wd, prompts, new_tokens=12)
  assert matches == len(prompts), pairs
  model, _ = hf.load(out)
  assert models.special_ids(model) == (0, 3)


@pytest.mark.slow
def test_adapter_only_checkpoints_resume_exactly(checkpoint, tmp_path,
                                                 monkeypatch):
  """A LoRA run saves adapters only and, after a crash, resumes from them
  (the base re-read from model.hf_path) to the same params as an
  uninterrupted run."""
  from ir_jax.data import tasks
  config = lambda: config_for(checkpoint, "lora,instant", total_steps=6,
                              checkpoint_every=2, eval_every=100)
  whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
  train.train_and_evaluate(config(), whole)
  real = tasks.train_dataset

  def crashing(*args, **kwargs):
    count = {"n": 0}
    def fail_after(batch):
      count["n"] += 1
      if count["n"] > 3:
        raise KeyboardInterrupt("simulated crash")
      return batch
    return real(*args, **kwargs).map(fail_after)
  monkeypatch.setattr(tasks, "train_dataset", crashing)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config(), part)
  monkeypatch.setattr(tasks, "train_dataset", real)
  train.train_and_evaluate(config(), part)
  a, b = workdir.load_run(whole)[3], workdir.load_run(part)[3]
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ------------------------------------------------------------- GGUF runs


@pytest.fixture(scope="module")
def gguf_checkpoint(tmp_path_factory):
  """A tiny GGUF Llama (Q8_0 matrices; pads with <|im_end|>, as SmolLM2)
  and a JSONL task."""
  import gguf_files
  path = tmp_path_factory.mktemp("gguf")
  weights = gguf_files.write(str(path / "tiny.gguf"), types={"matrix": "Q8_0"})
  for split in ("train", "dev"):
    with open(path / f"{split}.jsonl", "w") as f:
      for w in WORDS:
        f.write(json.dumps({"prompt": f"Spell {w}", "target": f" {w}"}) + "\n")
  return str(path), weights


def test_train_from_a_gguf_file_with_the_chat_template(gguf_checkpoint,
                                                       tmp_path):
  """LoRA + GRPO from a .gguf file, prompts as ChatML turns: one copy of
  the weights in the state, f32 weights kept f32 under bf16 compute, and
  eval / generate / export all read the file."""
  from ir_jax import state as state_lib
  from ir_jax.models import gguf
  root, weights = gguf_checkpoint
  c = config_for(root, "lora,grpo,chat,bf16")
  c.model.hf_path = os.path.join(root, "tiny.gguf")
  c.data.source_len, c.data.target_len = 96, 8
  task, model, tx, mesh, rules = state_lib.setup(c)
  prompt = task.train["source"][0]
  assert (prompt == task.pad_id).sum() > 0          # Left padding, and
  assert task.pad_id in prompt[np.argmax(prompt != task.pad_id):]  # inner.
  with jax.set_mesh(mesh), flax.linen.logical_axis_rules(rules):
    _, shardings = state_lib.state_shardings(c, model, tx, task, mesh)
    # Held, so that no id below is a freed array's, reused.
    alive = jax.live_arrays()
    before = {id(x) for x in alive}
    state, ref = train._start_from_hf(c, tx, task, model, mesh, rules,
                                      shardings)
    new = [x for x in jax.live_arrays() if id(x) not in before]
  params = sum(x.nbytes for x in jax.tree.leaves(state.params))
  others = sum(x.nbytes for x in jax.tree.leaves(state)) - params
  assert ref is None                     # LoRA: the adapters turned off.
  assert sum(x.nbytes for x in new) == params + others
  assert state.params["embed"]["embedding"].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(state.params["embed"]["embedding"]),
                                weights["model.embed_tokens.weight"])
  out = str(tmp_path / "run")
  train.train_and_evaluate(c, out)
  records = [r for r in read(os.path.join(out, "metrics.jsonl"))
             if "loss" in r]
  assert records and np.isfinite(records[-1]["loss"])
  assert cli.main(["generate", "--workdir", out, "--text", "Spell fox"]) == 0
  export = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", out, "--out", export]) == 0
  tok = transformers.AutoTokenizer.from_pretrained(export)
  assert tok(" fox")["input_ids"] == gguf.tokenizer(
      c.model.hf_path).encode(" fox")


def test_dry_run_counts_what_loading_a_gguf_file_needs(gguf_checkpoint,
                                                       capsys):
  root, _ = gguf_checkpoint
  spec = os.path.join(ROOT, "experiments", "hf.py") + ":full,grpo,tiny"
  assert cli.main(["train", "--config", spec, "--dry-run",
                   f"--config.model.hf_path={root}/tiny.gguf",
                   f"--config.data.train_path={root}/train.jsonl",
                   f"--config.data.eval_path={root}/dev.jsonl"]) == 0
  out = capsys.readouterr().out
  reference = [l for l in out.splitlines() if l.strip().startswith("reference")]
  params = [l for l in out.splitlines() if l.strip().startswith("params")]
  assert reference and reference[0].split()[1] == params[0].split()[1]
  assert "loading model.hf_path" in out


def test_grpo_with_byte_level_rewards_from_the_config(gguf_checkpoint,
                                                      tmp_path):
  """rl.rewards names the byte-level rewards; their table is built from the
  tokenizer and passed to the step; every term and empty_fraction logged."""
  from ir_jax import state as state_lib
  root, _ = gguf_checkpoint
  c = config_for(root, "lora,grpo,chat")
  c.model.hf_path = os.path.join(root, "tiny.gguf")
  c.data.source_len, c.data.target_len = 96, 8
  c.rl.rewards = "char_error:1.0,char_exact_match:0.5"
  task, model, _, _, _ = state_lib.setup(c)
  got = state_lib.byte_table(c, task, model)
  table, lengths = got.token_bytes, got.token_byte_lengths
  assert got.max_target_bytes == max(len(w) for w in WORDS) + 1
  assert table.shape[0] == lengths.shape[0] == model.vocab_size
  assert lengths[task.eos_id] == 0
  out = str(tmp_path / "run")
  train.train_and_evaluate(c, out)
  records = [r for r in read(os.path.join(out, "metrics.jsonl"))
             if "reward" in r]
  assert records
  for r in records:
    assert -1.0 <= r["reward/char_error"] <= 0.0
    assert 0.0 <= r["empty_fraction"] <= 1.0
    np.testing.assert_allclose(
        r["reward"], r["reward/char_error"] + 0.5 * r["reward/char_exact_match"],
        atol=1e-5)
  c.rl.rewards = "edit_distance:1.0"
  assert state_lib.byte_table(c, task, model) is None
