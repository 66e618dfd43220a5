"""The Transformer: logical axes on its params; a prompt pass that fills
a K-times larger cache (cache_repeat)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import models
from ir_jax.models import Transformer


def test_transformer_params_carry_logical_axes():
  model = Transformer(vocab_size=23, embed_dim=32, num_layers=2, num_heads=4,
                      mlp_dim=48, scan_layers=True)
  boxed = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))
  specs = nn.get_partition_spec(boxed)["params"]
  assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["layers"]["query"]["kernel"]) == ("layers", "embed",
                                                       "heads")
  assert tuple(specs["layers"]["out"]["kernel"]) == ("layers", "heads",
                                                     "embed")
  assert tuple(specs["layers"]["wi_up"]["kernel"]) == ("layers", "embed",
                                                       "mlp")
  assert tuple(specs["logits"]["kernel"]) == ("embed", "vocab")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cache_repeat_writes_each_prompt_k_times(scan_layers):
  """A prompt pass of B rows with cache_repeat=K leaves the cache a B-row
  pass repeated K times would (rows [b0 x K, b1 x K]), the same last
  logits, and the same next step; left-padded rows keep their positions."""
  model = Transformer(vocab_size=23, embed_dim=32, num_layers=2, num_heads=4,
                      num_kv_heads=2, mlp_dim=48, scan_layers=scan_layers)
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 23, (2, 6)))
  valid = jnp.asarray([[True] * 6, [False, False] + [True] * 4])
  params = model.init(jax.random.PRNGKey(0), ids)
  k, slots = 3, 9
  shared, cache = model.apply(params, ids, valid, model.init_cache(2 * k, slots),
                              num_logits=1, cache_repeat=k)
  plain, small = model.apply(params, ids, valid, model.init_cache(2, slots),
                             num_logits=1)
  want = models.repeat_cache(small, k)
  np.testing.assert_allclose(shared, plain, atol=1e-6, rtol=0)
  assert jax.tree.structure(cache) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), atol=1e-6, rtol=0)
  assert cache["position"].tolist() == [6, 6, 6, 4, 4, 4]
  step = jnp.arange(2 * k)[:, None] + 3
  one, _ = model.apply(params, step, None, cache)
  two, _ = model.apply(params, step, None, want)
  np.testing.assert_allclose(one, two, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="cache_repeat"):
    model.apply(params, ids, valid, model.init_cache(2, slots),
                cache_repeat=k)
