"""Qwen3-8B post-trained with instant rewards on a v6e-64 slice (64 chips,
topology v6e:8x8).

  ir-jax compile --config tpu_configs/qwen3_8b_v6e_64.py           # LoRA
  ir-jax compile --config tpu_configs/qwen3_8b_v6e_64.py:full      # full FT
  ir-jax train --config tpu_configs/qwen3_8b_v6e_64.py --distributed \
      --workdir gs://BUCKET/qwen_g2p --config.model.hf_path=/ckpt/Qwen3-8B \
      --config.data.train_path=... --config.data.eval_path=...

Text task, prompts 256 + targets 128 tokens; RL mode `instant` (K=4
samples per prompt, edit-distance reward in the sampling loop, KL to the
base model), 256 prompts a step; mesh (data, fsdp, tensor) = (8, 8, 1)
for LoRA, (1, 64, 1) for the full fine-tune (14.4 GiB a chip of v6e's 32;
on (8, 8, 1) its step is 98% of HBM, 2026-12-04).
Compiled for its topology by `ir-jax compile` (docs/hf.md has the table);
not run on a real pod.
"""

from ir_jax.config import sibling

_base = sibling(__file__, "_base.py")
VARIANTS = ("lora", "full")


def get_config(arg=None):
  return _base.hf_pod_config(hf_path="qwen3-8b", topology="v6e:8x8",
                             chips=64, batch_size=256,
                             mesh=(1, 64, 1) if "full" in (arg or "") else
                             (8, 8, 1),
                             arg=arg)
