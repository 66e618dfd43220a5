"""Two systems' outputs on the same items, tested against each other.

  python -m benchmarks.paired_outputs --workdir runs/g2p --split test \
      A/outputs/test.tsv B/outputs/test.tsv

Reads two outputs files (`source<TAB>output` lines, as `ir-jax generate`
and every run's final evaluation write them), scores both against the
split's references of the workdir's task, and tests B against A on the
same items: paired bootstrap of the PER difference (10,000 resamples, 95%
CI, p-value) and the exact McNemar test of WER (`ir_jax.evaluate`).
Prints one JSON object.
"""

import argparse
import json

from ir_jax import evaluate, workdir


def compare(task, split: str, path_a: str, path_b: str):
  """PER/WER of both outputs files and B - A with its tests."""
  data = task.eval_sets[split]
  scored = [evaluate.outputs_errors(data, path) for path in (path_a, path_b)]
  (ea, na), (eb, nb) = scored
  boot = evaluate.paired_bootstrap(eb, ea, nb, lengths_b=na)
  mc = evaluate.mcnemar(eb == 0, ea == 0)
  return {"split": split, "items": len(data.keys),
          "a": {"per": float(ea.sum() / na.sum()),
                "wer": float((ea > 0).mean())},
          "b": {"per": float(eb.sum() / nb.sum()),
                "wer": float((eb > 0).mean())},
          "delta_per": boot["delta"], "ci95": boot["ci95"],
          "p_value": boot["p_value"],
          "delta_wer": float((eb > 0).mean() - (ea > 0).mean()),
          "mcnemar_p": mc["p_value"], "only_b_right": mc["only_a"],
          "only_a_right": mc["only_b"]}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True,
                 help="a run of the task (its references are used)")
  p.add_argument("--split", default="test")
  p.add_argument("a")
  p.add_argument("b")
  args = p.parse_args()
  task = workdir.load_run(args.workdir)[1]
  print(json.dumps(compare(task, args.split, args.a, args.b), indent=1))


if __name__ == "__main__":
  main()
