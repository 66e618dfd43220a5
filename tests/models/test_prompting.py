"""Prompt slots after BOS: indices, filling, skipping decode steps."""

import jax.numpy as jnp
import numpy as np

from ir_jax.data.vocab import BOS, PAD, SEP
from ir_jax.models import prompting


def test_slots_follow_bos_and_skip_decode_steps():
  tokens = jnp.array([[PAD, PAD, BOS, 7, 8, 9, SEP], [BOS, 7, 8, 9, 10, 11, SEP],
                      [9, 10, 11, 12, 13, 14, 15]])
  idx = prompting.slot_index(tokens, 2)
  np.testing.assert_array_equal(idx, [[-1, -1, -1, 0, 1, -1, -1],
                                      [-1, 0, 1, -1, -1, -1, -1],
                                      [-1] * 7])
  filled = prompting.fill_slots(tokens, jnp.array([40, 41]))
  np.testing.assert_array_equal(filled[0], [PAD, PAD, BOS, 40, 41, 9, SEP])
  np.testing.assert_array_equal(filled[2], tokens[2])
