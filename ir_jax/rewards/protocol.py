"""The reward protocol: rewards as pure, jittable functions of token ids.

Two kinds of reward, both batched over a leading axis B and traced inside
the sampling loop or the loss, so they never leave the device:

* **Instant** (per token): an `InstantReward(init, step, finish)` triple,

  .. math::

     s_0 = \\mathrm{init}(y^*, m), \\quad
     (s_{t+1}, r_t) = \\mathrm{step}(s_t, y_t, t), \\quad
     r_{n-1} \\mathrel{+}= \\mathrm{finish}(s_n),

  carried through `ir_jax.decode.sample_with_rewards`' `lax.scan`: `step`
  sees each sampled token once, `finish` adds a terminal term on the token
  that ends the sample (EOS or the length limit). The edit-distance DP row
  is the first such state (`edit_distance_reward`): sum_t r_t = -ED.
* **Sequence** (terminal): `fn(tokens[B, T], lengths[B], targets[B, M],
  target_lengths[B]) -> float32[B]` on finished samples (`exact_match`,
  `negative_edit_distance`, `length_penalty`, `cosine_similarity(E)`).

`weighted` sums instant rewards by weight and keeps each term's running
total in its state, so every term is logged; `parse_rewards` turns a config
string (`rl.rewards = "edit_distance:1.0,exact_match:0.5"`) into the two
weighted lists, with a user's own reward plugged in by import path
(`mypkg.rewards.my_reward:0.3`). `host_reward` is the escape hatch for a
reward that cannot be jitted: a Python function run on the finished samples
through `jax.pure_callback` (it waits on the host; see
benchmarks/rl_vs_tunix.py for what that costs).

Example (a user-defined instant reward: +1 per token equal to the target
token at that position)::

  def init(target, target_lengths):
    return {"target": target, "m": target_lengths}

  def step(state, token, t):
    hit = (t < state["m"]) & (token == state["target"][:, t % M])
    return state, hit.astype(jnp.float32)

  position_match = InstantReward(init, step, lambda s: jnp.zeros(...))
"""

import importlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ir_jax.rewards import chars, exact
from ir_jax.rewards._instant import InstantReward, State

SequenceReward = Callable[..., jax.Array]


# ------------------------------------------------- edit distance, instant


def _potential(row, m):
  """(phi, D[k, m]) with phi = -min_{j <= m} D[k, j]: the best any
  completion of the prefix can still reach."""
  cols = jnp.arange(row.shape[-1])
  row_min = jnp.where(cols <= m[:, None], row, jnp.iinfo(jnp.int32).max).min(-1)
  return -row_min, jnp.take_along_axis(row, m[:, None], axis=-1)[:, 0]


def _ed_init(target, target_lengths, scale):
  m = jnp.clip(target_lengths, 0, target.shape[-1]).astype(jnp.int32)
  return {"row": exact.edit_row_init(target), "target": target, "m": m,
          "scale": scale(m)}


def _ed_step(state, token, t):
  del t
  row, m = state["row"], state["m"]
  new = exact.edit_row_step(row, token, state["target"], m)
  reward = (_potential(new, m)[0] - _potential(row, m)[0]).astype(jnp.float32)
  return dict(state, row=new), reward * state["scale"]


def _ed_finish(state):
  phi, at_m = _potential(state["row"], state["m"])
  return (-at_m - phi).astype(jnp.float32) * state["scale"]


def _unit(m):
  return jnp.ones(m.shape, jnp.float32)


def _per_symbol(m):
  # Targets end in EOS, which is not a symbol: returns are -ED / #symbols.
  return 1.0 / jnp.maximum(m - 1, 1).astype(jnp.float32)


def _ed(scale):
  return InstantReward(lambda target, lengths: _ed_init(target, lengths, scale),
                       _ed_step, _ed_finish)


EDIT_DISTANCE = _ed(_unit)
EDIT_DISTANCE_PER_SYMBOL = _ed(_per_symbol)


def edit_distance_reward(per_symbol: bool = False) -> InstantReward:
  """Instant edit-distance reward: potential-based shaping of -ED.

  With `phi_k = -min_{j <= m} D[k, j]` (the DP row of the prefix against
  the target), step k gives `phi_{k+1} - phi_k` and `finish` the terminal
  `-D[n, m] - phi_n`, so that

  .. math:: \\sum_t r_t = -\\mathrm{ED}(y_{<n}, y^*_{<m}),

  exactly `rewards.instant_rewards`. O(M) per token: one DP row in the state.

  Args:
    per_symbol: divide every reward by the target's symbol count
      (`target_lengths - 1`: EOS is not a symbol), so returns are -ED / |y*|.

  Returns:
    an `InstantReward` (the same object on every call, so jitted samplers
    compile once).
  """
  return EDIT_DISTANCE_PER_SYMBOL if per_symbol else EDIT_DISTANCE


def edit_distance_of(state) -> jax.Array:
  """int32[B]: the exact edit distance `D[n, m]` held by an edit-distance
  reward state (after the sample's last token)."""
  return _potential(state["row"], state["m"])[1]


# ------------------------------------------------------- sequence rewards


def _valid(tokens, lengths):
  return jnp.arange(tokens.shape[-1])[None] < lengths[:, None]


def negative_edit_distance(tokens, lengths, targets, target_lengths):
  """float32[B]: -ED(tokens[:n], targets[:m]) (exact, bit-parallel)."""
  return -exact.levenshtein(tokens, targets, pred_lengths=lengths,
                            target_lengths=target_lengths).astype(jnp.float32)


def exact_match(tokens, lengths, targets, target_lengths):
  """float32[B]: 1 where tokens[:n] == targets[:m] (same length), else 0."""
  width = max(tokens.shape[-1], targets.shape[-1])
  pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[-1])))
  a = jnp.where(_valid(pad(tokens), lengths), pad(tokens), -1)
  b = jnp.where(_valid(pad(targets), target_lengths), pad(targets), -1)
  return ((lengths == target_lengths) & jnp.all(a == b, -1)).astype(
      jnp.float32)


def length_penalty(tokens, lengths, targets, target_lengths):
  """float32[B]: -|n - m|, the length mismatch in tokens."""
  del tokens, targets
  return -jnp.abs(lengths - target_lengths).astype(jnp.float32)


def cosine_similarity(embeddings: jax.Array) -> SequenceReward:
  """Sequence reward: cosine of the mean token embeddings of sample and
  target, under a frozen table float[V, D] (gradients stopped)."""
  table = jax.lax.stop_gradient(embeddings)

  def fn(tokens, lengths, targets, target_lengths):
    def mean(ids, n):
      mask = _valid(ids, n)[..., None]
      e = jnp.take(table, ids, axis=0).astype(jnp.float32)
      return (e * mask).sum(1) / jnp.maximum(n, 1)[:, None]
    u, v = mean(tokens, lengths), mean(targets, target_lengths)
    return jnp.sum(u * v, -1) / jnp.maximum(
        jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), 1e-8)

  return fn


# ---------------------------------------------------------- combination


def _weighted_init(terms, target, target_lengths):
  states = tuple(r.init(target, target_lengths) for r, _ in terms)
  totals = jnp.zeros((target.shape[0], len(terms)), jnp.float32)
  return {"terms": states, "totals": totals}


def _weighted_sum(values, terms, batch):
  """sum_i w_i values[i]: float32[B] (zeros with no terms)."""
  total = jnp.zeros((batch,), jnp.float32)
  for v, (_, w) in zip(values, terms):
    total = total + w * v
  return total


def _weighted_step(terms, state, token, t):
  states, values = [], []
  for (r, _), s in zip(terms, state["terms"]):
    s, v = r.step(s, token, t)
    states.append(s)
    values.append(v.astype(jnp.float32))
  totals = state["totals"]
  if values:
    totals = totals + jnp.stack(values, -1)
  return ({"terms": tuple(states), "totals": totals},
          _weighted_sum(values, terms, token.shape[0]))


def _weighted_finish(terms, state):
  values = [r.finish(s) for (r, _), s in zip(terms, state["terms"])]
  return _weighted_sum(values, terms, state["totals"].shape[0])


_WEIGHTED: Dict[tuple, InstantReward] = {}


def weighted(*terms: Tuple[InstantReward, float],
             cache: bool = True) -> InstantReward:
  """sum_i w_i r^i_t of instant rewards; `term_returns` gives each term's
  unweighted return (for logging).

  Cached by its terms, so equal combinations are one object (jit compiles
  the sampler once). `cache=False` for terms built inside a trace (the
  byte-level rewards close over the step's table: caching them would keep
  the trace's values alive). With no terms every reward is 0 (runs whose
  rewards are all sequence rewards).
  """
  terms = tuple((r, float(w)) for r, w in terms)
  if terms in _WEIGHTED:
    return _WEIGHTED[terms]
  reward = InstantReward(
      lambda target, lengths: _weighted_init(terms, target, lengths),
      lambda state, token, t: _weighted_step(terms, state, token, t),
      lambda state: _weighted_finish(terms, state), terms)
  if cache:
    _WEIGHTED[terms] = reward
  return reward


def term_returns(reward: InstantReward, state) -> jax.Array:
  """float32[B, n]: each term's unweighted return sum_t r^i_t, from the
  final state of a `weighted` reward (steps plus its `finish`)."""
  if "totals" not in state:
    raise ValueError("term_returns needs the state of a `weighted` reward.")
  finishes = [r.finish(s) for (r, _), s in zip(reward.terms, state["terms"])]
  if not finishes:
    return state["totals"]
  return state["totals"] + jnp.stack(finishes, -1)


def score_sequences(reward: InstantReward, tokens: jax.Array,
                    lengths: jax.Array, target: jax.Array,
                    target_lengths: jax.Array) -> Tuple[jax.Array, State]:
  """An instant reward replayed over finished sequences (beam outputs, a
  data set's outputs): what `decode.sample_with_rewards` would have given
  these tokens had it sampled them.

  tokens: int32[B, T] (anything past `lengths` is ignored); lengths:
  int32[B] (EOS included, or T); target / target_lengths: as `init`.
  Returns (rewards float32[B, T], 0 past the length, `finish` added at the
  last token; the reward's state after each sequence's last token).

  >>> import jax.numpy as jnp
  >>> r, state = score_sequences(edit_distance_reward(),
  ...     jnp.array([[1, 4, 2, 0]]), jnp.array([4]),   # 0: EOS
  ...     jnp.array([[1, 2, 0]]), jnp.array([3]))
  >>> r.tolist(), edit_distance_of(state).tolist()
  ([[0.0, -1.0, 0.0, 0.0]], [1])
  """
  state = reward.init(target, target_lengths)

  def step(state, t):
    done = t >= lengths
    new_state, r = reward.step(state, tokens[:, t], t)
    r = r + jnp.where(t == lengths - 1, reward.finish(new_state), 0.0)
    state = jax.tree.map(
        lambda a, b: jnp.where(done.reshape((-1,) + (1,) * (a.ndim - 1)),
                               b, a), new_state, state)
    return state, jnp.where(done, 0.0, r).astype(jnp.float32)

  state, r = jax.lax.scan(step, state, jnp.arange(tokens.shape[1]))
  return r.T, state


# ------------------------------------------------------ config strings


BUILTIN_INSTANT = {"edit_distance": lambda: edit_distance_reward(True)}
BUILTIN_SEQUENCE = {"exact_match": exact_match,
                    "length_penalty": length_penalty,
                    "negative_edit_distance": negative_edit_distance}
NEEDS_EMBEDDINGS = {"cosine": cosine_similarity}
# Instant rewards over the bytes tokens spell: they take the table of
# `ir_jax.data.hf_tokenizer.token_byte_table` (an argument of the step).
NEEDS_BYTE_TABLE = {"char_edit_distance": chars.char_edit_distance_reward,
                    "char_error": chars.char_error_reward,
                    "char_exact_match": chars.char_exact_match}


class RewardSpec(NamedTuple):
  """A parsed `rl.rewards` string: names and weights, in order."""
  instant: Tuple[Tuple[str, float], ...]
  sequence: Tuple[Tuple[str, float], ...]


def _import(path: str):
  module, _, attr = path.rpartition(".")
  try:
    return getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError, ValueError) as e:
    raise ValueError(f"config.rl.rewards: cannot import {path!r} ({e}); a "
                     "user reward is `package.module.name[:weight]`.") from e


def resolve(name: str, embeddings: Optional[jax.Array] = None,
            byte_table: Optional[Tuple[jax.Array, jax.Array]] = None):
  """The reward object behind a name: an `InstantReward` or a sequence
  reward function (builtin, or imported when the name has a dot).
  `byte_table` (a `chars.ByteTable`, or the pair token_bytes int32[V, L],
  token_byte_lengths int32[V]) for the byte-level rewards
  (`NEEDS_BYTE_TABLE`)."""
  if name in NEEDS_BYTE_TABLE:
    if byte_table is None:
      raise ValueError(
          f"reward {name!r} needs the token byte table (ir_jax.data."
          "hf_tokenizer.token_byte_table), passed to the train step as "
          "its `byte_table` argument.")
    if isinstance(byte_table, chars.ByteTable):
      return NEEDS_BYTE_TABLE[name](byte_table)
    return NEEDS_BYTE_TABLE[name](*byte_table)
  if name in BUILTIN_INSTANT:
    return BUILTIN_INSTANT[name]()
  if name in BUILTIN_SEQUENCE:
    return BUILTIN_SEQUENCE[name]
  if name in NEEDS_EMBEDDINGS:
    if embeddings is None:
      raise ValueError(f"reward {name!r} needs an embedding table.")
    return NEEDS_EMBEDDINGS[name](embeddings)
  if "." in name:
    obj = _import(name)
    if isinstance(obj, InstantReward) or callable(obj):
      return obj
    raise ValueError(f"config.rl.rewards: {name!r} is neither an "
                     "InstantReward nor a sequence reward function.")
  known = sorted({**BUILTIN_INSTANT, **BUILTIN_SEQUENCE, **NEEDS_EMBEDDINGS,
                  **NEEDS_BYTE_TABLE})
  raise ValueError(f"config.rl.rewards: unknown reward {name!r}; builtins are "
                   f"{', '.join(known)}, or a user reward by import path "
                   "(package.module.name).")


def parse_rewards(spec: str) -> RewardSpec:
  """`"edit_distance:1.0,exact_match:0.5"` -> RewardSpec (weights default to
  1). Checks names and weights; user rewards are imported to learn their
  kind. Raises ValueError naming `config.rl.rewards` on a bad entry.

  >>> parse_rewards("edit_distance,exact_match:0.5")
  RewardSpec(instant=(('edit_distance', 1.0),), sequence=(('exact_match', 0.5),))
  """
  instant, sequence = [], []
  for item in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, weight = item.partition(":")
    try:
      w = float(weight) if sep else 1.0
    except ValueError:
      raise ValueError(f"config.rl.rewards: weight {weight!r} of {name!r} is "
                       "not a number (use name:weight, e.g. "
                       "exact_match:0.5).") from None
    if not np.isfinite(w):
      raise ValueError(f"config.rl.rewards: weight of {name!r} must be "
                       f"finite, got {weight!r}.")
    if name in NEEDS_EMBEDDINGS:
      sequence.append((name, w))
      continue
    if name in NEEDS_BYTE_TABLE:
      instant.append((name, w))
      continue
    obj = resolve(name)
    (instant if isinstance(obj, InstantReward) else sequence).append((name, w))
  if not instant and not sequence:
    raise ValueError("config.rl.rewards is empty: name at least one reward, "
                     "e.g. 'edit_distance:1.0'.")
  return RewardSpec(tuple(instant), tuple(sequence))


def term_names(spec: RewardSpec) -> List[str]:
  """Names of the terms in the order they are logged: instant, sequence."""
  return [n for n, _ in spec.instant] + [n for n, _ in spec.sequence]


# ------------------------------------------------------- escape hatch


def host_reward(fn: Callable[..., Any],
                detokenize: Optional[Callable[[List[int]], str]] = None
                ) -> SequenceReward:
  """A sequence reward computed by host Python, via `jax.pure_callback`.

  For rewards that cannot be traced (a regex, a parser, a Python library).
  The device waits while the host runs: every call is a device -> host ->
  device round trip, measured in benchmarks/rl_vs_tunix.py.

  Args:
    fn: with `detokenize`, `fn(completions: list[str], targets: list[str])
      -> sequence of B floats`; without, `fn(tokens, lengths, targets,
      target_lengths)` on numpy arrays -> float[B].
    detokenize: optional ids -> text (the valid ids of one sequence).

  Returns:
    a sequence reward usable anywhere a jitted one is.
  """
  def host(tokens, lengths, targets, target_lengths):
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    targets, target_lengths = np.asarray(targets), np.asarray(target_lengths)
    if detokenize is None:
      out = fn(tokens, lengths, targets, target_lengths)
    else:
      out = fn([detokenize(list(r[:n])) for r, n in zip(tokens, lengths)],
               [detokenize(list(r[:n])) for r, n in zip(targets,
                                                        target_lengths)])
    return np.asarray(out, np.float32).reshape(tokens.shape[0])

  def reward(tokens, lengths, targets, target_lengths):
    shape = jax.ShapeDtypeStruct((tokens.shape[0],), jnp.float32)
    return jax.pure_callback(host, shape, tokens, lengths, targets,
                             target_lengths, vmap_method="sequential")

  return reward
