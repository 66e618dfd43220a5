"""Subprocess helper for tests/test_parallel.py (not a test module).

  python tests/distributed_worker.py OUT_JSON WORKDIR MESH[;MESH...] \
      [--coordinator H:P --num_processes N --process_id I] [--steps S]
      [--override KEY=VALUE ...]

Runs the `tiny` G2P config for each mesh ("data,fsdp,tensor") and writes
the per-step losses and the param shardings to OUT_JSON (process 0).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("out")
  p.add_argument("workdir")
  p.add_argument("meshes")
  p.add_argument("--coordinator")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--steps", type=int, default=12)
  p.add_argument("--override", action="append", default=[])
  args = p.parse_args()
  from ir_jax import parallel
  if args.coordinator:
    parallel.initialize_distributed(args.coordinator, args.num_processes,
                                    args.process_id)
  import jax
  from ir_jax import config as config_lib
  from ir_jax import state as state_lib
  from ir_jax import train
  from ir_jax.data import tasks
  results = {}
  for mesh in args.meshes.split(";"):
    c = config_lib.apply_overrides(
        config_lib.load("experiments/g2p.py:tiny"), args.override)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = map(int, mesh.split(","))
    c.total_steps, c.log_every, c.checkpoint_every = args.steps, 1, args.steps
    c.eval_every = 1000
    wd = os.path.join(args.workdir, mesh.replace(",", "x"))
    train.train_and_evaluate(c, wd)
    losses = []
    if jax.process_index() == 0:
      with open(os.path.join(wd, "metrics.jsonl")) as f:
        losses = [json.loads(l)["loss"] for l in f if '"split"' not in l]
    task = tasks.build(c)
    model, tx = state_lib.make_model(c, task), state_lib.make_optimizer(c)
    device_mesh = parallel.make_mesh(c.mesh)
    _, shardings = state_lib.state_shardings(c, model, tx, task, device_mesh)
    specs = jax.tree_util.tree_map_with_path(
        lambda path, s: [jax.tree_util.keystr(path), str(tuple(s.spec))],
        shardings.params)
    results[mesh] = {"losses": losses, "devices": jax.device_count(),
                     "processes": jax.process_count(),
                     "specs": dict(jax.tree.leaves(
                         specs, is_leaf=lambda x: isinstance(x, list)))}
  if jax.process_index() == 0:
    with open(args.out, "w") as f:
      json.dump(results, f)


if __name__ == "__main__":
  main()
