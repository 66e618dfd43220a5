"""G2P on a Cloud TPU v5p-64 slice (32 chips, topology v5p:2x4x4).

  tpu_configs/launch.sh v5p-64 tpu_configs/v5p_64.py   # create, copy, run
  ir-jax train --config tpu_configs/v5p_64.py --workdir gs://BUCKET/g2p --distributed
  ir-jax train --config tpu_configs/v5p_64.py --dry-run      # on the slice
  ir-jax compile --config tpu_configs/v5p_64.py    # here, before renting it

Mesh (data, fsdp, tensor) = (4, 4, 2), global batch 8192, Transformer
E=1536, 16 layers, 16 heads, MLP 6144, bfloat16, nn.scan over layers + remat.
Not yet run on a real pod (compiled for its topology by `ir-jax compile`).
"""

from ir_jax.config import sibling

_base = sibling(__file__, "_base.py")


def get_config(arg=None):
  del arg
  return _base.pod_config(topology="v5p:2x4x4", chips=32, mesh=(4, 4, 2),
                          batch_size=8192, embed_dim=1536, num_layers=16,
                          num_heads=16, mlp_dim=6144)
