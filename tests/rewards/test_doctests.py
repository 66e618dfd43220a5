"""The `>>>` examples in the rewards' docstrings run and print what they
say (optax's style: an example that drifts from the code fails CI)."""

import doctest
import importlib

import pytest

MODULES = ["ir_jax.rewards.exact", "ir_jax.rewards.soft",
           "ir_jax.rewards.cosine", "ir_jax.rewards.protocol",
           "ir_jax.rewards.chars", "ir_jax.evaluate"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS,
                           report=True)
  assert result.failed == 0, f"{result.failed} failing examples in {name}"
  if name != "ir_jax.rewards.chars":
    assert result.attempted > 0, f"{name} has no examples"
