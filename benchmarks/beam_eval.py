"""Greedy vs beam search (and MBR) on a trained G2P run, with significance.

  python -m benchmarks.beam_eval --workdir runs/g2p [--beams 4] [--mbr 8] \
      [--mbr-nbest]

Decodes dev and test with each method from the run's latest checkpoint,
scores PER/WER (`ir_jax.evaluate`), and tests each method against greedy
on the same items: paired bootstrap for PER, exact McNemar for WER.
Writes benchmarks/results/beam/{results.json,results.md}.
"""

import argparse
import json
import os
import time

from benchmarks import common
from ir_jax import evaluate, workdir

OUT = os.path.join(common.RESULTS, "beam")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--beams", type=int, nargs="+", default=[4])
  p.add_argument("--length_penalty", type=float, default=0.0)
  p.add_argument("--mbr", type=int, default=0)
  p.add_argument("--mbr-nbest", action="store_true",
                 help="also MBR over each beam's N-best (beamK_mbr)")
  p.add_argument("--splits", nargs="+", default=["dev", "test"])
  args = p.parse_args()
  config, task, model, params, step = workdir.load_run_with_step(args.workdir)
  methods = [("greedy", {})] + [
      (f"beam{k}", {"beam": k, "length_penalty": args.length_penalty})
      for k in args.beams] + [
      (f"beam{k}_mbr", {"beam": k, "length_penalty": args.length_penalty,
                        "mbr_nbest": True})
      for k in args.beams if args.mbr_nbest and k > 1] + (
          [(f"mbr{args.mbr}", {"mbr": args.mbr})] if args.mbr else [])
  rows, payload = [], {"machine": common.machine(), "step": step,
                       "workdir": args.workdir, "results": []}
  for split in args.splits:
    data = task.eval_sets[split]
    base = None
    for name, kw in methods:
      t0 = time.time()
      out = evaluate.generate_symbols(model, {"params": params}, task,
                                      data.source, 1024, data.direction, **kw)
      seconds = time.time() - t0
      errors, lengths = evaluate.word_errors(out, data.references)
      rec = {"split": split, "method": name, "seconds": seconds,
             **evaluate.error_rates(out, data.references)}
      if base is None:
        base = (errors, lengths)
      else:
        boot = evaluate.paired_bootstrap(errors, base[0], lengths,
                                         lengths_b=base[1])
        mc = evaluate.mcnemar(errors == 0, base[0] == 0)
        rec.update(delta_per=boot["delta"], ci95=boot["ci95"],
                   p_per=boot["p_value"], p_wer=mc["p_value"],
                   only_method_right=mc["only_a"],
                   only_greedy_right=mc["only_b"])
      payload["results"].append(rec)
      row = {"split": split, "method": name, "PER %": 100 * rec["per"],
             "WER %": 100 * rec["wer"], "s": round(seconds, 1)}
      if "delta_per" in rec:
        row["dPER (95% CI), points"] = (
            f"{100 * rec['delta_per']:+.2f} ({100 * rec['ci95'][0]:+.2f}, "
            f"{100 * rec['ci95'][1]:+.2f})")
        row["p PER"] = rec["p_per"]
        row["p WER (McNemar)"] = rec["p_wer"]
      rows.append(row)
      print(row, flush=True)
  columns = ["split", "method", "PER %", "WER %", "dPER (95% CI), points",
             "p PER", "p WER (McNemar)", "s"]
  md = common.markdown_table(rows, columns)
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.join(OUT, "results.md"), "w") as f:
    f.write(md + "\n")
  print(md)


if __name__ == "__main__":
  main()
