"""Reward functions: exact/soft edit distance, instant rewards, cosine reward,
and the reward protocol (`InstantReward`, sequence rewards, `weighted`,
`parse_rewards`, `host_reward`) that RL objectives sample with.

Pure, jit-able and vmap-able; every function accepts any leading batch dims
and optional `pred_lengths` / `target_lengths`.
"""
from ir_jax.kernels.platform import lowering_for
from ir_jax.rewards.chars import (ByteTable, byte_edit_distance_of,
                                  char_edit_distance_reward,
                                  char_error_reward, char_exact_match)
from ir_jax.rewards.cosine import cosine_reward, cosine_reward_per_position
from ir_jax.rewards.exact import (edit_row_init, edit_row_step,
                                  instant_rewards, levenshtein,
                                  optimal_completion_targets,
                                  prefix_edit_distances)
from ir_jax.rewards.protocol import (NEEDS_BYTE_TABLE, InstantReward,
                                     RewardSpec,
                                     cosine_similarity, edit_distance_of,
                                     edit_distance_reward, exact_match,
                                     host_reward, length_penalty,
                                     negative_edit_distance, parse_rewards,
                                     resolve, score_sequences, term_names,
                                     term_returns, weighted)
from ir_jax.rewards.soft import (soft_alignment, soft_edit_distance,
                                 soft_edit_distance_from_logits)

__all__ = [
    "ByteTable", "byte_edit_distance_of", "char_edit_distance_reward",
    "char_error_reward",
    "char_exact_match", "NEEDS_BYTE_TABLE",
    "InstantReward", "RewardSpec", "cosine_similarity", "edit_distance_of",
    "edit_distance_reward", "exact_match", "host_reward", "length_penalty",
    "negative_edit_distance", "parse_rewards", "resolve", "score_sequences",
    "term_names",
    "term_returns", "weighted",
    "cosine_reward", "cosine_reward_per_position", "edit_row_init",
    "edit_row_step", "instant_rewards", "levenshtein", "lowering_for",
    "optimal_completion_targets", "prefix_edit_distances", "soft_alignment",
    "soft_edit_distance", "soft_edit_distance_from_logits",
]
