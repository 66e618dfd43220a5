"""G2P with instant rewards in the loop, starting from a CE run.

  ir-jax train --config experiments/g2p.py --workdir runs/g2p       # CE first
  ir-jax train --config experiments/g2p_rl.py:instant \
      --workdir runs/g2p_instant --config.init_from=runs/g2p

MODE is `seq` (REINFORCE, one sequence reward per sample), `instant`
(per-token rewards from the in-loop edit-distance rows, reward-to-go
advantages), `ocd` (Optimal Completion Distillation on the model's own
prefixes), `mwer` (expected edit-distance risk over the beam's N-best,
renormalised, mean-risk baseline; `,samples` for K samples instead) or
`grpo`. seq/instant/ocd use K samples per word with a
leave-one-out group baseline (`--config.rl.baseline=greedy` for SCST), an
exact KL to the frozen CE model and CE mixing: loss = (1 - alpha) CE +
alpha (RL + kl_weight KL), with alpha from the reward-adaptive controller.
`grpo` is the clipped group-relative objective alone (alpha = 1) with
token-level credit from the instant rewards, k3 KL (beta 0.04) and
`rl.inner_steps` updates per rollout; `--config.rl.credit=sequence` is
standard GRPO, `rl.group_std=False` + `rl.loss_aggregation=constant`
Dr.GRPO, `rl.epsilon_high=0.28` + `token_mean` DAPO's clip and loss.
Rewards: `--config.rl.rewards=edit_distance:1.0,exact_match:0.5` (or a
user's by import path). Add `,tiny` for tests and `,lstm` for the LSTM
model (the CE run must use the same model).

Result reached: docs/instant_rewards.md (the comparison table).
"""

from ir_jax.config import sibling

_g2p = sibling(__file__, "g2p.py")
MODES = ("seq", "instant", "ocd", "mwer", "grpo")


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  modes = [p for p in parts if p in MODES]
  if len(modes) != 1:
    raise ValueError("g2p_rl.py needs exactly one MODE of seq, instant, ocd, "
                     "mwer, grpo "
                     f"(got {arg!r}), e.g. experiments/g2p_rl.py:instant,tiny.")
  c = _g2p.get_config(",".join(p for p in parts
                               if p not in modes and p != "samples"))
  c.rl.mode = modes[0]
  c.rl.num_samples = 4
  c.rl.temperature = 1.0
  c.rl.baseline = "group"
  c.rl.kl_weight = 0.05
  c.objective.alpha = 0.5
  c.objective.alpha_schedule = "adaptive"
  c.objective.alpha_min = 0.2
  c.objective.alpha_max = 0.8
  c.objective.alpha_rate = 0.002
  if modes[0] == "mwer":
    c.rl.candidates = "samples" if "samples" in parts else "beam"
  if modes[0] == "grpo":
    c.objective.alpha = 1.0
    c.objective.alpha_schedule = "constant"
    c.rl.kl_weight = 0.04
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 20
  # Full-width batches: an RL step (a sampling loop) compiles slowly, and
  # a few hundred steps would not repay one compile per length class.
  c.data.length_buckets = 0
  if "tiny" not in parts:
    c.total_steps = 300
    c.batch_size = 64
    c.log_every = 25
    c.eval_every = 150
    c.checkpoint_every = 150
  else:
    c.rl.num_samples = 2
  return c
