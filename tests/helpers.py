"""Shared by the tests: the repository root, the tiny config, metrics files
and a workdir written by an earlier version of ir_jax."""

import json
import os

from ir_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "g2p.py:tiny")
# experiments/g2p.py:tiny with keep_checkpoints=1 and eval_every=100,
# crashed after step 12 (checkpoint 10), written before the one-way
# layout; FULL_RUN holds the same run's numbers, uninterrupted.
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_0_1")
FULL_RUN = os.path.join(ROOT, "tests", "fixtures", "workdir_0_1_full_run.json")


def tiny(**overrides):
  """experiments/g2p.py:tiny with `field=value` overrides."""
  c = config_lib.load(CONFIG)
  return config_lib.apply_overrides(
      c, [f"{k}={v}" for k, v in overrides.items()])


def read(path):
  """The records of a metrics.jsonl."""
  with open(path) as f:
    return [json.loads(line) for line in f]
