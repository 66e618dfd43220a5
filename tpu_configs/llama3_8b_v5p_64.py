"""Llama-3.1-8B post-trained with instant rewards on a v5p-64 slice (32
chips, topology v5p:2x4x4).

  ir-jax compile --config tpu_configs/llama3_8b_v5p_64.py          # LoRA
  ir-jax compile --config tpu_configs/llama3_8b_v5p_64.py:full     # full FT
  ir-jax train --config tpu_configs/llama3_8b_v5p_64.py --distributed \
      --workdir gs://BUCKET/llama_g2p --config.model.hf_path=/ckpt/Llama-3.1-8B \
      --config.data.train_path=... --config.data.eval_path=...

Text task, prompts 256 + targets 128 tokens; RL mode `instant` (K=4
samples per prompt, edit-distance reward in the sampling loop, KL to the
base model), 256 prompts a step; mesh (data, fsdp, tensor) = (2, 16, 1).
Compiled for its topology by `ir-jax compile` (docs/hf.md has the table);
not run on a real pod.
"""

from ir_jax.config import sibling

_base = sibling(__file__, "_base.py")
VARIANTS = ("lora", "full")


def get_config(arg=None):
  return _base.hf_pod_config(hf_path="llama-3.1-8b", topology="v5p:2x4x4",
                             chips=32, mesh=(2, 16, 1), batch_size=256,
                             arg=arg)
