"""Post-train a Hugging Face checkpoint on a JSONL text task.

  python -m ir_jax.data.text --cmudict data/cmudict_jsonl      # G2P as text
  ir-jax train --config experiments/hf.py:lora,instant --workdir runs/hf \
      --config.model.hf_path=/path/to/Qwen3-0.6B \
      --config.data.train_path=data/cmudict_jsonl/train.jsonl \
      --config.data.eval_path=data/cmudict_jsonl/dev.jsonl
  ir-jax generate --workdir runs/hf --text "Pronounce ZEPHYR:"

ARG is a comma list:
  lora | full    LoRA adapters (rank 16, alpha 32, on q/k/v/o; default) or
                 every weight.
  OBJECTIVE      sft (CE, default), fused ((1 - alpha) CE + alpha soft edit
                 distance, alpha 0.3), seq | instant | ocd | mwer | grpo (the
                 RL modes, rewards computed in the sampling loop:
                 `rl.rewards`, default the exact edit distance; K = 4
                 samples; KL to the base model, which for LoRA is the
                 adapters turned off).
  bf16           bfloat16 params and activations (logits stay float32).
  chat           prompts rendered by the tokenizer's chat template as one
                 user turn (data.chat_template; source_len 64 for SmolLM2's
                 default system turn).
  tiny           seconds on a CPU, for tests.

A real pretrained model, offline after one fetch (SmolLM2-135M-Instruct,
Q4_1 GGUF; ir_jax.models.gguf):

  SMOL=$(python -m ir_jax.models.gguf fetch smollm2-135m-instruct)
  ir-jax train --config experiments/hf.py:lora,chat --workdir runs/smol \
      --config.model.hf_path=$SMOL \
      --config.data.train_path=data/cmudict_jsonl/train.jsonl \
      --config.data.eval_path=data/cmudict_jsonl/dev.jsonl

The architecture, vocabulary and first weights come from `model.hf_path`
(llama, qwen2, qwen3, gpt2 families; ir_jax.models.hf); the tokenizer from
the same directory unless `data.tokenizer` names another. Export the
result with `ir_jax.models.hf.save` (LoRA merged): see docs/hf.md.
"""

import ml_collections

from ir_jax import config as config_lib

OBJECTIVES = ("sft", "fused", "seq", "instant", "ocd", "mwer", "grpo")


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  unknown = sorted(set(parts) - set(OBJECTIVES) -
                   {"lora", "full", "bf16", "chat", "tiny"})
  objectives = [p for p in parts if p in OBJECTIVES]
  if unknown or len(objectives) > 1 or {"lora", "full"} <= set(parts):
    raise ValueError(f"experiments/hf.py takes lora|full, one of "
                     f"{', '.join(OBJECTIVES)}, bf16, chat, tiny; got "
                     f"{arg!r}.")
  objective = objectives[0] if objectives else "sft"
  tiny = "tiny" in parts
  c = config_lib.default_config()
  c.task = "text"
  c.seed = 0
  c.model.hf_path = ""
  c.model.dtype = "bfloat16" if "bf16" in parts else "float32"
  c.model.lora = ml_collections.ConfigDict(dict(
      rank=0 if "full" in parts else (4 if tiny else 16),
      alpha=8.0 if tiny else 32.0, targets="query,key,value,out"))
  c.data.chat_template = "chat" in parts
  c.data.source_len = 64 if c.data.chat_template else 32
  c.data.target_len = 24
  c.data.max_eval_items = 512
  c.log_greedy_reward = True
  c.total_steps = 500
  c.batch_size = 32
  c.eval_batch_size = 64
  c.log_every = 25
  c.eval_every = 250
  c.checkpoint_every = 250
  c.optim.learning_rate = 2e-4 if c.model.lora.rank else 2e-5
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 0.0
  if objective == "fused":
    c.objective.alpha = 0.3
  elif objective != "sft":
    c.rl.mode = objective
    c.rl.num_samples = 4
    c.rl.temperature = 1.0
    c.rl.kl_weight = 0.05
    c.objective.alpha = 0.5
    if objective == "mwer":
      c.rl.candidates = "samples"
    if objective == "grpo":
      c.objective.alpha = 1.0
      c.rl.kl_weight = 0.04
  if tiny:
    c.total_steps = 4
    c.batch_size = 4
    c.eval_batch_size = 8
    c.log_every = 2
    c.eval_every = 4
    c.checkpoint_every = 4
    c.data.source_len = 48 if c.data.chat_template else 16
    c.data.target_len = 8
    c.data.max_eval_items = 8
    c.rl.num_samples = 2
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 1
  return c
