"""Prompt optimisation on a frozen multi-task G2P model: soft prompts (trained
by ir_jax.train) and discrete search (ir_jax.prompt_search).

The frozen model is experiments/g2p.py:multi (letters->phonemes and
phonemes->letters, chosen by a hand-designed tag after BOS):

  ir-jax train --config experiments/g2p.py:multi --workdir runs/g2p_multi
  ir-jax train --config experiments/prompt.py:soft --workdir runs/prompt_soft \
      --config.init_from=runs/g2p_multi
  ir-jax train --config experiments/prompt.py:search --workdir runs/prompt_search \
      --config.init_from=runs/g2p_multi
  ir-jax generate --workdir runs/g2p_multi --prompt runs/prompt_soft hello

Variants (comma list after soft|search): `p2g` (tune for phonemes->letters;
default letters->phonemes), `fused` (soft prompt trained with the fused
soft-ED + cosine reward instead of CE), `tag` (soft prompt of one slot
initialised from the hand tag), `greedy` (search by greedy token
replacement instead of evolution), `lstm` (the LSTM multi-task model,
experiments/g2p.py:multi,lstm), `tiny` (seconds, for tests).

Results: docs/prompts.md (experiments/prompt_compare.py).
"""

from ir_jax import config as config_lib

_g2p = config_lib.sibling(__file__, "g2p.py")


def get_config(arg=None):
  variants = config_lib.variants(
      arg, ("soft", "search", "p2g", "fused", "tag", "greedy", "lstm", "tiny"),
      "prompt")
  modes = variants & {"soft", "search"}
  if len(modes) != 1:
    raise ValueError("experiments/prompt.py needs exactly one of 'soft' or "
                     f"'search', got {sorted(modes) or 'neither'}.")
  base = ["multi"] + [v for v in ("fused", "lstm", "tiny") if v in variants]
  c = _g2p.get_config(",".join(base))
  c.prompt.mode = modes.pop()
  c.prompt.length = 1 if "tag" in variants else 4
  c.prompt.init = "tag" if "tag" in variants else "random"
  c.data.directions = "p2g" if "p2g" in variants else "g2p"
  c.data.prompt_len = c.prompt.length
  c.data.source_len += c.prompt.length - 1   # Room for P slots, no truncation.
  c.init_from = "runs/g2p_multi" + "".join(
      f"_{v}" for v in ("lstm", "tiny") if v in variants)
  # Soft prompt: a few hundred steps; the frozen model has seen both tasks.
  c.total_steps = 20 if "tiny" in variants else 300
  c.eval_every = c.total_steps
  c.checkpoint_every = c.total_steps
  c.log_every = 5 if "tiny" in variants else 25
  c.optim.learning_rate = 3e-2          # Only P x E numbers move.
  c.optim.warmup_steps = max(1, c.total_steps // 10)
  c.optim.weight_decay = 0.0
  if "fused" in variants:
    c.objective.alpha_warmup_steps = c.total_steps // 5
  c.prompt.strategy = "greedy" if "greedy" in variants else "evolve"
  if "tiny" in variants:
    c.prompt.update(dict(population=6, rounds=3, elite=2, score_words=16))
  else:
    c.prompt.update(dict(population=32, rounds=15, elite=8, score_words=256))
  return c
