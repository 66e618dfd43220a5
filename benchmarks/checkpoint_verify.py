"""What checkpoint checksums cost: manifest at save, verification at restore.

  python -m benchmarks.checkpoint_verify --mib 1024

An orbax checkpoint of float32 arrays (`--mib` in all, 64 MiB each) saved
the way `ir_jax.workdir.save_checkpoint` saves (StandardSave, then
`wait_until_finished`), then `workdir.write_manifest` (sha256 of every
file) and `workdir.verify_manifest`, side by side with orbax's own save
and restore of the same step, on local disk (the page cache warm, as right
after a save). Reports seconds per GB and the ratios to orbax. Writes
benchmarks/results/checkpoint_verify.{json,md}.
"""

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import workdir  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--mib", type=int, default=1024)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  n = max(1, args.mib // 64)
  state = {f"w{i}": rng.standard_normal((16 * 1024 * 1024,), np.float32)
           for i in range(n)}
  with tempfile.TemporaryDirectory() as root:
    manager = ocp.CheckpointManager(
        os.path.join(root, "checkpoints"),
        options=ocp.CheckpointManagerOptions(create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler()})
    t = time.perf_counter()
    manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(
        state)))
    manager.wait_until_finished()
    save = time.perf_counter() - t
    step = workdir.step_path(manager, 1)
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, fs in os.walk(str(step)) for f in fs)
    t = time.perf_counter()
    workdir.write_manifest(step, process=0)
    manifest = time.perf_counter() - t
    t = time.perf_counter()
    status, _ = workdir.verify_manifest(step, process=0)
    verify = time.perf_counter() - t
    assert status == "verified"
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    t = time.perf_counter()
    manager.restore(1, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    restore = time.perf_counter() - t
    manager.close()
  gb = size / 1e9
  row = {"bytes": size, "orbax_save_s": save, "manifest_s": manifest,
         "verify_s": verify, "orbax_restore_s": restore,
         "manifest_s_per_gb": manifest / gb, "verify_s_per_gb": verify / gb,
         "manifest_over_save": manifest / save,
         "verify_over_restore": verify / restore}
  meta = common.machine()
  markdown = (f"Machine: {', '.join(f'{k} {v}' for k, v in meta.items())}\n\n"
              + common.markdown_table([row], list(row)))
  common.write("checkpoint_verify", {"machine": meta, "rows": [row]},
               markdown)


if __name__ == "__main__":
  main()
