"""One GRPO step on a real LLM: ir_jax (prompts shared per group), ir_jax
with repeated prompts, and Tunix's GRPOLearner, side by side in one run.

  python -m benchmarks.llm_step                       # SmolLM2, ~1 hour
  python -m benchmarks.llm_step --shapes study        # ~25 min
  python -m benchmarks.llm_step --gguf tiny.gguf --tiny --json out.json

From the same weights: SmolLM2-135M-Instruct with the committed SFT
adapters of the spell_backward study merged in (`experiments/
llm_rl_study.merged_base`), fresh LoRA adapters (rank 8 on q, k, v, o,
gate, up, down), the study's GRPO settings (experiments/llm_rl.py:
K samples at temperature 1 over the full vocabulary, reward `char_error`,
epsilon 0.2, beta 0.04 with the k3 estimator, sequence-mean aggregation,
one update per rollout, f32). Shapes (prompt + completion tokens, B
prompts x K samples): `study` spell_backward 56 + 10, 8 x 4; `long`
word_sorting 144 + 32, 4 x 8. Each step takes the same B prompts.

Rounds alternate the three systems step by step in one process (Tunix's
learner drives the loop: one ir_jax step of each kind runs just before
each Tunix rollout), so a slow minute of the machine falls on all three;
the first `--warmup` steps (compilation) are dropped, then the median and
IQR of the rest. Phases: ir_jax's are timed as separately jitted parts on
the same inputs (sampling without reward, the reward's extra over it, the
reference forward, the policy forward + backward, the optimizer; their
sum is reported beside the fused step, which is one program); Tunix's are
timed around its own calls (generate, the reward function, reference
log-probs, update_actor, which holds forward, backward and optimizer).
Peak memory (VmHWM, the peak resident set) of each system is measured in
a process of its own (setup, compilation and one step). `parity`: on one
rollout at the study shape, the relative difference of ir_jax's GRPO loss
and of its gradient (norm) between shared and repeated prompts, beside
the float floor (the repeated layout against itself with its rows
reversed); `parity_rel` is the larger of loss and gradient. Tunix cannot
be fed ir_jax's rollout, so its loss is not compared.

Writes benchmarks/results/llm_step.{json,md} (or `--json PATH`).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# shape -> (task, prompt tokens, completion tokens, B prompts, K samples).
SHAPES = {"study": ("spell_backward", 56, 10, 8, 4),
          "long": ("word_sorting", 144, 32, 4, 8)}
TINY = {"study": ("spell_backward", 256, 8, 2, 2),
        "long": ("word_sorting", 512, 48, 2, 4)}
SYSTEMS = ("ir_jax", "ir_jax_repeated", "tunix")
ADAPTERS = os.path.join(ROOT, "benchmarks", "results", "llm_rl",
                        "spell_backward", "sft", "adapters.npz")


def have_tunix() -> bool:
  import importlib.util
  return importlib.util.find_spec("tunix") is not None


def base_weights(args) -> str:
  """The HF checkpoint every system starts from: the tiny GGUF itself
  (`--tiny`), or SmolLM2 with the study's SFT adapters merged in."""
  if args.tiny:
    return args.gguf
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import llm_rl_study as study
  from ir_jax.models import gguf
  gguf_path = args.gguf or gguf.fetch(study.MODEL)
  c = study.stage_config("spell_backward", "sft", argparse.Namespace(
      tiny=False, steps=0, sft_steps=0), gguf_path)
  return study.merged_base(c, ADAPTERS, os.path.join(
      ROOT, "runs", "llm_rl", "spell_backward", "merged"))


def make_config(shape, hf_path, share, tiny, steps=10**6):
  from ir_jax import config as config_lib
  task, p, t, b, k = (TINY if tiny else SHAPES)[shape]
  c = config_lib.load(os.path.join(ROOT, "experiments", "llm_rl.py") +
                      f":{task},grpo_token" + (",tiny" if tiny else ""))
  c.model.hf_path = hf_path
  c.data.source_len, c.data.target_len = p, t
  c.batch_size, c.rl.num_samples, c.rl.share_prompts = b, k, share
  c.total_steps, c.log_every = steps, 1
  c.optim.warmup_steps = 1
  config_lib.validate(c)
  return c


# ------------------------------------------------------------------ ir_jax


class Ours:
  """ir_jax's fused GRPO step (`step.make_train_step`) on one fixed batch."""

  def __init__(self, config):
    import jax
    import jax.numpy as jnp
    from ir_jax import pretrained
    from ir_jax import state as state_lib
    from ir_jax import step as step_lib
    self.config = config
    setup = state_lib.setup(config)
    self.task, self.model, self.tx = setup.task, setup.model, setup.tx
    _, base = pretrained.load(config.model.hf_path)
    self.state = state_lib.init_state(config, self.model, self.tx, self.task,
                                      base=base)
    self.batch = {k: jnp.asarray(v[:config.batch_size])
                  for k, v in self.task.train.items()}
    self.table = state_lib.byte_table(config, self.task, self.model)
    self._step = jax.jit(step_lib.make_train_step(config, self.model,
                                                  self.tx))

  def step(self) -> float:
    import jax
    start = time.perf_counter()
    self.state, metrics = self._step(self.state, self.batch, None, self.table)
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - start

  def prompts(self):
    """The batch as Tunix's rows: {prompts: chat text, answer: target}."""
    tok = self.task.vocab.tokenizer
    rows = []
    for source, target, n in zip(*(np.asarray(self.batch[k]) for k in (
        "source", "target", "target_lengths"))):
      first = int(np.argmax(np.cumsum(source != self.task.pad_id) > 0))
      ids = [int(t) for t in target[:n] if int(t) != self.task.eos_id]
      rows.append({"prompts": tok.decode([int(s) for s in source[first:]],
                                         skip_special_tokens=False),
                   "answer": tok.decode(ids)})
    return rows

  def phases(self, repeats=2):
    """Seconds of each part of the step, jitted alone on this batch."""
    import jax
    import optax
    from benchmarks.common import timeit
    from ir_jax import decode, objectives, rewards
    from ir_jax import step as step_lib
    from ir_jax.models import lora
    c, model, batch, table = self.config, self.model, self.batch, self.table
    params, rl = self.state.params, c.rl
    key = jax.random.key(2)
    zero = rewards.InstantReward(
        init=lambda target, m: {"n": m},
        step=lambda s, token, t: (s, 0.0 * token),
        finish=lambda s: 0.0 * s["n"])
    sample = jax.jit(lambda p: decode.sample_with_rewards(
        model, {"params": p}, batch["source"], batch["target"],
        batch["target_lengths"], key, max_len=batch["target"].shape[1],
        num_samples=rl.num_samples, temperature=rl.temperature,
        reward=zero, share_prompts=rl.share_prompts)["tokens"])
    score = jax.jit(lambda p: objectives.sample_and_score(
        c, model, p, batch, key, num_samples=rl.num_samples,
        temperature=rl.temperature, byte_table=table)["returns"])
    rollout = jax.jit(lambda p: objectives.grpo_rollout(
        c, model, p, batch, key, ref_params=lora.adapters_off(p),
        byte_table=table)[0])(params)
    reference = jax.jit(lambda p: objectives.policy_logprobs(
        model, lora.adapters_off(p), rollout["samples"], rl.temperature)[0])
    value_and_grad = step_lib.trained_value_and_grad(
        lambda p: objectives.grpo_update_loss(c, model, p, batch, rollout,
                                              None, alpha=1.0),
        step_lib.trained_part(c))
    grad = jax.jit(lambda p: value_and_grad(p)[1])
    grads = grad(params)
    opt = jax.jit(lambda p, o, g: optax.apply_updates(
        p, self.tx.update(g, o, p)[0]))
    t_sample = timeit(sample, params, repeats=repeats, min_time=0)
    return {"sampling": t_sample,
            "reward": max(0.0, timeit(score, params, repeats=repeats,
                                      min_time=0) - t_sample),
            "reference_forward": timeit(reference, params, repeats=repeats,
                                        min_time=0),
            "policy_forward_backward": timeit(grad, params, repeats=repeats,
                                              min_time=0),
            "optimizer": timeit(opt, params, self.state.opt_state, grads,
                                repeats=repeats, min_time=0)}

  def parity(self) -> dict:
    """Relative differences of one GRPO update's loss and gradient (norm)
    on one rollout, shared vs repeated prompts, and the same between the
    repeated layout and itself with its rows reversed (the float floor)."""
    import jax
    import jax.numpy as jnp
    from ir_jax import objectives
    from ir_jax import step as step_lib
    from ir_jax.models import lora
    c, model, batch, params = (self.config, self.model, self.batch,
                               self.state.params)
    rollout = jax.jit(lambda p: objectives.grpo_rollout(
        c, model, p, batch, jax.random.key(3),
        ref_params=lora.adapters_off(p), byte_table=self.table)[0])(params)
    samples = rollout["samples"]
    assert samples["source"].shape[0] == batch["source"].shape[0]
    repeated = dict(rollout, samples=dict(samples, source=jnp.repeat(
        samples["source"], c.rl.num_samples, axis=0)))
    value_and_grad = step_lib.trained_value_and_grad(
        lambda p, r: objectives.grpo_update_loss(c, model, p, batch, r, None,
                                                 alpha=1.0),
        step_lib.trained_part(c))
    # The float floor: the repeated layout against itself with its rows
    # reversed (the same loss and gradient, summed in another order).
    flipped = jax.tree.map(lambda x: x[::-1], repeated)
    (l1, _), g1 = jax.jit(value_and_grad)(params, rollout)
    (l2, _), g2 = jax.jit(value_and_grad)(params, repeated)
    (l3, _), g3 = jax.jit(value_and_grad)(params, flipped)
    norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x * x)
                                        for x in jax.tree.leaves(t))))
    rel = lambda a, b: norm(jax.tree.map(lambda x, y: x - y, a, b)) / norm(b)
    return {"loss_rel": abs(float(l1) - float(l2)) / abs(float(l2)),
            "grad_rel": rel(g1, g2),
            "floor_loss_rel": abs(float(l3) - float(l2)) / abs(float(l2)),
            "floor_grad_rel": rel(g3, g2)}


# ------------------------------------------------------------------- Tunix


def run_tunix(config, rows, steps, between=None):
  """Tunix's GRPOLearner for `steps` steps on `rows` (one batch) from
  `config.model.hf_path`: (step seconds, phase seconds summed over the
  steps after the first). `between()` runs just before each rollout,
  outside Tunix's timed step."""
  import jax
  from flax import nnx
  import grain.python as grain
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import llm_rl_tunix as tx_lib
  from ir_jax import pretrained
  from ir_jax import state as state_lib
  task = state_lib.build_task(config)
  tok = tx_lib.Tokenizer(task.vocab.tokenizer, task.eos_id, pad=0)
  phases = {"sampling": 0.0, "reward": 0.0, "reference_forward": 0.0,
            "update_actor": 0.0}
  starts, ends = [], []
  theta = int(pretrained.hf_config(config.model.hf_path)["rope_theta"])
  with tx_lib.patched_rope(theta):
    cluster, make_learner = tx_lib.build(config, config.model.hf_path, task,
                                         tok)

    def timed(name, fn):
      def wrapper(*a, **kw):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*a, **kw))
        if name == "update_actor":
          jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        if len(starts) > 1:
          phases[name] += time.perf_counter() - start
        return out
      return wrapper

    generate = timed("sampling", cluster.generate)

    def step_start(*a, **kw):
      if starts:
        ends.append(time.perf_counter())
      object.__setattr__(cluster.cluster_config.rollout_config, "seed",
                         len(starts))
      if between is not None:
        between()
      starts.append(time.perf_counter())
      return generate(*a, **kw)

    cluster.generate = step_start
    cluster.get_ref_per_token_logps = timed("reference_forward",
                                            cluster.get_ref_per_token_logps)
    cluster.update_actor = timed("update_actor", cluster.update_actor)

    def reward_fn(prompts, completions, answer, **kwargs):
      start = time.perf_counter()
      r = [tx_lib.char_error(c, a) for c, a in zip(completions, answer)]
      if len(starts) > 1:
        phases["reward"] += time.perf_counter() - start
      return r

    learner = make_learner(reward_fn)
    learner.train(grain.MapDataset.source(rows * steps).batch(len(rows)))
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
    ends.append(time.perf_counter())
  return [e - s for s, e in zip(starts, ends)], phases


# ------------------------------------------------------------------ driver


def summary(times, warmup):
  steady = np.asarray(times[warmup:])
  q1, med, q3 = np.percentile(steady, [25, 50, 75])
  return float(med), float(q3 - q1)


def measure(shape, hf_path, args, systems, want_parity=True):
  """Rows of one shape: alternating rounds in this process."""
  have = {s: s != "tunix" or have_tunix() for s in systems}
  ours = {}
  for name in ("ir_jax", "ir_jax_repeated"):
    if name in systems:
      ours[name] = Ours(make_config(shape, hf_path, name == "ir_jax",
                                    args.tiny))
  times = {name: [] for name in systems}
  steps = args.warmup + args.rounds

  def ours_round():
    for name, runner in ours.items():
      times[name].append(runner.step())

  tunix_phases = {}
  if "tunix" in systems and have["tunix"]:
    first = next(iter(ours.values()))
    times["tunix"], tunix_phases = run_tunix(
        make_config(shape, hf_path, True, args.tiny), first.prompts(), steps,
        between=ours_round)
  else:
    for _ in range(steps):
      ours_round()
  rows = []
  for name in systems:
    if not have[name]:
      print(f"  {shape}: {name} skipped (not installed)", flush=True)
      continue
    step_s, iqr = summary(times[name], args.warmup)
    if name == "tunix":
      phases = {k: v / max(len(times[name]) - 1, 1)
                for k, v in tunix_phases.items()}
    else:
      phases = ours[name].phases()
    rows.append({"shape": shape, "system": name, "step_s": step_s,
                 "step_iqr_s": iqr, "warmup": args.warmup,
                 "rounds": args.rounds, "phases": phases,
                 "phase_sum_s": float(sum(phases.values())),
                 "steps": times[name]})
    print(f"  {shape} {name}: {step_s:.2f} s/step (IQR {iqr:.2f}), phases "
          + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)
  parity = (ours["ir_jax"].parity() if "ir_jax" in ours and want_parity
            else None)
  return rows, parity


def peak_memory(shape, system, args):
  """Peak RSS (MB) of `system` alone running one step (its compilation
  included), in its own process."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "peak.json")
    cmd = [sys.executable, "-m", "benchmarks.llm_step", "--child", system,
           "--shapes", shape, "--json", out, "--hf_path", args.hf_path]
    if args.tiny:
      cmd.append("--tiny")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
      sys.stderr.write(proc.stderr[-4000:])
      raise SystemExit(f"memory child {system} {shape} failed.")
    with open(out) as f:
      return json.load(f)["peak_mb"]


def child(args):
  shape = args.shapes.split(",")[0]
  if args.child == "tunix":
    runner = Ours(make_config(shape, args.hf_path, True, args.tiny))
    rows = runner.prompts()
    del runner
    run_tunix(make_config(shape, args.hf_path, True, args.tiny), rows, 1)
  else:
    runner = Ours(make_config(shape, args.hf_path, args.child == "ir_jax",
                              args.tiny))
    runner.step()
  with open(args.json, "w") as f:
    json.dump({"peak_mb": peak_rss_mb()}, f)


def peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM: reset by exec, unlike
  getrusage's ru_maxrss, which a child inherits from its parent's fork)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def table(rows, tiny=False):
  from benchmarks.common import markdown_table
  by = {(r["shape"], r["system"]): r for r in rows}
  out = []
  for r in rows:
    tunix = by.get((r["shape"], "tunix"))
    rep = by.get((r["shape"], "ir_jax_repeated"))
    task, p, t, b, k = (TINY if tiny else SHAPES)[r["shape"]]
    out.append({
        "shape": f"{r['shape']} ({p} + {t}, {b} x {k})",
        "system": r["system"], "s / step": r["step_s"],
        "IQR s": r["step_iqr_s"],
        "x Tunix steps/s": tunix["step_s"] / r["step_s"] if tunix else "",
        "x repeated steps/s": rep["step_s"] / r["step_s"] if rep else "",
        "phases (s)": ", ".join(f"{k} {v:.2f}"
                                for k, v in r["phases"].items()),
        "phase sum s": r["phase_sum_s"],
        "peak MB": round(r["peak_mb"]) if r.get("peak_mb") else ""})
  return markdown_table(out, list(out[0]))


def save(args, rows, parity):
  """Writes the JSON and Markdown results, keeping the rows (and parity)
  of shapes this run did not measure; returns (payload, markdown)."""
  from benchmarks import common
  path = args.json or os.path.join(common.RESULTS, "llm_step.json")
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if before.get("tiny") == args.tiny:
      measured = {r["shape"] for r in rows}
      rows = [r for r in before["rows"] if r["shape"] not in measured] + rows
      if parity is None:
        parity = before.get("parity")
  parity_rel = (None if parity is None else
                max(parity["loss_rel"], parity["grad_rel"]))
  payload = {"rows": rows, "parity_rel": parity_rel, "parity": parity,
             "machine": common.machine(), "tiny": args.tiny}
  md = table(rows, args.tiny) + ("" if parity is None else (
      f"\n\nparity_rel (shared vs repeated prompts, one rollout): "
      f"{parity_rel:.2e} (loss {parity['loss_rel']:.2e}, gradient "
      f"{parity['grad_rel']:.2e}); float floor (repeated vs itself, rows "
      f"reversed): loss {parity['floor_loss_rel']:.2e}, gradient "
      f"{parity['floor_grad_rel']:.2e}"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.splitext(path)[0] + ".md", "w") as f:
    f.write(md + "\n")
  return payload, md


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=5,
                 help="timed steps of each system after the warm-up")
  p.add_argument("--warmup", type=int, default=2,
                 help="steps dropped (the first two compile)")
  p.add_argument("--shapes", default="study,long")
  p.add_argument("--systems", default=",".join(SYSTEMS))
  p.add_argument("--json", default="")
  p.add_argument("--gguf", default="", help="default: fetch SmolLM2")
  p.add_argument("--tiny", action="store_true",
                 help="the tiny shapes, on --gguf as it is (tests)")
  p.add_argument("--no_memory", action="store_true")
  p.add_argument("--memory_only", action="store_true",
                 help="only the peak memory of the rows in the results file")
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--hf_path", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    return child(args)
  if args.tiny and not args.gguf:
    p.error("--tiny runs on --gguf PATH (a tiny GGUF).")
  shapes = [s for s in args.shapes.split(",") if s]
  if len(shapes) > 1:   # One process a shape: three loaded systems each.
    for shape in shapes:
      rest = [a for a in (argv if argv is not None else sys.argv[1:])]
      i = rest.index("--shapes") if "--shapes" in rest else None
      if i is not None:
        del rest[i:i + 2]
      subprocess.run([sys.executable, "-m", "benchmarks.llm_step",
                      "--shapes", shape] + rest, cwd=ROOT, check=True)
    with open(args.json or os.path.join(ROOT, "benchmarks", "results",
                                        "llm_step.json")) as f:
      return json.load(f)
  args.hf_path = base_weights(args)
  systems = [s for s in args.systems.split(",") if s]
  shape = shapes[0]
  if args.memory_only:   # Peak memory of rows already measured.
    path = args.json or os.path.join(ROOT, "benchmarks", "results",
                                     "llm_step.json")
    with open(path) as f:
      before = json.load(f)
    rows = [r for r in before["rows"] if r["shape"] == shape]
    for r in rows:
      r["peak_mb"] = peak_memory(shape, r["system"], args)
    return save(args, rows, None)[0]
  print(f"{shape}: {args.warmup} + {args.rounds} steps of "
        f"{', '.join(systems)}, alternating", flush=True)
  rows, parity = measure(shape, args.hf_path, args, systems,
                         want_parity=shape == "study")
  if not args.no_memory:
    for r in rows:
      r["peak_mb"] = peak_memory(shape, r["system"], args)
  payload, md = save(args, rows, parity)
  print(md)
  return payload


if __name__ == "__main__":
  main()
