"""ir_jax.state: set-up checks before any device work, the model's padded
vocabulary, a fresh state and its shardings, the soft prompt's optimizer."""

import os

import jax
import jax.numpy as jnp
import pytest

from ir_jax import config as config_lib
from ir_jax import state as state_lib
from ir_jax.data import tasks
from helpers import ROOT, tiny


def test_setup_checks_the_config_before_building_anything(monkeypatch):
  built = []
  monkeypatch.setattr(tasks, "build", lambda c: built.append(c))
  with pytest.raises(ValueError, match="config.model.num_heads"):
    state_lib.setup(tiny(**{"model.num_heads": 3}))
  with pytest.raises(ValueError, match="has 2 devices but 1 are visible"):
    state_lib.setup(tiny(**{"mesh.data": 2}))
  assert built == []


def test_fresh_state_and_shardings_from_shapes():
  task, model, tx, mesh, rules = state_lib.setup(tiny())
  assert model.vocab_size == 128 and task.vocab.size < 128   # Padded.
  abstract, shardings = state_lib.state_shardings(tiny(), model, tx, task,
                                                  mesh)
  assert abstract.params["embed"]["embedding"].shape == (128, 32)
  assert jax.tree.structure(abstract) == jax.tree.structure(shardings)
  state = state_lib.init_state(tiny(), model, tx, task)
  assert int(state.step) == 0 and int(state.skipped) == 0
  assert jnp.array_equal(state.reward_embeddings,
                         state.params["embed"]["embedding"])
  params = state_lib.abstract_params(tiny(), model, tx, task)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         state.params)


def test_soft_prompt_has_the_only_optimizer_state():
  c = config_lib.load(os.path.join(ROOT, "experiments", "prompt.py:soft,tiny"))
  task = tasks.build(c)
  model = state_lib.make_model(c, task)
  tx = state_lib.make_optimizer(c)
  state = jax.eval_shape(lambda: state_lib.init_state(c, model, tx, task))
  assert state.params["prompt"].shape == (c.prompt.length, c.model.embed_dim)
  moments = [x.shape for x in jax.tree.leaves(state.opt_state)
             if len(x.shape) == 2]
  assert moments == [state.params["prompt"].shape] * 2   # Adam mu, nu.
