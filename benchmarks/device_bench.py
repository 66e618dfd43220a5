"""Reward kernels on an accelerator: soft edit distance forward+backward
(Pallas vs the XLA wavefront vs ott-jax SoftDTW) and exact Levenshtein
(Pallas vs the XLA bit-parallel loop, and at B=4096, L=48 vs RapidFuzz on
the host's CPU cores).

  python benchmarks/device_bench.py --out $OUT/device_bench.json

B=512 pairs, N=M in {64, 256, 1024}. Each implementation is timed only if it
compiles; failures are recorded, not fatal (the device run is one shot).
"""

import argparse
import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import common  # noqa: E402
from ir_jax import rewards  # noqa: E402


def impl_fn(name):
  if name == "ott":
    from ott.geometry.costs import SoftDTW
    sdtw = SoftDTW(1.0)
    return jax.jit(jax.grad(lambda x, y: jax.vmap(sdtw)(x, y).sum()))
  kw = ({"implementation": "pallas"} if name == "pallas" else
        {"implementation": "xla", "layout": name})
  return jax.jit(jax.grad(
      lambda c: rewards.soft_edit_distance(c, 1.0, **kw).sum()))


def exact_vs_rapidfuzz(rng, batch=4096, length=48):
  """The exact kernel against RapidFuzz on all of the host's CPU cores
  (`rapidfuzz.process.cpdist`, workers=-1), B=4096 pairs of 48 tokens:
  the goal is >= 10x. Distances must agree."""
  row = {"B": batch, "N=M": length, "kind": "exact_vs_rapidfuzz"}
  pred = rng.integers(0, 40, (batch, length)).astype(np.int32)
  target = rng.integers(0, 40, (batch, length)).astype(np.int32)
  try:
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein
    lists = [list(map(int, x)) for x in pred], [list(map(int, x))
                                                 for x in target]
    cpu = lambda: process.cpdist(*lists, scorer=Levenshtein.distance,
                                 workers=-1)
    row["rapidfuzz_ms"] = common.timeit(cpu, repeats=5) * 1e3
    fn = jax.jit(lambda p, t: rewards.levenshtein(p, t,
                                                  implementation="pallas"))
    row["exact_pallas_ms"] = common.timeit(fn, jnp.asarray(pred),
                                           jnp.asarray(target),
                                           repeats=5) * 1e3
    row["pallas_over_rapidfuzz_speedup"] = (row["rapidfuzz_ms"] /
                                            row["exact_pallas_ms"])
    row["equal"] = bool((np.asarray(fn(pred, target)) ==
                         np.asarray(cpu())).all())
  except Exception as e:  # Record and go on: one shot on the device.
    row["error"] = f"{type(e).__name__}: {e}"[:500]
    traceback.print_exc()
  print(row, flush=True)
  return row


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--batch", type=int, default=512)
  args = p.parse_args()
  rng = np.random.default_rng(0)
  rows = []
  for length in (64, 256, 1024):
    costs = jnp.asarray(rng.random((args.batch, length, length)), jnp.float32)
    pts = (jnp.asarray(rng.random((args.batch, length, 1)), jnp.float32),
           jnp.asarray(rng.random((args.batch, length, 1)), jnp.float32))
    row = {"B": args.batch, "N=M": length}
    grads = {}
    for name in ("pallas", "diagonals", "rows", "ott"):
      if name == "rows" and length > 256:
        continue  # N*M sequential steps: minutes on a GPU at 1024.
      try:
        fn = impl_fn(name)
        inputs = pts if name == "ott" else (costs,)
        row[f"{name}_fwdbwd_ms"] = common.timeit(fn, *inputs, repeats=5) * 1e3
        grads[name] = fn(*inputs)
      except Exception as e:  # Record and go on: one shot on the device.
        row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
      print(row, flush=True)
    if "pallas" in grads and "diagonals" in grads:  # The kernel is right.
      row["pallas_vs_xla_max_abs_grad_diff"] = float(
          jnp.abs(grads["pallas"] - grads["diagonals"]).max())
    rows.append(row)
  # Exact Levenshtein: the bit-parallel XLA loop vs the Pallas kernel.
  for length in (64, 256, 1024):
    tokens = lambda: jnp.asarray(rng.integers(0, 40, (args.batch, length)),
                                 jnp.int32)
    pred, target = tokens(), tokens()
    row = {"B": args.batch, "N=M": length, "kind": "exact"}
    dists = {}
    for name in ("pallas", "xla"):
      try:
        fn = jax.jit(lambda p, t, name=name: rewards.levenshtein(
            p, t, implementation=name))
        row[f"exact_{name}_ms"] = common.timeit(fn, pred, target,
                                                repeats=5) * 1e3
        dists[name] = fn(pred, target)
      except Exception as e:  # Record and go on: one shot on the device.
        row[f"exact_{name}_error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
    if len(dists) == 2:
      row["exact_pallas_equals_xla"] = bool((dists["pallas"] ==
                                             dists["xla"]).all())
    print(row, flush=True)
    rows.append(row)
  rows.append(exact_vs_rapidfuzz(rng))
  with open(args.out, "w") as f:
    json.dump({"machine": common.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
