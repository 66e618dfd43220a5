"""G2P on a Cloud TPU v5litepod-16 slice (16 chips, topology v5e:4x4).

  tpu_configs/launch.sh v5litepod-16 tpu_configs/v5litepod_16.py   # create, copy, run
  ir-jax train --config tpu_configs/v5litepod_16.py --workdir gs://BUCKET/g2p --distributed
  ir-jax train --config tpu_configs/v5litepod_16.py --dry-run      # on the slice
  ir-jax compile --config tpu_configs/v5litepod_16.py    # here, before renting it

Mesh (data, fsdp, tensor) = (4, 4, 1), global batch 4096, Transformer
E=1024, 12 layers, 16 heads, MLP 4096, bfloat16, nn.scan over layers + remat.
Not yet run on a real pod (compiled for its topology by `ir-jax compile`).
"""

from ir_jax.config import sibling

_base = sibling(__file__, "_base.py")


def get_config(arg=None):
  del arg
  return _base.pod_config(topology="v5e:4x4", chips=16, mesh=(4, 4, 1),
                          batch_size=4096, embed_dim=1024, num_layers=12,
                          num_heads=16, mlp_dim=4096)
