"""Train-step cost of the fused reward, side by side, in one run.

  python benchmarks/train_step.py      # ~2 min on a 2-core CPU

For the G2P shapes of experiments/g2p.py (B=256, prompt 18, target 18),
Transformer and LSTM:
  * ce_only: the CE step (alpha = 0, reward terms not computed);
  * fused: CE + soft edit distance + cosine reward in the same jitted step;
  * host_reward: the reward computed on the host: a CE step, logits to the host,
    greedy outputs scored by a Python edit distance, rewards sent back and a
    second device step that uses them (one round trip per step).
Reports ms/step, the ratios, tokens/s and model FLOPs utilisation (XLA's
FLOP count of the step over a matmul peak measured in the same run).
Writes benchmarks/results/train_step.{json,md}.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import config as config_lib  # noqa: E402
from ir_jax import models, objectives  # noqa: E402
from ir_jax import state as state_lib  # noqa: E402
from ir_jax import step as step_lib  # noqa: E402
from ir_jax.data import tasks  # noqa: E402


def python_edit_distance(a, b):
  """The host-side reward: a plain Python DP, per example."""
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j - 1] + (x != y), prev[j] + 1, cur[-1] + 1))
    prev = cur
  return prev[-1]


def matmul_peak():
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  t = common.timeit(f, a, repeats=5)
  return 2 * n ** 3 / t


def step_flops(fn, *args):
  cost = fn.lower(*args).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def main():
  peak = matmul_peak()
  task = tasks.g2p()
  rows = []
  for variant in ("", "lstm"):
    cfg = config_lib.load(f"experiments/g2p.py:{variant}")
    model = state_lib.make_model(cfg, task)
    tx = state_lib.make_optimizer(cfg)
    batch = {k: v[:cfg.batch_size] for k, v in task.train.items()}
    batch = jax.device_put(batch)
    tokens = cfg.batch_size * (task.source_len + task.target_len - 1)
    row = {"model": cfg.model.kind, "B": cfg.batch_size}
    for name, alpha in (("ce_only", 0.0), ("fused", 0.3)):
      c = config_lib.load(f"experiments/g2p.py:{variant}")
      c.objective.alpha = alpha
      c.objective.cosine_weight = 0.1
      state = state_lib.init_state(c, model, tx, task)
      step = jax.jit(step_lib.make_train_step(c, model, tx))
      row[f"{name}_ms"] = common.timeit(step, state, batch, repeats=5) * 1e3
      row[f"{name}_gflop"] = step_flops(step, state, batch) / 1e9
    # Host round trip: logits out, Python edit distance, rewards back.
    c = config_lib.load(f"experiments/g2p.py:{variant}")
    state = state_lib.init_state(c, model, tx, task)
    ce_step = jax.jit(step_lib.make_train_step(c, model, tx))
    forward = jax.jit(lambda p, b: models.target_logits(model, p, b))

    @jax.jit
    def reward_step(params, b, rewards):
      def loss(p):
        logits = models.target_logits(model, p, b)
        ce, _ = objectives.masked_cross_entropy(logits, b["target"],
                                                b["target_lengths"])
        return ce * (1.0 + 0.0 * rewards.mean()) - 1e-3 * rewards.mean()
      return jax.grad(loss)(params)

    def host_step(state, b):
      state, _ = ce_step(state, b)
      logits = np.asarray(jax.device_get(forward(state.params, b)))
      hyp = logits.argmax(-1)
      tgt, lens = np.asarray(b["target"]), np.asarray(b["target_lengths"])
      rewards = np.array([-python_edit_distance(list(h[:n]), list(t[:n]))
                          for h, t, n in zip(hyp, tgt, lens)], np.float32)
      return reward_step(state.params, b, jnp.asarray(rewards))

    row["host_reward_ms"] = common.timeit(host_step, state, batch,
                                          repeats=3) * 1e3
    row["fused_over_ce"] = row["fused_ms"] / row["ce_only_ms"]
    row["host_over_fused"] = row["host_reward_ms"] / row["fused_ms"]
    row["fused_tokens_per_s"] = tokens / (row["fused_ms"] / 1e3)
    row["fused_mfu"] = row["fused_gflop"] * 1e9 / (row["fused_ms"] / 1e3) / peak
    row["ce_mfu"] = row["ce_only_gflop"] * 1e9 / (row["ce_only_ms"] / 1e3) / peak
    rows.append(row)
    print(row, flush=True)
  md = ["Machine: " + ", ".join(f"{k} {v}" for k, v in common.machine().items()),
        f"Matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s (f32 2048^2)",
        "", common.markdown_table(rows, list(rows[0]))]
  common.write("train_step", {"machine": common.machine(),
                              "matmul_peak_flops": peak, "rows": rows},
               "\n".join(md))


if __name__ == "__main__":
  main()
