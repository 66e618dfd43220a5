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


def test_learning_rate_schedules():
  from helpers import tiny
  c = tiny(**{"total_steps": 100, "optim.warmup_steps": 10,
              "optim.learning_rate": 1e-2})
  cosine = state_lib.learning_rate_schedule(c)
  assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(1e-2)
  assert float(cosine(100)) == pytest.approx(1e-4)      # end_fraction 0.01.
  c.optim.schedule = "constant"
  constant = state_lib.learning_rate_schedule(c)
  assert float(constant(5)) == pytest.approx(5e-3)
  assert [float(constant(s)) for s in (10, 50, 100, 1000)] == \
      pytest.approx([1e-2] * 4)
  # The protocol's arms: no warm-up (one step), decay from the peak.
  c.optim.update(schedule="cosine", warmup_steps=0, end_fraction=0.5)
  arm = state_lib.learning_rate_schedule(c)
  assert float(arm(1)) == pytest.approx(1e-2)
  assert float(arm(100)) == pytest.approx(5e-3)


def test_byte_table_of_the_project_vocabulary():
  """G2P symbols spell their UTF-8 bytes, specials nothing; rows up to the
  model's padded vocabulary; None without a byte-level reward."""
  from helpers import tiny
  from ir_jax import state as state_lib
  from ir_jax.data import tasks
  from ir_jax.data.vocab import SPECIALS
  c = tiny(**{"rl.mode": "seq", "rl.rewards": "char_edit_distance:1.0",
              "vocab_multiple": 64})
  task = tasks.build(c)
  model = state_lib.make_model(c, task)
  got = state_lib.byte_table(c, task, model)
  table, lengths = got.token_bytes, got.token_byte_lengths
  assert 1 <= got.max_target_bytes <= task.target_len * table.shape[1]
  assert table.shape[0] == model.vocab_size >= task.vocab.size
  assert (lengths[:len(SPECIALS)] == 0).all()
  assert (lengths[task.vocab.size:] == 0).all()
  for i in range(len(SPECIALS), task.vocab.size):
    symbol = task.vocab.symbols[i].encode("utf-8")
    assert bytes(table[i, :lengths[i]].tolist()) == symbol
  c = tiny(**{"rl.mode": "seq"})
  assert state_lib.byte_table(c, task, model) is None
