"""RL on a real LLM (#33): SmolLM2-135M-Instruct, SFT -> GRPO with token-
level instant credit vs sequence credit vs CE at equal compute.

  python experiments/llm_rl_study.py --task spell_backward    # the driver

ARG is a comma list `TASK,STAGE[,tiny]`:
  TASK    a verifiable task with a data folder (data/gym/<task>/ or, for
          `codespell`, data/codespell/ from `python -m ir_jax.data.text
          codespell data/codespell`): {train,dev,test}.jsonl.
  STAGE   sft            LoRA SFT on the train split (the start of every arm)
          grpo_token     GRPO, token-level credit from the instant reward
          grpo_sequence  GRPO, the same reward summed to one scalar
          sft_wall       CE continued from the SFT start (equal compute)
  tiny    seconds on a CPU, for tests.

Every stage but `sft` starts from the merged SFT base (`model.hf_path`, set
by the driver) with fresh adapters; the KL reference of a LoRA run is its
base with the adapters off, i.e. that merged base. LoRA rank 8 (alpha 16)
on attention and MLP (q, k, v, o, gate, up, down). The reward of every RL
arm is `char_error` (-min(CER, 1) over UTF-8 bytes, fed back per token).
Settings shared by both GRPO arms (and written the same for Tunix): K = 4
samples at temperature 1 over the full vocabulary, epsilon 0.2, beta 0.04
with the k3 estimator, sequence-mean aggregation, std-normalised group
advantages, one update per rollout.
"""

import os

import ml_collections

from ir_jax import config as config_lib

STAGES = ("sft", "grpo_token", "grpo_sequence", "sft_wall")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Task -> (data folder, source_len, target_len, GRPO steps): lengths in
# SmolLM2 tokens with the chat template (its default system turn is ~30
# tokens; spell_backward's prompts are <= 48, basic_arithmetic's <= 79 and
# 99% of its answers <= 14 with EOS); steps so that an arm-seed took ~25
# minutes on 2 CPU cores when a step took ~22 s at 56 + 10 tokens (~1.5x
# that at 80 + 16). With prompts shared per group (rl.share_prompts, the
# default since) a step takes ~9.4 s at 56 + 10 (benchmarks/llm_step.py).
TASKS = {
    "spell_backward": ("data/gym/spell_backward", 56, 10, 60),
    "word_sorting": ("data/gym/word_sorting", 144, 32, 20),
    # 12-16 words (~31 answer tokens, prompts <= 124): the credit study.
    "word_sorting_long": ("data/gym/word_sorting_long", 160, 56, 40),
    "basic_arithmetic": ("data/gym/basic_arithmetic", 80, 16, 40),
    "codespell": ("data/codespell", 48, 12, 60),
}


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  tiny = "tiny" in parts
  rest = [p for p in parts if p != "tiny"]
  if len(rest) != 2 or rest[0] not in TASKS or rest[1] not in STAGES:
    raise ValueError(f"experiments/llm_rl.py takes TASK,STAGE[,tiny] with "
                     f"TASK in {sorted(TASKS)} and STAGE in {STAGES}; got "
                     f"{arg!r}.")
  task, stage = rest
  folder, source_len, target_len, rl_steps = TASKS[task]
  c = config_lib.default_config()
  c.task = "text"
  c.seed = 0
  c.model.hf_path = ""          # The driver: the GGUF, or the merged base.
  c.model.dtype = "float32"
  c.model.lora = ml_collections.ConfigDict(dict(
      rank=8, alpha=16.0,
      targets="query,key,value,out,wi_gate,wi_up,wo"))
  c.data.chat_template = True
  c.data.train_path = os.path.join(ROOT, folder, "train.jsonl")
  c.data.eval_path = os.path.join(ROOT, folder, "dev.jsonl")
  c.data.test_path = os.path.join(ROOT, folder, "test.jsonl")
  c.data.source_len = source_len
  c.data.target_len = target_len
  c.data.max_eval_items = 0            # Every dev / test item.
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 10
  c.optim.schedule = "constant"
  c.log_every = 5
  c.eval_batch_size = 64
  c.checkpoint_every = 50
  if stage in ("sft", "sft_wall"):
    c.batch_size = 16
    c.total_steps = 150
    c.optim.learning_rate = 1e-3
  else:
    c.rl.mode = "grpo"
    c.objective.alpha = 1.0
    c.rl.rewards = "char_error:1.0"
    c.rl.credit = "token" if stage == "grpo_token" else "sequence"
    c.rl.num_samples = 4
    c.rl.temperature = 1.0
    c.rl.top_k, c.rl.top_p = 0, 1.0
    c.rl.epsilon = 0.2
    c.rl.kl_weight = 0.04
    c.rl.kl_estimator = "k3"
    c.rl.loss_aggregation = "sequence_mean"
    c.rl.group_std = True
    c.rl.inner_steps = 1
    c.batch_size = 8
    c.total_steps = rl_steps
    c.log_every = max(1, rl_steps // 12)  # ~12 rollout records a run.
    c.optim.learning_rate = 2e-4
  c.eval_every = c.total_steps + 1      # One eval, at the end.
  if tiny:
    c.total_steps = 4
    c.batch_size = 4
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 5
    c.checkpoint_every = 2
    c.data.max_eval_items = 6
    c.data.source_len = 256         # A tiny byte-level vocabulary.
    c.data.target_len = 16
    c.optim.warmup_steps = 1
    c.optim.learning_rate = 1e-3
    c.model.lora.rank = 2
    c.rl.num_samples = 2 if stage.startswith("grpo") else c.rl.num_samples
  return c
