"""The reward weight over training: warm-up, constant, adaptive."""

import numpy as np
import pytest

from ir_jax import objectives


def test_alpha_schedules():
  import ml_collections
  c = ml_collections.ConfigDict(dict(alpha=0.4, alpha_schedule="warmup",
                                     alpha_warmup_steps=10))
  f = objectives.alpha_schedule(c)
  np.testing.assert_allclose([f(0), f(5), f(10), f(50)], [0, 0.2, 0.4, 0.4],
                             rtol=1e-6)
  c.alpha_schedule = "constant"
  assert float(objectives.alpha_schedule(c)(0)) == np.float32(0.4)
  c.alpha = 1.5
  try:
    objectives.alpha_schedule(c)
  except ValueError as e:
    assert "alpha" in str(e)
  else:
    raise AssertionError("alpha > 1 accepted")


def test_adaptive_alpha_controller():
  kw = dict(rate=0.01, low=0.1, high=0.6, warmup=5)
  up = objectives.controller_init(0.3)
  for t in range(200):
    up = objectives.controller_update(up, -1.0 + t / 100, **kw)
  assert float(up["alpha"]) == pytest.approx(0.6)
  down = objectives.controller_init(0.3)
  for t in range(200):
    down = objectives.controller_update(down, -t / 100, **kw)
  assert float(down["alpha"]) == pytest.approx(0.1)
  flat = objectives.controller_init(0.3)
  for t in range(5):
    flat = objectives.controller_update(flat, 1.0, **kw)
  assert float(flat["alpha"]) == pytest.approx(0.3)  # Held during warm-up.
  noisy = objectives.controller_init(0.3)
  rng = np.random.default_rng(0)
  for t in range(500):
    noisy = objectives.controller_update(noisy, rng.normal(), **kw)
    assert 0.1 - 1e-6 <= float(noisy["alpha"]) <= 0.6 + 1e-6
