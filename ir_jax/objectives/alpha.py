"""The reward weight alpha over training: fixed, warmed up, or moved by
the reward itself (`objective.alpha_schedule`)."""

from typing import Dict

import jax
import jax.numpy as jnp


def alpha_schedule(config):
  """step -> alpha: `constant` or linear `warmup` to `config.alpha`."""
  alpha = float(config.alpha)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"objective.alpha must be in [0, 1], got {alpha}.")
  if config.alpha_schedule == "constant":
    return lambda step: jnp.asarray(alpha, jnp.float32)
  if config.alpha_schedule == "warmup":
    warm = max(int(config.alpha_warmup_steps), 1)
    return lambda step: alpha * jnp.minimum(step / warm, 1.0).astype(
        jnp.float32)
  raise ValueError("objective.alpha_schedule must be 'constant' or 'warmup', "
                   f"got {config.alpha_schedule!r}.")


def controller_init(alpha: float) -> Dict[str, jax.Array]:
  return {"alpha": jnp.asarray(alpha, jnp.float32),
          "fast": jnp.zeros((), jnp.float32), "slow": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.int32)}


def controller_update(state: Dict[str, jax.Array], reward: jax.Array, *,
                      rate: float, low: float, high: float,
                      fast_decay: float = 0.9, slow_decay: float = 0.98,
                      warmup: int = 10) -> Dict[str, jax.Array]:
  """Raises alpha while the reward improves, lowers it when it degrades.

  Two bias-corrected moving averages of the batch reward: `fast` above
  `slow` means the reward is rising, so the reward term gets `rate` more
  weight; otherwise `rate` less. alpha stays in [low, high] and is held for
  the first `warmup` updates, while the averages settle.
  """
  count = state["count"] + 1
  reward = jnp.asarray(reward, jnp.float32)
  fast = fast_decay * state["fast"] + (1 - fast_decay) * reward
  slow = slow_decay * state["slow"] + (1 - slow_decay) * reward
  fast_hat = fast / (1 - fast_decay ** count.astype(jnp.float32))
  slow_hat = slow / (1 - slow_decay ** count.astype(jnp.float32))
  step = jnp.where(fast_hat > slow_hat, rate, -rate)
  alpha = jnp.where(count > warmup, state["alpha"] + step, state["alpha"])
  return {"alpha": jnp.clip(alpha, low, high), "fast": fast, "slow": slow,
          "count": count}
