"""G2P on a Cloud TPU v6e-256 slice (256 chips, topology v6e:16x16).

  tpu_configs/launch.sh v6e-256 tpu_configs/v6e_256.py   # create, copy, run
  ir-jax train --config tpu_configs/v6e_256.py --workdir gs://BUCKET/g2p --distributed
  ir-jax train --config tpu_configs/v6e_256.py --dry-run      # on the slice
  ir-jax compile --config tpu_configs/v6e_256.py    # here, before renting it

Mesh (data, fsdp, tensor) = (16, 16, 1), global batch 32768, Transformer
E=2048, 24 layers, 16 heads, MLP 8192, bfloat16, nn.scan over layers + remat.
The mesh follows the 16x16 torus (`ir-jax compile` refused (16, 8, 2):
logical axes must be products of physical ones). Not yet run on a real pod (compiled for its topology by `ir-jax compile`).
"""

from ir_jax.config import sibling

_base = sibling(__file__, "_base.py")


def get_config(arg=None):
  del arg
  return _base.pod_config(topology="v6e:16x16", chips=256, mesh=(16, 16, 1),
                          batch_size=32768, embed_dim=2048, num_layers=24,
                          num_heads=16, mlp_dim=8192)
