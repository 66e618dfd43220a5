"""Shared body of the pod configs (loaded by each tpu_configs file).

Pod configs are G2P (CMUdict, stressless) with an accelerator-sized
Transformer: bfloat16 compute, layers under nn.scan (compile time flat in
depth), batch sharded over (data, fsdp), params over fsdp (embed) and
tensor (mlp, heads, vocab); by default the fused objective of
experiments/g2p.py:fused (CE + soft edit distance + cosine, alpha 0.3
after a 500-step warm-up).
"""

import ml_collections

from ir_jax.config import beside, default_config


def pod_config(*, topology, chips, mesh, batch_size, embed_dim, num_layers,
               num_heads, mlp_dim, steps=60_000, fused=True):
  c = default_config()
  c.task = "g2p"
  if fused:
    c.objective.update(dict(alpha=0.3, alpha_schedule="warmup",
                            alpha_warmup_steps=500, soft_ed_weight=1.0,
                            cosine_weight=0.1, gamma=0.5))
  c.total_steps = steps
  c.batch_size = batch_size
  c.data.source_len = 32
  c.data.target_len = 32
  c.model.update(dict(embed_dim=embed_dim, num_layers=num_layers,
                      num_heads=num_heads, mlp_dim=mlp_dim, dropout=0.1,
                      scan_layers=True, remat=True, dtype="bfloat16"))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 2000
  c.log_every, c.eval_every, c.checkpoint_every = 100, 5000, 2000
  c.eval_batch_size = 4096
  # The log-step greedy decode (step.with_greedy_reward) would add its KV
  # cache to the step's HBM; the compile table (docs/scaling.md) is without.
  c.log_greedy_reward = False
  c.topology = topology  # Read by `ir-jax compile`, not by training.
  c.chips = chips
  return c


def hf_pod_config(*, hf_path, topology, chips, mesh, batch_size, arg=None,
                  source_len=256, target_len=128, samples=4):
  """Post-training of a Hugging Face checkpoint on a text task (the shapes
  of experiments/hf.py at pod scale): the RL step `instant` (K samples per
  prompt drawn on device with the edit-distance reward advanced at every
  token, reward-to-go credit, KL to the base model), bfloat16, layers
  under nn.scan + remat. ARG: "lora" (rank 16 on q/k/v/o; default) or
  "full" (every weight, f32 Adam moments).

  `data.train_path` / `eval_path` are placeholders: `ir-jax compile` reads
  shapes only; a run names its JSONL files (python -m ir_jax.data.text
  --cmudict writes the CMUdict split) and the downloaded checkpoint.
  """
  parts = [p for p in (arg or "").split(",") if p]
  if set(parts) - {"lora", "full"} or {"lora", "full"} <= set(parts):
    raise ValueError(f"ARG is 'lora' (default) or 'full', got {arg!r}.")
  c = default_config()
  c.task = "text"
  c.model.hf_path = beside(__file__, "hf", hf_path)
  c.model.update(dict(scan_layers=True, remat=True, dtype="bfloat16"))
  c.model.lora = ml_collections.ConfigDict(dict(
      rank=0 if "full" in parts else 16, alpha=32.0,
      targets="query,key,value,out"))
  c.data.train_path = "gs://BUCKET/data/train.jsonl"
  c.data.eval_path = "gs://BUCKET/data/dev.jsonl"
  c.data.source_len, c.data.target_len = source_len, target_len
  c.rl.update(dict(mode="instant", num_samples=samples, temperature=1.0,
                   baseline="group", kl_weight=0.05,
                   rewards="edit_distance:1.0"))
  c.objective.update(dict(alpha=0.5, alpha_schedule="constant"))
  c.total_steps = 2000
  c.batch_size = batch_size
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  c.optim.update(dict(learning_rate=2e-4 if c.model.lora.rank else 1e-5,
                      warmup_steps=50, weight_decay=0.0))
  c.log_every, c.eval_every, c.checkpoint_every = 10, 500, 250
  c.eval_batch_size = 256
  c.log_greedy_reward = False   # As the other pod configs (compile table).
  c.topology = topology
  c.chips = chips
  return c
