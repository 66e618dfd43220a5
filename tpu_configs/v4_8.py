"""G2P on a Cloud TPU v4-8 slice (4 chips, topology v4:2x2x1).

  tpu_configs/launch.sh v4-8 tpu_configs/v4_8.py   # create, copy, run
  ir-jax train --config tpu_configs/v4_8.py --workdir gs://BUCKET/g2p --distributed
  ir-jax train --config tpu_configs/v4_8.py --dry-run      # on the slice
  ir-jax compile --config tpu_configs/v4_8.py    # here, before renting it

Mesh (data, fsdp, tensor) = (4, 1, 1), global batch 2048, Transformer
E=512, 6 layers, 8 heads, MLP 2048, bfloat16, nn.scan over layers + remat.
Not yet run on a real pod (compiled for its topology by `ir-jax compile`).
"""

from ir_jax.config import sibling

_base = sibling(__file__, "_base.py")


def get_config(arg=None):
  del arg
  return _base.pod_config(topology="v4:2x2x1", chips=4, mesh=(4, 1, 1),
                          batch_size=2048, embed_dim=512, num_layers=6,
                          num_heads=8, mlp_dim=2048)
