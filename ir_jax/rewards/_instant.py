"""The instant-reward type, shared by the protocol and the reward
modules that build instances of it (`chars`)."""

from typing import Any, Callable, NamedTuple, Tuple

import jax

State = Any


class InstantReward(NamedTuple):
  """A per-token reward: pure functions over batched state (hashable, so it
  can be a static argument of `jax.jit`).

  init: (target int32[B, M], target_lengths int32[B]) -> state.
  step: (state, token int32[B], t int32[]) -> (state, reward float32[B]).
  finish: state -> float32[B], added to the reward of the sample's last
    token (zeros when the reward has no terminal term).
  terms: set by `weighted` (its (reward, weight) terms); () otherwise.
  """
  init: Callable[[jax.Array, jax.Array], State]
  step: Callable[[State, jax.Array, jax.Array], Tuple[State, jax.Array]]
  finish: Callable[[State], jax.Array]
  terms: tuple = ()
