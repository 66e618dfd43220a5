"""The Transformer: logical axes on its params."""

import flax.linen as nn
import jax
import jax.numpy as jnp

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
