"""Ahead-of-time compilation for TPU topologies, on any machine (no TPU).

With `libtpu` installed (`pip install -e ".[tpu-aot]"`),
`jax.experimental.topologies` describes the devices of a TPU slice that is
not there; a mesh over them, shape-only inputs (`ShapeDtypeStruct` with
shardings) and `jit(...).lower(...).compile()` give the per-chip program
XLA would run, with its memory and cost analysis and nothing allocated.

  ir-jax compile --config tpu_configs/v5p_64.py [--topology v5p:4x4x4]

reports, per chip: HBM (arguments, outputs, temporaries) against the chip's
HBM, FLOPs per step, and the step time and tokens/s at 40% and 60% of the
chip's peak bf16 FLOP/s, for the train step and the sampling loop with
in-loop rewards; it fails, naming the largest buffers, when either does not
fit.

FLOPs: XLA's cost analysis counts a while-loop body once, whatever its trip
count, so for a model under `nn.scan` it undercounts by ~the depth. The
train-step FLOPs are therefore measured on the same step compiled with 1 and
2 unrolled layers, f(L) = f(1) + (L - 1) (f(2) - f(1)), which is exact for a
step linear in depth (tested against an unrolled compile). Memory comes from
the real, full-depth compile.
"""

import dataclasses
import math
import os
import re
from typing import Any, Callable, Dict, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ir_jax import decode, parallel, state, step

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_bf16_flops: float   # Per chip, dense, from the Cloud TPU spec pages.
  megacore: bool = False   # Two TensorCores presented as one JAX device.


CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, megacore=True),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, megacore=True),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}

MFU_POINTS = (0.4, 0.6)


def chip_of(topology: str) -> Chip:
  """The chip of a topology string such as "v5p:4x4x4"."""
  gen = topology.split(":", 1)[0].strip().lower()
  gen = _ALIASES.get(gen, gen)
  if gen not in CHIPS:
    raise ValueError(f"Unknown TPU generation in topology {topology!r}; "
                     f"known: {', '.join(CHIPS)} (e.g. 'v5p:2x4x4').")
  return CHIPS[gen]


def _quiet_libtpu(topology: str) -> None:
  """libtpu looks for a TPU VM's metadata server and lockfile unless told
  it is compiling only; these defaults never override a user's settings."""
  gen = _ALIASES.get(topology.split(":")[0], topology.split(":")[0])
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{gen}-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def libtpu_available() -> bool:
  import importlib.util
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> List[Any]:
  """Devices of a (virtual) TPU slice, e.g. 64 for "v5p:4x4x4"."""
  chip = chip_of(topology)
  if not libtpu_available():
    raise RuntimeError(
        "AOT compilation for TPU needs libtpu: pip install -e '.[tpu-aot]' "
        "(jax[tpu] at the pinned jax version).")
  _quiet_libtpu(topology)
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(
        topology_name=topology, platform="tpu",
        chip_config_name="megacore" if chip.megacore else "default").devices)
  except Exception as e:  # libtpu's message names the bad part.
    raise ValueError(f"Topology {topology!r} could not be resolved by "
                     f"libtpu: {e}") from e


# --------------------------------------------------------------- analysis

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2,
                "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8}
_HLO_VALUE = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")


def largest_buffers(hlo_text: str, k: int = 5) -> List[Tuple[int, str, str]]:
  """The k largest array values of an optimized HLO module (per chip):
  [(bytes, instruction name, "dtype[dims]")], largest first."""
  seen = {}
  for line in hlo_text.splitlines():
    m = _HLO_VALUE.match(line)
    if not m or m.group(2) not in _DTYPE_BYTES:
      continue
    name, dtype, dims = m.groups()
    size = math.prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype]
    seen[name] = (size, name, f"{dtype}[{dims}]")
  return sorted(seen.values(), reverse=True)[:k]


def device_bytes(mem) -> int:
  """Bytes a compiled program holds on one device at its peak, from XLA's
  memory analysis: arguments + outputs - donated (aliased) + temporaries +
  generated code. The one formula of `memory_report` and `dry_run`."""
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes -
             mem.alias_size_in_bytes + mem.temp_size_in_bytes +
             mem.generated_code_size_in_bytes)


def memory_report(compiled, hbm_bytes: int) -> Dict[str, Any]:
  """Per-chip bytes of a compiled program against the chip's HBM."""
  mem = compiled.memory_analysis()
  total = device_bytes(mem)
  return {"argument_bytes": int(mem.argument_size_in_bytes),
          "output_bytes": int(mem.output_size_in_bytes),
          "alias_bytes": int(mem.alias_size_in_bytes),
          "temp_bytes": int(mem.temp_size_in_bytes),
          "code_bytes": int(mem.generated_code_size_in_bytes),
          "total_bytes": int(total), "hbm_bytes": int(hbm_bytes),
          "fits": bool(total <= hbm_bytes)}


# Fast mode: XLA:TPU's least optimisation effort, ~7x quicker compiles.
# Memory analysis then tracks the full compile within a few percent
# (tests/test_aot.py compares both on one config); FLOPs agree to 1e-4
# (v4-8, one layer: 1.07538e12 vs 1.07541e12). jax <= 0.10 spells it
# `exec_time_optimization_effort=-1`; jax >= 0.11 dropped that option for
# the effort level O0 (`optimization_level`, 9 = CompilerEffortLevel.O0).
FAST_OPTIONS = ({"exec_time_optimization_effort": -1.0}
                if "jax_exec_time_optimization_effort" in jax.config.values
                else {"optimization_level": 9})


def compile_or_oom(lowered, hbm_bytes: int, options=None):
  """(compiled or None, memory report). The TPU compiler refuses a program
  that cannot fit (RESOURCE_EXHAUSTED); the report then carries its message
  and the largest values of the lowered program (global shapes, before
  partitioning: the per-chip program was never built)."""
  try:
    compiled = lowered.compile(compiler_options=options or None)
  except Exception as e:  # jax.errors.JaxRuntimeError
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, {"fits": False, "hbm_bytes": int(hbm_bytes),
                  "compiler_error": str(e).strip(),
                  "largest_buffers_global": largest_buffers(
                      lowered.as_text(dialect="hlo"))}
  return compiled, memory_report(compiled, hbm_bytes)


def compiled_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def throughput(flops_per_chip: float, tokens_per_step: int, chip: Chip
               ) -> Dict[str, float]:
  """Step time and global tokens/s implied at each MFU point."""
  out = {}
  for mfu in MFU_POINTS:
    seconds = flops_per_chip / (mfu * chip.peak_bf16_flops)
    out[f"step_s_at_{int(mfu * 100)}"] = seconds
    out[f"tokens_per_s_at_{int(mfu * 100)}"] = (
        tokens_per_step / seconds if seconds else float("inf"))
  return out


# --------------------------------------------------------------- programs


def lower_step(config, devices, unrolled_layers: int = 0):
  """(lowered train step, abstract state, shardings, task, model, mesh,
  rules) of a config over `devices`, from shapes alone. `unrolled_layers`
  > 0: the same model at that depth, layers unrolled (FLOP counting; for a
  Hugging Face model too, whose depth comes from its config.json)."""
  task, model, tx, mesh, rules = state.setup(config, devices,
                                             shapes_only=True)
  if unrolled_layers:
    model = model.clone(num_layers=unrolled_layers, scan_layers=False)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = state.state_shardings(config, model, tx, task, mesh)
    lowered = step.lower_train_step(config, model, tx, task, mesh, abstract,
                                    shardings)
  return lowered, abstract, shardings, task, model, mesh, rules


def step_flops(config, devices, compiled=None, options=None
               ) -> Tuple[float, str]:
  """(per-chip FLOPs of one train step, how they were counted).

  Transformer: exact under nn.scan, from 1- and 2-layer unrolled compiles
  (module doc). Other models: XLA's count of `compiled`, whose recurrent
  loops (an LSTM's scan over time) are counted once: a lower bound.
  """
  if config.model.kind != "transformer":
    compiled = compiled or lower_step(config, devices)[0].compile(options)
    return compiled_flops(compiled), "xla (loop bodies counted once)"
  f = [compiled_flops(lower_step(config, devices, layers)[0].compile(options))
       for layers in (1, 2)]
  how = "xla, 1- and 2-layer unrolled compiles extrapolated to depth"
  if config.rl.mode:  # The sampling scan's body is still counted once.
    how += "; RL sampling loop counted once"
  depth = state.setup(config, devices, shapes_only=True).model.num_layers
  return f[0] + (depth - 1) * (f[1] - f[0]), how


def sampling_batch(config) -> Tuple[int, int]:
  """(prompts, samples per prompt) of the RL sampling loop: every prompt of
  the global batch, `rl.num_samples` each."""
  return int(config.batch_size), max(1, int(config.rl.num_samples))


def lower_sampling(config, model, task, mesh, rules, param_shardings,
                   abstract_params):
  """`decode.sample_with_rewards` at the config's sampling batch, lowered."""
  prompts, k = sampling_batch(config)
  sharding = parallel.batch_sharding(mesh)
  spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  params = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_params, param_shardings)
  rl = config.rl

  def sample(params, source, target, lengths, rng):
    return decode.sample_with_rewards(
        model, {"params": params}, source, target, lengths, rng,
        max_len=task.target_len, num_samples=k,
        temperature=float(rl.temperature) or 1.0, top_k=int(rl.top_k),
        top_p=float(rl.top_p))

  rng = jax.ShapeDtypeStruct((2,), jnp.uint32,
                             sharding=parallel.replicated(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(sample).lower(
        params, spec((prompts, task.source_len)),
        spec((prompts, task.target_len)), spec((prompts,)), rng)


def compile_config(config, topology: str = "", print_fn: Callable = print,
                   sampling: bool = True, flops: bool = True,
                   fast: bool = False) -> Dict[str, Any]:
  """AOT-compiles a config's train step (and sampling loop) for a topology.

  Returns a JSON-able report; `report["fits"]` is False when either program
  needs more HBM per chip than the chip has. `flops=False` skips the two
  extra compiles that count FLOPs (then no throughput is reported);
  `fast=True` compiles with `FAST_OPTIONS`.
  """
  topology = topology or config.get("topology", "")
  if not topology:
    raise ValueError("No topology: pass --topology (e.g. v5p:2x4x4) or set "
                     "config.topology.")
  chip = chip_of(topology)
  devices = topology_devices(topology)
  if config.get("chips") and int(config.chips) != len(devices):
    raise ValueError(f"config.chips={config.chips} but topology {topology} "
                     f"has {len(devices)} chips.")
  lowered, abstract, shardings, task, model, mesh, rules = lower_step(
      config, devices)
  options = FAST_OPTIONS if fast else None
  compiled, train_mem = compile_or_oom(lowered, chip.hbm_bytes, options)
  tokens = config.batch_size * (task.source_len + task.target_len - 1)
  params = sum(l.size for l in jax.tree.leaves(abstract.params))
  report = {"topology": topology, "chip": chip.name, "chips": len(devices),
            "fast": bool(fast),
            "mesh": dict(mesh.shape), "params": int(params),
            "global_batch": int(config.batch_size), "tokens_per_step": tokens,
            "train": dict(train_mem, model_flops_per_chip=(
                6 * params * tokens / len(devices)))}
  if compiled is None:  # Does not fit: nothing else is worth compiling.
    report["fits"] = False
    _print_report(report, print_fn)
    return report
  if flops:
    count, counted = step_flops(config, devices, compiled, options)
    report["train"].update(flops_per_chip=count, flops_counted=counted,
                           **throughput(count, tokens, chip))
  if not train_mem["fits"]:
    report["train"]["largest_buffers"] = largest_buffers(compiled.as_text())
  if sampling:
    sampled, sample_mem = compile_or_oom(
        lower_sampling(config, model, task, mesh, rules, shardings.params,
                       abstract.params), chip.hbm_bytes, options)
    prompts, k = sampling_batch(config)
    report["sampling"] = dict(sample_mem, prompts=prompts, samples=k,
                              sampled_tokens=prompts * k * task.target_len)
    if sampled is not None and not sample_mem["fits"]:
      report["sampling"]["largest_buffers"] = largest_buffers(sampled.as_text())
  report["fits"] = bool(train_mem["fits"] and
                        (not sampling or report["sampling"]["fits"]))
  _print_report(report, print_fn)
  return report


def _print_report(r, print_fn):
  gib = lambda b: f"{b / GiB:7.2f} GiB"
  print_fn(f"{r['topology']}: {r['chips']} x {r['chip']}, mesh {r['mesh']}, "
           f"{r['params']:,} params, global batch {r['global_batch']} "
           f"({r['tokens_per_step']:,} tokens/step)")
  programs = [("train step", r["train"])]
  if "sampling" in r:
    s = r["sampling"]
    programs.append((f"sampling {s['prompts']}x{s['samples']}", s))
  for name, p in programs:
    if "compiler_error" in p:
      print_fn(f"  {name}: DOES NOT FIT in {gib(p['hbm_bytes'])} HBM per chip; "
               f"the TPU compiler says: {p['compiler_error']}\n"
               "  largest values of the program (global shapes):")
      for size, inst, shape in p["largest_buffers_global"]:
        print_fn(f"    {gib(size)}  {shape}  {inst}")
      continue
    print_fn(f"  {name} per chip: arguments {gib(p['argument_bytes'])}, "
             f"outputs {gib(p['output_bytes'])} (aliased "
             f"{gib(p['alias_bytes'])}), temp {gib(p['temp_bytes'])} -> "
             f"total {gib(p['total_bytes'])} of {gib(p['hbm_bytes'])} HBM "
             f"({100 * p['total_bytes'] / p['hbm_bytes']:.0f}%) "
             f"{'fits' if p['fits'] else 'DOES NOT FIT'}")
    for size, inst, shape in p.get("largest_buffers", ()):
      print_fn(f"    {gib(size)}  {shape}  {inst}")
  t = r["train"]
  if "flops_per_chip" not in t:
    return
  if "counted once" in t["flops_counted"]:
    print_fn(f"  FLOPs are a lower bound ({t['flops_counted']}), so the "
             "times below are too optimistic.")
  print_fn(f"  train step: {t['flops_per_chip'] / 1e12:.2f} TFLOP per chip "
           f"(6 N T model FLOPs {t['model_flops_per_chip'] / 1e12:.2f}); "
           + "; ".join(f"at {int(m * 100)}% MFU {t[f'step_s_at_{int(m * 100)}'] * 1e3:.1f}"
                       f" ms/step, {t[f'tokens_per_s_at_{int(m * 100)}']:,.0f} tokens/s"
                       for m in MFU_POINTS))


# --------------------------------------------------------------- dry run


def dry_run(config, print_fn: Callable = print) -> Dict[str, Any]:
  """Validates a config against the visible devices and estimates memory.

  Checks the config (`config.validate`: mesh against the device count,
  batch against the data axes, every field) and the logical rules against
  the param shapes (errors name the field); then reports per-device bytes
  of params, optimizer state, gradients (of the trained part only: LoRA's
  adapters, a soft prompt) and activations (an analytic estimate; every
  sharded weight counted as gathered at once, the RL sampling loop not
  modelled), next to what XLA's memory analysis of the compiled step says
  (`device_bytes`). Nothing is trained.
  """
  task, model, tx, mesh, rules = state.setup(config, shapes_only=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = state.state_shardings(config, model, tx, task, mesh)
    per_device = lambda tree, sh: sum(
        leaf.size * leaf.dtype.itemsize / _shards(s)
        for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sh)))
    params = per_device(abstract.params, shardings.params)
    optimizer = per_device(abstract.opt_state, shardings.opt_state)
    other = per_device(abstract, shardings) - params - optimizer
    part = step.trained_part(config)   # LoRA / soft prompt: only it has grads.
    gradients = params if part is None else per_device(
        part[0](abstract.params), part[0](shardings.params))
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    local_batch = config.batch_size // batch_shards
    activations = activation_bytes(config, task, local_batch,
                                   mesh.shape["tensor"], model)
    full_params = sum(l.size * l.dtype.itemsize
                      for l in jax.tree.leaves(abstract.params))
    # Sharded weights are all-gathered for compute, one copy at a time.
    gathered = full_params - params
    # A full fine-tune with a KL term keeps a frozen reference copy.
    reference = params if (config.rl.mode and config.rl.kl_weight and
                           part is None and (config.init_from or
                                             config.model.get("hf_path"))) \
        else 0
    loading = loading_bytes(config, abstract.params)
    estimate = (params + gradients + optimizer + other + activations +
                gathered + reference)
    compiled = step.lower_train_step(config, model, tx, task, mesh, abstract,
                                     shardings).compile()
    mem = compiled.memory_analysis()
    xla = None if mem is None else device_bytes(mem)
  report = {"devices": jax.device_count(), "processes": jax.process_count(),
            "mesh": dict(mesh.shape), "global_batch": config.batch_size,
            "params_count": sum(l.size for l in jax.tree.leaves(abstract.params)),
            "params_bytes": params, "optimizer_bytes": optimizer,
            "gradient_bytes": gradients, "other_state_bytes": other,
            "activation_bytes": activations, "gathered_bytes": gathered,
            "reference_bytes": reference, "estimate_bytes": estimate,
            "loading_host_bytes": loading,
            "xla_bytes": xla}
  mib = lambda b: f"{b / 2**20:9.2f} MiB"
  print_fn(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices "
           f"({jax.process_count()} processes); global batch "
           f"{config.batch_size} -> {local_batch} per batch shard; "
           f"{report['params_count']:,} params")
  print_fn("per device:")
  for k in ("params", "optimizer", "gradient", "other_state", "activation",
            "gathered", "reference"):
    print_fn(f"  {k:<12} {mib(report[k + '_bytes'])}")
  print_fn(f"  {'total':<12} {mib(estimate)}  (estimate)")
  if xla is not None:
    print_fn(f"  {'XLA':<12} {mib(xla)}  (compiled step, memory_analysis)")
  if loading:
    print_fn(f"loading model.hf_path: {mib(loading)} of host memory per "
             "process beyond the placed params (one tensor read, dequantized "
             "and cast at a time)")
  return report


def loading_bytes(config, params) -> int:
  """Host bytes that loading `model.hf_path` needs beyond the placed
  params: the largest single tensor (a scanned stack counts one layer),
  three float32 copies of it at once (read or dequantized, transposed,
  cast). 0 for a run that loads no checkpoint."""
  if not config.model.get("hf_path"):
    return 0
  largest = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    scanned = getattr(path[0], "key", None) == "layers"
    largest = max(largest, leaf.size // (leaf.shape[0] if scanned else 1))
  return 3 * 4 * largest


def _shards(sharding) -> int:
  return math.prod(
      math.prod(sharding.mesh.shape[a] for a in (ax if isinstance(ax, tuple)
                                                 else (ax,)))
      for ax in sharding.spec if ax is not None)


_LSTM_FLOATS = 14  # Per hidden unit, layer and token (gates, cell, hidden).


def activation_bytes(config, task, local_batch: int, tensor: int,
                     model=None) -> float:
  """Analytic bytes live at the peak of one training step on one device.

  Coefficients (floats per token) fitted once to XLA:CPU's memory analysis
  of this step (docs/scaling.md): a Transformer layer keeps
  ~12 E + 5 F + 3 H S (norms, q/k/v, MLP in/out, attention weights; S the
  sequence length); an LSTM layer ~14 H; embedding, logits, softmax and CE
  gradient ~6 E per token, plus 4 E + 3 V per target position (the final
  norm and the LM head run only where a target is predicted; XLA fuses
  most of the softmax); the fused reward
  adds the soft edit distance's probability planes, ~4 T^2 per example.
  Sharded dims divide by the tensor axis. Sizes come from `model` when
  given (a Hugging Face checkpoint's, `model.hf_path`), else the config.
  """
  m = model if model is not None else config.model   # A checkpoint's sizes.
  length = task.source_len + task.target_len - 1
  tokens = local_batch * length
  width = 2 if config.model.get("dtype") == "bfloat16" else 4
  if config.model.kind == "transformer":
    per_layer = (12 * m.embed_dim + 5 * m.mlp_dim / tensor +
                 3 * m.num_heads / tensor * length)
    remat = m.remat if model is not None else m.get("remat")
    if remat:  # Layer inputs kept; one layer recomputed at a time.
      body = m.num_layers * 2 * m.embed_dim + per_layer
    else:
      body = m.num_layers * per_layer
  else:
    body = m.num_layers * _LSTM_FLOATS * m.hidden_dim
  vocab = (model.vocab_size if model is not None else
           -(-task.vocab.size // config.vocab_multiple) * config.vocab_multiple)
  # Logits, softmax and CE only at the T positions that predict a target
  # (`models.target_logits` applies the LM head there alone).
  total = (tokens * width * (body + 6 * m.embed_dim) +
           local_batch * task.target_len * (width * 4 * m.embed_dim +
                                            4 * 3 * vocab / tensor))
  if (float(config.objective.alpha) > 0 or
      config.objective.alpha_schedule == "adaptive"):
    total += 4 * local_batch * 4 * task.target_len ** 2
  return float(total)
