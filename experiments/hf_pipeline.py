"""Pre-train -> export to Hugging Face -> post-train with instant rewards,
end to end on this machine (no download):

  python experiments/hf_pipeline.py            # ~20 min on a 2-core CPU

1. Pre-train the project's Transformer (a Llama architecture: RMSNorm,
   RoPE, SwiGLU, untied head) as a character LM on Python's own docs
   (experiments/charlm.py, CE).
2. `ir-jax export` it: config.json + safetensors + a character
   tokenizer.json whose encoding is the model's source layout.
3. `transformers` loads it; its greedy `generate` must give the same text
   as `ir_jax` on held-out prompts.
4. Post-train the exported checkpoint (`--config.model.hf_path`) on G2P
   written as text (`python -m ir_jax.data.text --cmudict`), RL mode
   `instant` (K=4 samples, edit-distance reward advanced at every sampled
   character, (1 - alpha) CE mix, KL to the exported model), full fine-tune
   (experiments/hf.py:full,instant).
5. Score before and after with the same text scores (exact match, PER
   over phonemes, CER), on the first `--eval_items` dev words.

Writes benchmarks/results/hf_pipeline.json (docs/hf.md quotes it); runs in
runs/hf_pipeline/ and skips finished steps on a rerun.
"""

import argparse
import json
import os
import subprocess
import sys
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ir_jax import config as config_lib  # noqa: E402
from ir_jax import evaluate, train, workdir as workdir_lib  # noqa: E402
from ir_jax.data import tasks, text  # noqa: E402


def _cli(*args):
  subprocess.run([sys.executable, "-m", "ir_jax.cli", *args], cwd=ROOT,
                 check=True)


def hf_parity(checkpoint, pretrain_wd, prompts, new_tokens=16):
  """(matches, pairs): HF greedy generate vs `ir_jax.decode.generate` of
  the pre-trained workdir, as text, on `prompts`."""
  import torch
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
  tok.padding_side = "left"
  theirs = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
  batch = tok(prompts, return_tensors="pt", padding=True)
  with torch.no_grad():
    out = theirs.generate(**batch, do_sample=False, max_new_tokens=new_tokens,
                          pad_token_id=tok.pad_token_id)
  hf_text = tok.batch_decode(out[:, batch["input_ids"].shape[1]:],
                             skip_special_tokens=True)
  _, task, model, params = workdir_lib.load_run(pretrain_wd)
  source = task.encode_sources([list(p) for p in prompts])
  import dataclasses
  task = dataclasses.replace(task, target_len=new_tokens)
  ours = evaluate.generate_symbols(model, {"params": params}, task, source)
  ours = ["".join(o) for o in ours]
  pairs = list(zip(prompts, hf_text, ours))
  return sum(a == b for _, a, b in pairs), pairs


def scores(config, model, params, task):
  data = task.eval_sets["dev"]
  outputs = evaluate.generate_symbols(model, {"params": params}, task,
                                      data.source, config.eval_batch_size,
                                      "text")
  return evaluate.split_scores(task, outputs, data.references)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--runs", default=os.path.join(ROOT, "runs", "hf_pipeline"))
  p.add_argument("--pretrain_steps", type=int, default=1500)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--arm", default="full,instant",
                 help="experiments/hf.py ARG of the post-training")
  p.add_argument("--eval_items", type=int, default=1000)
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "hf_pipeline.json"))
  args = p.parse_args(argv)
  result = {"date": time.strftime("%Y-%m-%d"), "args": {
      k: os.path.relpath(v, ROOT) if k in ("runs", "out") else v
      for k, v in vars(args).items()}}
  os.makedirs(args.runs, exist_ok=True)

  # 1. Pre-train.
  pre = os.path.join(args.runs, "pretrain")
  t0 = time.time()
  if os.path.isdir(pre) and workdir_lib.latest_step(pre) is not None:
    print(f"{pre}: pre-trained already.")
  else:
    _cli("train", "--config", "experiments/charlm.py", "--workdir", pre,
         f"--config.total_steps={args.pretrain_steps}")
    with open(os.path.join(pre, "wall_s.txt"), "w") as f:
      f.write(f"{time.time() - t0!r}\n")
  records = [json.loads(l) for l in open(os.path.join(pre, "metrics.jsonl"))]
  result["pretrain"] = {r["split"]: {"cer": r["per"], "wrong": r["wer"]}
                        for r in records if r.get("split") in ("dev", "test")}
  wall = os.path.join(pre, "wall_s.txt")
  result["pretrain"]["wall_s"] = (float(open(wall).read())
                                  if os.path.exists(wall) else None)

  # 2. Export, 3. parity with transformers.
  ckpt = os.path.join(args.runs, "hf")
  _cli("export", "--workdir", pre, "--out", ckpt)
  charlm = tasks.charlm(max_eval_items=64)
  prompts = charlm.eval_sets["test"].keys[:16]
  matches, pairs = hf_parity(ckpt, pre, prompts)
  result["hf_generate_parity"] = {"prompts": len(pairs), "equal": matches,
                                  "examples": pairs[:3]}
  print(f"transformers greedy == ir_jax greedy on {matches}/{len(pairs)} "
        "prompts")

  # 4. G2P as text; 5. before / after.
  data = os.path.join(args.runs, "cmudict_jsonl")
  if not os.path.exists(os.path.join(data, "test.jsonl")):
    text.write_cmudict(data)
  c = config_lib.load(os.path.join(ROOT, "experiments", "hf.py") + ":" +
                      args.arm)
  c.model.hf_path = ckpt
  c.data.train_path = os.path.join(data, "train.jsonl")
  c.data.eval_path = os.path.join(data, "dev.jsonl")
  c.data.test_path = ""
  c.data.source_len, c.data.target_len = 40, 40
  c.data.max_eval_items = args.eval_items
  c.total_steps = args.steps
  c.batch_size = args.batch
  c.eval_batch_size = 500
  c.eval_every = c.checkpoint_every = args.steps
  c.optim.learning_rate = 1e-3 if "full" in args.arm else 3e-3
  from ir_jax import state as state_lib
  from ir_jax.models import hf
  task = state_lib.build_task(c)
  model = state_lib.make_model(c, task).clone(lora_rank=0)
  before = scores(c, model, hf.load_params(ckpt, model), task)
  result["before"] = before
  print("before:", before)
  post = os.path.join(args.runs, "post_" + args.arm.replace(",", "_"))
  t0 = time.time()
  final = train.train_and_evaluate(c, post)
  result["after"] = {k: final["dev"][k] for k in
                     ("per", "wer", "exact_match", "cer", "ter")}
  result["post_wall_s"] = time.time() - t0
  result["data_report"] = task.report
  rows = [json.loads(l) for l in open(os.path.join(post, "metrics.jsonl"))
          if "split" not in json.loads(l)]
  result["greedy_reward"] = [(r["step"], r.get("greedy_reward"))
                             for r in rows]
  print("after:", result["after"])
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1, default=float)
  print(args.out)
  return result


if __name__ == "__main__":
  main()
