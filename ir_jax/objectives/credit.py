r"""Per-token credit for GRPO from the edit-distance DP (`rl.credit`).

The instant rewards are potential-shaped: with the DP row of a prefix
against the target, `psi(y_<t) = -min_j D(y_<t, y*_<=j) / m` is the exact
value of the prefix under its *best* completion, and

.. math:: r_t = \psi(y_{\le t}) - \psi(y_{<t}) \;(+\ \text{the terminal
          term on the last token}),\qquad \sum_t r_t = R.

So `r_t` is already an advantage: the temporal-difference residual of
token t under the critic `V = psi` (GAE's delta_t with gamma = 1), <= 0 for
an unclipped edit distance, 0 exactly when the token keeps an optimal
completion reachable. The credits are its lambda-returns (Schulman et al.
2016, GAE):

.. math:: G^\lambda_t = \sum_{k \ge 0} \lambda^k r_{t+k}

* `immediate` (lambda = 0): `G_t = r_t`, the optimal completion's
  advantage of token t. Biased: it is the advantage under the best
  completion, not under the current policy's (VinePPO estimates the
  latter with Monte Carlo rollouts); low variance, no later token's noise.
* `reward_to_go` (lambda = 1): `G_t = R - psi(y_<t)`, the return minus a
  baseline that depends only on the prefix, so its policy gradient is
  unbiased; every later token's noise is added back.
* `lambda`: in between (`rl.credit_lambda`).
* `sequence`: one scalar per sample, GRPO's `group_advantages`.

Two normalisations (`rl.credit_baseline`):

* `"position"` (the original `token` credit): past its end a sample holds
  its last value; each position is centred on the group's mean and, with
  `rl.group_std`, divided by the group's std at that position. With a
  terminal-only reward this is `group_advantages` exactly. On `r_t` it
  gives a correct token credit for a sibling's error at the same index (a
  group with one error scores z = [-1.5, .5, .5, .5]).
* `"none"`: no centring (`psi` is the baseline already); with
  `rl.group_std` every token of a group is divided by one scale, the std
  of the group's returns (the scale sequence credit uses), so the KL
  weight and learning rate mean the same under every credit. A group whose
  returns are all equal has no sequence scale; it takes the mean scale of
  the batch's other groups (1 if none). 0 past each sample's end.

The credit's rewards can differ from the logged reward: `char_error`'s
potential is clipped at CER 1, after which every token scores 0 like a
correct one, and it refunds trailing whitespace at EOS;
`credit_rewards` replays the unclipped, whitespace-free potential
(`chars.char_error_reward(clip=False)`) for the credit while the bounded
reward stays the return (and the sequence credit's comparison).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from ir_jax import rewards
from ir_jax.objectives._common import token_mask

# rl.credit values: "token" is the deprecated alias of "reward_to_go" (the
# default: saved configs use it).
TOKEN_CREDITS = ("reward_to_go", "immediate", "lambda", "token")
CREDIT_BASELINES = ("position", "none")


def credit_lambda(credit: str, lam: float = 1.0) -> float:
  """The lambda of a token-level credit name: reward_to_go / token 1,
  immediate 0, lambda `lam`."""
  if credit in ("reward_to_go", "token"):
    return 1.0
  if credit == "immediate":
    return 0.0
  if credit == "lambda":
    return float(lam)
  raise ValueError(f"credit must be one of {TOKEN_CREDITS} for per-token "
                   f"credit, got {credit!r}.")


def lambda_returns(token_rewards: jax.Array, lengths: jax.Array,
                   lam: float) -> jax.Array:
  r"""`G_t = r_t + lam G_{t+1}` over each sample's tokens (0 past its end).

  token_rewards: float[B, T]; lengths: int[B]. Returns float32[B, T]:
  lam = 1 the reward-to-go, lam = 0 the rewards themselves.

  >>> import jax.numpy as jnp
  >>> r = jnp.array([[0., -1., 0., -1.]])
  >>> lambda_returns(r, jnp.array([4]), 0.5).tolist()
  [[-0.625, -1.25, -0.5, -1.0]]
  """
  r = jnp.where(token_mask(lengths, token_rewards.shape[-1]),
                token_rewards.astype(jnp.float32), 0.0)

  def back(g, r_t):
    g = r_t + lam * g
    return g, g

  _, g = jax.lax.scan(back, jnp.zeros(r.shape[0], jnp.float32),
                      r.T[::-1])
  return g[::-1].T


def _group_scale(returns: jax.Array, group: int, eps: float) -> jax.Array:
  """float32[B G / group]: the std (ddof 1) of each group's returns; a
  group with none takes the mean of the others' (1 if no group has any)."""
  std = returns.astype(jnp.float32).reshape(-1, group).std(1, ddof=1)
  spread = std > eps
  fallback = jnp.where(spread.any(),
                       jnp.sum(jnp.where(spread, std, 0.0)) /
                       jnp.maximum(spread.sum(), 1), 1.0)
  return jnp.where(spread, std, fallback)


def credit_advantages(token_rewards: jax.Array, lengths: jax.Array,
                      returns: jax.Array, group: int, *, credit: str,
                      lam: float = 1.0, baseline: str = "position",
                      normalize_std: bool = True, eps: float = 1e-6
                      ) -> jax.Array:
  """Per-token GRPO advantages float32[B G, T] of a token-level credit.

  token_rewards: float[B G, T], the credit's rewards (`credit_rewards`);
  lengths: int[B G] (>= 1); returns: float[B G], the sequence returns
  (their group std is the `"none"` baseline's scale); group: G; credit,
  lam: `credit_lambda`; baseline: `CREDIT_BASELINES` (module docstring).
  0 past each sample's length.
  """
  if baseline not in CREDIT_BASELINES:
    raise ValueError(f"baseline must be one of {CREDIT_BASELINES}, got "
                     f"{baseline!r}.")
  t = token_rewards.shape[-1]
  g = lambda_returns(token_rewards, lengths, credit_lambda(credit, lam))
  mask = token_mask(lengths, t)
  if baseline == "none":
    if normalize_std:
      scale = jnp.repeat(_group_scale(returns, group, eps), group)
      g = g / scale[:, None]
    return jnp.where(mask, g, 0.0)
  last = jnp.take_along_axis(g, jnp.clip(lengths - 1, 0, t - 1)[:, None],
                             axis=-1)
  held = jnp.where(mask, g, last).reshape(-1, group, t)
  adv = held - held.mean(1, keepdims=True)
  if normalize_std:
    adv = adv / (held.std(1, ddof=1, keepdims=True) + eps)
  return jnp.where(mask, adv.reshape(-1, t), 0.0)


def credit_reward_of(spec: rewards.RewardSpec, byte_table=None
                     ) -> Optional[rewards.InstantReward]:
  """The instant reward per-token credit uses for `spec`, or None when it
  is the sampler's own (`instant_reward_of`): `char_error` replaced by its
  unclipped, whitespace-free potential (`clip=False`)."""
  if not any(n == "char_error" for n, _ in spec.instant):
    return None
  terms = []
  for name, w in spec.instant:
    if name == "char_error":   # A ByteTable, or the (bytes, lengths) pair.
      table = ((byte_table,) if isinstance(byte_table, rewards.ByteTable)
               else tuple(byte_table))
      r = rewards.chars.char_error_reward(*table, clip=False)
    else:
      r = rewards.resolve(name, byte_table=byte_table)
    terms.append((r, w))
  return rewards.weighted(*terms, cache=False)


def credit_rewards(spec: rewards.RewardSpec, scored, byte_table=None
                   ) -> jax.Array:
  """float32[B G, T]: the per-token rewards a token-level credit uses for
  the samples of `sample_and_score` (`scored`): its `token_rewards`, or,
  when `credit_reward_of(spec)` differs, that reward replayed over the
  samples (one DP pass) plus the sequence terms on each last token."""
  credit = credit_reward_of(spec, byte_table)
  if credit is None:
    return scored["token_rewards"]
  tokens, lengths = scored["tokens"], scored["lengths"]
  r, _ = rewards.score_sequences(credit, tokens, lengths, scored["target"],
                                 scored["target_lengths"])
  n = len(spec.instant)
  seq = sum((w * scored["terms"][:, n + i]
             for i, (_, w) in enumerate(spec.sequence)),
            jnp.zeros(tokens.shape[0], jnp.float32))
  last = jnp.arange(tokens.shape[1])[None] == (lengths - 1)[:, None]
  return r + jnp.where(last, seq[:, None], 0.0)
