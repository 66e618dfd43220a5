"""G2P on CMUdict (split cmudict-hash-v1, stressless track).

Run (the README's main job; ~21 min on a 2-core CPU):

  ir-jax train --config experiments/g2p.py --workdir runs/g2p

Variants (comma list): `lstm` (stacked LSTM instead of the Transformer),
`bidi` (LSTM with a bidirectional-LSTM source encoder), `prefix` (the
Transformer as a prefix LM: the letters attend to each other both ways;
measured no better than the default, docs/training.md),
`fused` (CE + fused soft edit distance reward, alpha 0.3 after warm-up),
`stress` (keep stress digits), `multi` (one model for letters->phonemes
and phonemes->letters, chosen by a task tag after BOS: the frozen model of
experiments/prompt.py), `tiny` (seconds, for tests), `base` (an
accelerator-sized model), e.g. `experiments/g2p.py:lstm,fused`.

Result reached (CPU default, 2 cores, 2026-12-06, 1271 s): test PER
8.14%, WER 32.60% (12,603 words); README "Main job result",
docs/training.md.
"""

from ir_jax import config as config_lib
from ir_jax.config import default_config


def get_config(arg=None):
  variants = config_lib.variants(
      arg, ("lstm", "bidi", "prefix", "fused", "stress", "multi", "tiny",
                "small", "base"), "g2p")
  c = default_config()
  c.task = "g2p"
  c.total_steps = 2600
  c.batch_size = 256
  c.log_every = 100
  c.eval_every = 1300
  c.checkpoint_every = 650
  # Length-bucketed batches: 1.9x faster steps (benchmarks/length_buckets.py),
  # spent on 2600 steps instead of 1400 in the same wall-clock.
  c.data.length_buckets = 3
  c.data.source_len = 18       # BOS + up to 16 letters + SEP.
  c.data.target_len = 18       # Up to 17 phonemes + EOS.
  c.model.embed_dim = 128
  c.model.num_layers = 3
  c.model.num_heads = 4
  c.model.mlp_dim = 384
  c.model.dropout = 0.0
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 200
  if "stress" in variants:
    c.data.stress = True
  if "multi" in variants:
    c.data.directions = "g2p,p2g"
    c.data.tags = True
    c.data.source_len = 20     # BOS + tag + up to 17 symbols + SEP.
    c.total_steps = 2000
    c.eval_every = 1000
    c.checkpoint_every = 500
  if "lstm" in variants or "bidi" in variants:
    c.model = c.model.__class__(dict(kind="lstm", embed_dim=64, hidden_dim=256,
                                     num_layers=2, dropout=0.0,
                                     bidirectional_source="bidi" in variants,
                                     dtype="float32"))
  if "prefix" in variants:
    if c.model.kind != "transformer":
      raise ValueError("experiments/g2p.py: 'prefix' is a Transformer variant "
                       "(the LSTM's two-way source is 'bidi').")
    c.model.prefix_lm = True
    c.data.length_buckets = 0  # The two-way mask needs the full source.
  if "fused" in variants:
    c.objective.alpha = 0.3
    c.objective.alpha_schedule = "warmup"
    c.objective.alpha_warmup_steps = 500
    c.objective.soft_ed_weight = 1.0
    c.objective.cosine_weight = 0.1
    c.objective.gamma = 0.5
  if "base" in variants:
    c.total_steps = 60_000
    c.batch_size = 512
    c.data.source_len = 32
    c.data.target_len = 32
    c.model.update(dict(embed_dim=512, num_layers=6, num_heads=8,
                        mlp_dim=2048, dropout=0.1, scan_layers=True))
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 2000
    c.eval_every = 5000
    c.checkpoint_every = 2000
  if "small" in variants:
    c.total_steps = 1000
  if "tiny" in variants:
    c.total_steps = 20
    c.batch_size = 16
    c.log_every = 5
    c.eval_every = 10
    c.checkpoint_every = 10
    c.eval_batch_size = 64
    c.data.length_buckets = 0  # One compile: tests stay fast.
    c.data.max_train_words = 2000
    c.data.max_eval_words = 64
    if c.model.kind == "lstm":
      c.model.update(dict(embed_dim=16, hidden_dim=32, num_layers=1))
    else:
      c.model.update(dict(embed_dim=32, num_layers=1, num_heads=2,
                          mlp_dim=64))
  return c
