"""Shared body of the pod configs (loaded by each tpu_configs file).

Pod configs are G2P (CMUdict, stressless) with an accelerator-sized
Transformer: bfloat16 compute, layers under nn.scan (compile time flat in
depth), batch sharded over (data, fsdp), params over fsdp (embed) and
tensor (mlp, heads, vocab); by default the fused objective of
experiments/g2p.py:fused (CE + soft edit distance + cosine, alpha 0.3
after a 500-step warm-up).
"""

from ir_jax.config import default_config


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
