"""Configs: the schema, `FILE[:ARG]` loading, overrides and every check.

Experiment configs are Python files with `get_config(arg)` that start from
`default_config()`; overrides come as `--config.a.b=value` (big_vision /
ml_collections style), parsed with the type of the field they replace.
`validate(config)` is the one place a config is checked: unknown keys,
wrong types, impossible values and combinations, the mesh against the
devices and the batch against the batch axes. It runs before any array
exists, so `ir-jax train --dry-run` rejects everything training would.

This module imports only ml_collections and the standard library: loading
a config never pulls in JAX, Flax, optax, orbax or grain.
"""

import ast
import importlib.util
import json
import math
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import ml_collections

# ------------------------------------------------------------------ schema

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# MaxText-style table: logical name -> mesh axis (None = replicated); read
# by ir_jax.parallel.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
)

# The fields each model kind takes (ir_jax.models), with their defaults.
MODEL_FIELDS = {
    "transformer": dict(kind="transformer", embed_dim=128, num_layers=2,
                        num_heads=4, mlp_dim=512, dropout=0.0,
                        scan_layers=False, remat=False, dtype="float32"),
    "lstm": dict(kind="lstm", embed_dim=128, hidden_dim=256, num_layers=2,
                 dropout=0.0, bidirectional_source=False, dtype="float32"),
}

TASKS = ("g2p", "charlm", "text")
# ir_jax.models.transformer.LORA_TARGETS (a test checks the two agree).
LORA_TARGETS = ("query", "key", "value", "out", "wi_gate", "wi_up", "wo")
# Fields a transformer config may add (experiments/hf.py); absent means
# off, so the runs saved before them stay compatible. hf_path: a Hugging
# Face checkpoint directory, whose config.json sets the architecture (the
# other size fields are then ignored) and whose weights start the run;
# lora: rank > 0 trains rank-r adapters on `targets` (comma list of query,
# key, value, out, wi_gate, wi_up, wo) and freezes the rest; prefix_lm:
# the source attends both ways (a prefix LM, models.Transformer.prefix_len).
MODEL_OPTIONAL = {
    "transformer": dict(hf_path="", lora=dict(rank=0, alpha=16.0,
                                              targets="query,value"),
                        prefix_lm=False),
}
DIRECTIONS = ("g2p", "p2g")
DTYPES = ("float32", "bfloat16")
ALPHA_SCHEDULES = ("constant", "warmup", "adaptive")
IMPLEMENTATIONS = ("auto", "xla", "pallas")
RL_MODES = ("", "seq", "instant", "ocd", "mwer", "grpo")
CANDIDATES = ("samples", "beam")
# GRPO credit (ir_jax.objectives.credit): "token" is the deprecated alias of
# "reward_to_go", kept as the default because saved configs use it.
CREDITS = ("token", "sequence", "reward_to_go", "immediate", "lambda")
CREDIT_BASELINES = ("position", "none")
AGGREGATIONS = ("token_mean", "sequence_mean", "constant")
KL_ESTIMATORS = ("k3", "exact")
# ir_jax.rewards' builtin reward names (tests check the two agree).
REWARD_NAMES = ("edit_distance", "exact_match", "length_penalty",
                "negative_edit_distance", "cosine", "char_edit_distance",
                "char_error", "char_exact_match")
BASELINES = ("group", "greedy", "none")
PROMPT_MODES = ("", "soft", "search")
PROMPT_INITS = ("random", "tag", "vocab")
SEARCH_STRATEGIES = ("evolve", "greedy")


def default_config() -> ml_collections.ConfigDict:
  """Every field a config may set (experiments start from this)."""
  c = ml_collections.ConfigDict()
  c.task = "g2p"                # "g2p" (CMUdict) or "charlm" (text files).
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 128            # Global, over all processes and devices.
  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.eval_batch_size = 1024
  c.init_from = ""              # A workdir whose latest params start this run.
  c.max_nonfinite = 20          # Consecutive skipped steps before stopping.
  # Log, at each log step, the exact edit-distance reward and exact-match
  # rate of the model's greedy outputs on the step's batch (on device, in
  # the jitted step: ir_jax.step.with_greedy_reward), whatever the objective.
  c.log_greedy_reward = True
  # The model's vocab is padded to a multiple of this (ids past the task's
  # vocab never occur), so the vocab axis shards over any tensor size.
  c.vocab_multiple = 128
  # Pod metadata (tpu_configs/): the TPU topology the config is sized for.
  c.topology = ""
  c.chips = 0
  c.data = ml_collections.ConfigDict(dict(
      source_len=18, target_len=18, stress=False, max_train_words=0,
      max_eval_words=0, paths=(), context=32, continuation=16, stride=8,
      max_eval_items=512,
      # G2P: "g2p", "p2g" or "g2p,p2g" (multi-task); task tags in the
      # vocab and in the prompt slot(s) after BOS; number of prompt slots.
      directions="g2p", tags=False, prompt_len=0,
      # G2P: k > 1 joins k words per item with "|" (longer outputs).
      join_words=1,
      # k > 0: batches of items of similar length, cut to the widths of
      # their class (k source x k target widths chosen for the least
      # padding; ir_jax.data.tasks.LengthBuckets). 0: every batch is
      # source_len + target_len wide.
      length_buckets=0,
      # task="text": JSONL files of {"prompt", "target"} (ir_jax.data.text),
      # tokenised with `tokenizer` (a checkpoint directory; default
      # model.hf_path); max_train_words / max_eval_items cap the items.
      # chat_template: each prompt rendered as one user turn with the
      # tokenizer's chat template (add_generation_prompt; SmolLM2 adds a
      # ~30-token default system turn, so source_len must allow it).
      train_path="", eval_path="", test_path="", tokenizer="",
      chat_template=False))
  c.model = ml_collections.ConfigDict(dict(MODEL_FIELDS["transformer"]))
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=200, weight_decay=1e-4, grad_clip=1.0,
      b2=0.98, label_smoothing=0.0,
      # "cosine": warm-up, then cosine decay to end_fraction x the peak;
      # "constant": warm-up, then the peak (a branch point to fine-tune from).
      schedule="cosine", end_fraction=0.01))
  c.objective = ml_collections.ConfigDict(dict(
      alpha=0.0, alpha_schedule="constant", alpha_warmup_steps=0,
      soft_ed_weight=1.0, cosine_weight=0.0, gamma=1.0,
      # Soft edit distance code: "auto" (Pallas on TPU/GPU, XLA on CPU),
      # "xla" or "pallas" (rewards.soft_edit_distance's `implementation`).
      soft_ed_implementation="auto",
      # alpha_schedule="adaptive": the reward-driven controller.
      alpha_min=0.0, alpha_max=1.0, alpha_rate=0.002))
  # RL on the model's own samples (ir_jax.decode.sample_with_rewards):
  # mode "" (off), "seq", "instant", "ocd", "mwer" or "grpo"; alpha mixes CE
  # (1 - alpha). rewards: "name[:weight],..." of ir_jax.rewards' builtins
  # (edit_distance, exact_match, length_penalty, negative_edit_distance,
  # cosine; for subword tokenizers the byte-level char_edit_distance,
  # char_error (bounded: -min(CER, 1)) and char_exact_match) or a user's by
  # import path (package.module.name).
  c.rl = ml_collections.ConfigDict(dict(
      mode="", num_samples=4, temperature=1.0, top_k=0, top_p=1.0,
      baseline="group", kl_weight=0.0, rewards="edit_distance:1.0",
      # GRPO (ir_jax.objectives.grpo_*): clip [1 - epsilon, 1 +
      # epsilon_high] (0 = epsilon; DAPO raises it), inner updates per
      # rollout, token_mean (DAPO) | sequence_mean (GRPO) | constant
      # (Dr.GRPO) aggregation, group_std=False for Dr.GRPO's advantages,
      # credit (ir_jax.objectives.credit): "sequence", or per token from the
      # DP's instant rewards r_t: "reward_to_go" (sum of r from t on; alias
      # "token", deprecated), "immediate" (r_t alone: the optimal
      # completion's advantage) or "lambda" (sum_k credit_lambda^k r_t+k);
      # credit_baseline "position" (centred and scaled per position in the
      # group: the original "token") or "none" (no centring, one scale per
      # group: its returns' std); KL to the reference (kl_weight = beta) by
      # "k3" or "exact".
      epsilon=0.2, epsilon_high=0.0, inner_steps=1,
      loss_aggregation="sequence_mean", group_std=True, credit="token",
      credit_lambda=0.5, credit_baseline="position", kl_estimator="k3",
      # MWER (objectives.mwer_loss): the N-best list is the beam's
      # num_samples best ("beam") or num_samples samples ("samples").
      candidates="samples",
      # Each prompt computed once for its num_samples samples, in sampling
      # and in the teacher-forced passes (models.target_logits); False
      # repeats it per sample (the same numbers up to float rounding;
      # kept for measurement and parity tests).
      share_prompts=True))
  # Prompt optimisation on a frozen model (--config.init_from=WORKDIR):
  # mode "" (off), "soft" (P learned embeddings in the data.prompt_len
  # slots, trained with any objective above) or "search" (a discrete prompt
  # of P tokens by evolution or greedy replacement, ir_jax.prompt_search).
  c.prompt = ml_collections.ConfigDict(dict(
      mode="", length=4, init="random",       # soft: random | tag | vocab
      strategy="evolve", population=32, rounds=20, elite=8,
      mutation_rate=0.25, score_words=256))   # search
  # Evaluation decoding: beam_size 1 is greedy; > 1 beam search
  # (ir_jax.decode.beam_search) with score log p / len^length_penalty.
  c.eval = ml_collections.ConfigDict(dict(beam_size=1, length_penalty=0.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical param axis -> mesh axes (MaxText style), see ir_jax.parallel.
  c.logical_rules = DEFAULT_RULES
  return c


# ------------------------------------------------------------------ loading


def sibling(this_file: str, name: str):
  """Imports config file `name` next to `this_file` (configs share bodies).

  Config files are loaded by path, not as a package, so they reach each
  other this way: `_base = sibling(__file__, "_base.py")`.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
  module_spec = importlib.util.spec_from_file_location(
      "ir_jax_config_" + os.path.splitext(name)[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def beside(this_file: str, *parts: str) -> str:
  """The absolute path of `parts` next to config file `this_file` (data a
  config ships, such as tpu_configs/hf/*/config.json)."""
  return os.path.join(os.path.dirname(os.path.abspath(this_file)), *parts)


def variants(arg, allowed, name: str) -> set:
  """The comma list `arg` of a `FILE:ARG` spec, checked against `allowed`."""
  chosen = set(filter(None, (arg or "").split(",")))
  unknown = chosen - set(allowed)
  if unknown:
    raise ValueError(f"Unknown {name} variants {sorted(unknown)}; choose "
                     f"from {', '.join(allowed)}.")
  return chosen


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:arg]` and returns its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path!r}: no such file.")
  module = sibling(path, os.path.basename(path))
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config(arg).")
  return module.get_config(arg or None)


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> List[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += leaf_keys(v, f"{prefix}{k}.")
    else:
      keys.append(prefix + k)
  return keys


def _parse(text: str, old):
  if isinstance(old, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"expected a boolean, got {text!r}")
  if isinstance(old, int):
    return int(text)
  if isinstance(old, float):
    return float(text)
  if isinstance(old, str) or old is None:
    try:
      value = ast.literal_eval(text)
      return value if old is None else str(value)
    except (ValueError, SyntaxError):
      return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = None
  if not isinstance(value, (list, tuple)):
    raise ValueError(f"expected a tuple such as (1, 2), got {text!r}")
  return tuple(value)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `a.b=value` strings; unknown keys fail listing the valid ones."""
  valid = leaf_keys(config)
  for item in overrides:
    key, sep, text = item.partition("=")
    key = key.removeprefix("--config.").removeprefix("config.")
    if not sep:
      raise ValueError(f"Override {item!r} must look like --config.{key}=VALUE.")
    if key not in valid:
      raise ValueError(f"Unknown config key {key!r}. Valid keys:\n  " +
                       "\n  ".join(valid))
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    try:
      node[leaf] = _parse(text, node[leaf])
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--config.{key}={text!r}: {e}") from None
  return config


def check_keys(config: ml_collections.ConfigDict,
               reference: ml_collections.ConfigDict) -> None:
  """Raises if `config` has keys the reference (defaults) does not."""
  unknown = sorted(set(leaf_keys(config)) - set(leaf_keys(reference)))
  if unknown:
    raise ValueError(f"Unknown config keys {unknown}. Valid keys:\n  " +
                     "\n  ".join(leaf_keys(reference)))


def save(config: ml_collections.ConfigDict, path: str) -> None:
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def from_json(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def with_defaults(config: ml_collections.ConfigDict,
                  defaults: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the fields it lacks taken from `defaults` (recursively);
  configs saved by older versions gain the sections added since. The model
  section is per kind, so it is kept as saved."""
  merged = ml_collections.ConfigDict(defaults.to_dict())
  def fill(dst, src):
    for k, v in src.items():
      if isinstance(v, ml_collections.ConfigDict) and k in dst and \
          isinstance(dst[k], ml_collections.ConfigDict) and k != "model":
        fill(dst[k], v)
      else:
        dst[k] = v
  with merged.unlocked():
    fill(merged, config)
  return merged


# ------------------------------------------------------------------ checks


def mesh_shape(mesh_config, num_devices: int) -> Tuple[int, int, int]:
  """Resolves `config.mesh` (-1 = fill) against the device count, or raises."""
  dims = [int(mesh_config[a]) for a in MESH_AXES]
  _check_mesh_sizes(dims)
  fills = [i for i, d in enumerate(dims) if d == -1]
  fixed = math.prod(d for d in dims if d != -1)
  if fills:
    if num_devices % fixed:
      raise ValueError(
          f"config.mesh {dict(zip(MESH_AXES, dims))}: the fixed axes "
          f"({fixed}) do not divide the {num_devices} devices; pick sizes "
          f"whose product divides {num_devices}.")
    dims[fills[0]] = num_devices // fixed
  if math.prod(dims) != num_devices:
    raise ValueError(
        f"config.mesh {dict(zip(MESH_AXES, dims))} has {math.prod(dims)} "
        f"devices but {num_devices} are visible; set the product to "
        f"{num_devices} or use -1 on one axis.")
  return tuple(dims)


def _check_mesh_sizes(dims: Sequence[int]) -> None:
  if sum(d == -1 for d in dims) > 1:
    raise ValueError("At most one of config.mesh.data/fsdp/tensor may be -1 "
                     f"(fill), got {dict(zip(MESH_AXES, dims))}.")
  if any(d == 0 or d < -1 for d in dims):
    raise ValueError(f"config.mesh sizes must be positive or -1, got "
                     f"{dict(zip(MESH_AXES, dims))}.")


def _type_name(default) -> str:
  if isinstance(default, bool):
    return "a boolean"
  if isinstance(default, int):
    return "an integer"
  if isinstance(default, float):
    return "a number"
  if isinstance(default, str):
    return "a string"
  return "a tuple"


def _has_type(value, default) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  return isinstance(value, (tuple, list))


def _check_schema(config: ml_collections.ConfigDict) -> None:
  """Unknown keys (listing the valid ones) and wrong types, field by field;
  the model section is checked against its kind's fields."""
  reference = default_config()
  kind = config.get("model", {}).get("kind", "transformer")
  if kind not in MODEL_FIELDS:
    raise ValueError(f"config.model.kind must be one of "
                     f"{', '.join(MODEL_FIELDS)}, got {kind!r}.")
  fields = {**MODEL_FIELDS[kind], **MODEL_OPTIONAL.get(kind, {})}
  reference.model = ml_collections.ConfigDict(
      {k: v for k, v in fields.items() if k in MODEL_FIELDS[kind] or
       k in config.model})
  model_extra = sorted(set(config.model.keys()) - set(fields))
  if model_extra:
    raise ValueError(
        f"config.model has a field the {kind} model does not take: "
        f"{model_extra}. The {kind} fields are: {', '.join(fields)}.")
  check_keys(config, reference)
  for key in leaf_keys(config):
    value, default = _get(config, key), _get(reference, key)
    if key == "logical_rules":
      _check_rules(value)
    elif not _has_type(value, default):
      raise ValueError(f"config.{key} must be {_type_name(default)}, got "
                       f"{value!r} ({type(value).__name__}).")


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def _check_rules(rules) -> None:
  fix = ("config.logical_rules is a sequence of (logical name, mesh axes) "
         f"pairs; mesh axes are None, one of {MESH_AXES} or a tuple of them")
  if not isinstance(rules, (tuple, list)):
    raise ValueError(f"{fix}; got {rules!r}.")
  for rule in rules:
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and
            isinstance(rule[0], str)):
      raise ValueError(f"{fix}; got the entry {rule!r}.")
    axes = rule[1]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    if not isinstance(axes, (tuple, list)) or any(a not in MESH_AXES
                                                  for a in axes):
      raise ValueError(f"{fix}; got {rule!r}.")


def _check_rewards(spec) -> None:
  """rl.rewards: `name[:weight]` items (the registry lives in
  ir_jax.rewards; here only the syntax, so configs load without JAX)."""
  if not isinstance(spec, str) or not spec.strip(","):
    raise ValueError("config.rl.rewards must name at least one reward, e.g. "
                     f"'edit_distance:1.0', got {spec!r}.")
  for item in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, weight = item.partition(":")
    if not name or not all(part.isidentifier() for part in name.split(".")):
      raise ValueError(f"config.rl.rewards: {item!r} is not name[:weight] "
                       "(a builtin such as edit_distance, or package.module."
                       "name).")
    if "." not in name and name not in REWARD_NAMES:
      raise ValueError(f"config.rl.rewards: unknown reward {name!r}; builtins "
                       f"are {', '.join(REWARD_NAMES)}, or a user reward by "
                       "import path (package.module.name).")
    try:
      w = float(weight) if sep else 1.0
    except ValueError:
      w = float("nan")
    if w != w or w in (float("inf"), float("-inf")):
      raise ValueError(f"config.rl.rewards: weight {weight!r} of {name!r} "
                       "must be a finite number (name:weight, e.g. "
                       "exact_match:0.5).")


def _one_of(name: str, value, allowed: Sequence) -> None:
  if value not in allowed:
    raise ValueError(f"config.{name} must be one of "
                     f"{', '.join(repr(a) for a in allowed)}; got {value!r}.")


def _at_least(config, names: Iterable[str], low, why: str = "") -> None:
  for name in names:
    value = _get(config, name)
    if value < low:
      raise ValueError(f"config.{name} must be >= {low}{why}, got {value}.")


def _in_range(name: str, value, low, high, *, low_open=False,
              high_open=False) -> None:
  above = value > low if low_open else value >= low
  below = value < high if high_open else value <= high
  if not (above and below):
    interval = (("(" if low_open else "[") + f"{low}, {high}" +
                (")" if high_open else "]"))
    raise ValueError(f"config.{name} must be in {interval}, got {value}.")


def validate(config: ml_collections.ConfigDict, *,
             num_devices: Optional[int] = None,
             num_processes: int = 1) -> None:
  """Checks a whole config; raises ValueError naming the field and the fix.

  Runs before any device work (`ir-jax train --dry-run` included). With
  `num_devices` the mesh is resolved against the devices and the batch
  against the batch axes; without, only what the config alone determines. What needs the model's parameter shapes (a sharded
  dim that does not divide its mesh axes) is checked when the shardings
  are derived, still from shapes alone (`ir_jax.parallel.check_divisible`).
  """
  _check_schema(config)
  c = config
  _at_least(c, ("total_steps", "batch_size", "log_every", "eval_every",
                "checkpoint_every", "eval_batch_size", "keep_checkpoints",
                "max_nonfinite", "vocab_multiple"), 1)
  _at_least(c, ("chips",), 0)
  _at_least(c, ("eval.beam_size",), 1)
  _at_least(c, ("eval.length_penalty",), 0.0)
  _one_of("task", c.task, TASKS)

  # Data.
  d = c.data
  _at_least(c, ("data.max_train_words", "data.max_eval_words",
                "data.max_eval_items", "data.prompt_len",
                "data.length_buckets"), 0)
  if c.task == "g2p":
    directions = [x.strip() for x in d.directions.split(",")]
    if not directions or any(x not in DIRECTIONS for x in directions):
      raise ValueError(f"config.data.directions must be a comma list of "
                       f"{', '.join(DIRECTIONS)} (e.g. 'g2p,p2g'), got "
                       f"{d.directions!r}.")
    slots = max(d.prompt_len, 1 if d.tags else 0)
    _at_least(c, ("data.target_len",), 2, " (one symbol plus EOS)")
    _at_least(c, ("data.source_len",), 3 + slots,
              f" (BOS, {slots} prompt slot(s), one symbol and SEP)")
  elif c.task == "text":
    for key in ("train_path", "eval_path"):
      if not d[key]:
        raise ValueError(f"config.data.{key} must name a JSONL file of "
                         "{\"prompt\", \"target\"} lines for task='text' "
                         "(python -m ir_jax.data.text --cmudict DIR writes "
                         "the CMUdict split).")
    if not (d.tokenizer or c.model.get("hf_path")):
      raise ValueError("task='text' needs a tokenizer: set "
                       "--config.model.hf_path=DIR or --config.data.tokenizer"
                       "=DIR (a directory with tokenizer.json).")
    _at_least(c, ("data.source_len",), 1)
    _at_least(c, ("data.target_len",), 2, " (one token plus EOS)")
  else:
    _at_least(c, ("data.context", "data.continuation", "data.stride"), 1)

  # Model.
  m = c.model
  _one_of("model.dtype", m.get("dtype", "float32"), DTYPES)
  _in_range("model.dropout", m.get("dropout", 0.0), 0.0, 1.0, high_open=True)
  sizes = [k for k in ("embed_dim", "num_layers", "num_heads", "mlp_dim",
                       "hidden_dim") if k in m]
  _at_least(c, [f"model.{k}" for k in sizes], 1)
  if m.kind == "transformer":
    heads = m.get("num_heads", MODEL_FIELDS["transformer"]["num_heads"])
    embed = m.get("embed_dim", MODEL_FIELDS["transformer"]["embed_dim"])
    if embed % heads:
      raise ValueError(f"config.model.num_heads={heads} must divide "
                       f"model.embed_dim={embed} (heads of embed_dim / "
                       "num_heads each); pick a divisor.")
    if (embed // heads) % 2:
      raise ValueError(f"config.model.embed_dim / num_heads = "
                       f"{embed // heads} must be even (rotary embeddings "
                       "rotate pairs of dims); change embed_dim or num_heads.")

  lora = m.get("lora")
  if lora is not None and lora.rank:
    _at_least(c, ("model.lora.rank",), 0)
    if lora.alpha <= 0:
      raise ValueError(f"config.model.lora.alpha must be > 0, got "
                       f"{lora.alpha}.")
    targets = [t.strip() for t in lora.targets.split(",") if t.strip()]
    if not targets or any(t not in LORA_TARGETS for t in targets):
      raise ValueError(f"config.model.lora.targets must be a comma list of "
                       f"{', '.join(LORA_TARGETS)}, got {lora.targets!r}.")
    if c.prompt.mode:
      raise ValueError("config.model.lora.rank > 0 and prompt.mode train "
                       "different parameters; set one of them.")

  if c.data.length_buckets and m.get("prefix_lm"):
    raise ValueError("config.data.length_buckets > 0 with model.prefix_lm="
                     "True: the prefix LM's two-way mask covers exactly "
                     "data.source_len slots, and bucketed batches cut the "
                     "source; set data.length_buckets=0.")
  if m.get("prefix_lm") and m.get("hf_path"):
    raise ValueError("config.model.prefix_lm=True with model.hf_path: a "
                     "pretrained causal LM was not trained to see its prompt "
                     "both ways; drop one of them.")

  # Optimizer.
  o = c.optim
  if o.learning_rate <= 0:
    raise ValueError(f"config.optim.learning_rate must be > 0, got "
                     f"{o.learning_rate}.")
  _at_least(c, ("optim.warmup_steps", "optim.weight_decay"), 0)
  if o.grad_clip <= 0:
    raise ValueError(f"config.optim.grad_clip must be > 0, got {o.grad_clip}.")
  _in_range("optim.b2", o.b2, 0.0, 1.0, low_open=True, high_open=True)
  _one_of("optim.schedule", o.schedule, ("cosine", "constant"))
  _in_range("optim.end_fraction", o.end_fraction, 0.0, 1.0)
  _in_range("optim.label_smoothing", o.label_smoothing, 0.0, 1.0,
            high_open=True)

  # Objective.
  obj = c.objective
  _in_range("objective.alpha", obj.alpha, 0.0, 1.0)
  _one_of("objective.alpha_schedule", obj.alpha_schedule, ALPHA_SCHEDULES)
  _one_of("objective.soft_ed_implementation", obj.soft_ed_implementation,
          IMPLEMENTATIONS)
  _at_least(c, ("objective.alpha_warmup_steps", "objective.soft_ed_weight",
                "objective.cosine_weight", "objective.alpha_rate"), 0)
  if obj.gamma <= 0:
    raise ValueError(f"config.objective.gamma (the soft edit distance "
                     f"temperature) must be > 0, got {obj.gamma}.")
  if obj.alpha_schedule == "adaptive":
    if not 0.0 <= obj.alpha_min <= obj.alpha_max <= 1.0:
      raise ValueError(
          "config.objective.alpha_min <= alpha_max must lie in [0, 1], got "
          f"alpha_min={obj.alpha_min}, alpha_max={obj.alpha_max}.")

  # RL.
  rl = c.rl
  _one_of("rl.mode", rl.mode, RL_MODES)
  _one_of("rl.baseline", rl.baseline, BASELINES)
  _at_least(c, ("rl.num_samples",), 1)
  _at_least(c, ("rl.top_k", "rl.kl_weight"), 0)
  _in_range("rl.top_p", rl.top_p, 0.0, 1.0, low_open=True)
  if rl.mode and rl.temperature <= 0 and not (
      rl.mode == "mwer" and rl.candidates == "beam"):
    raise ValueError(f"config.rl.temperature must be > 0 for rl.mode="
                     f"{rl.mode!r} (0 is greedy: every sample would be the "
                     f"same), got {rl.temperature}.")
  _one_of("rl.credit", rl.credit, CREDITS)
  _one_of("rl.credit_baseline", rl.get("credit_baseline", "position"),
          CREDIT_BASELINES)
  if not 0.0 <= float(rl.get("credit_lambda", 0.5)) <= 1.0:
    raise ValueError("config.rl.credit_lambda must be in [0, 1] (0: "
                     "immediate credit, 1: reward-to-go), got "
                     f"{rl.credit_lambda}.")
  _one_of("rl.candidates", rl.candidates, CANDIDATES)
  _one_of("rl.loss_aggregation", rl.loss_aggregation, AGGREGATIONS)
  _one_of("rl.kl_estimator", rl.kl_estimator, KL_ESTIMATORS)
  _at_least(c, ("rl.inner_steps",), 1)
  _at_least(c, ("rl.epsilon_high",), 0)
  if not 0 < rl.epsilon < 1:
    raise ValueError(f"config.rl.epsilon (the clip range) must be in (0, 1), "
                     f"got {rl.epsilon}.")
  if rl.mode:
    _check_rewards(rl.rewards)
  if rl.mode == "mwer" and rl.num_samples < 2:
    raise ValueError("config.rl.num_samples must be >= 2 for rl.mode='mwer' "
                     "(the risk of a one-candidate list has no gradient), got "
                     f"{rl.num_samples}.")
  if rl.mode == "grpo":
    if rl.num_samples < 2:
      raise ValueError("config.rl.num_samples must be >= 2 for rl.mode='grpo' "
                       "(advantages are relative to the group), got "
                       f"{rl.num_samples}.")
    if obj.alpha == 0 and obj.alpha_schedule == "constant":
      raise ValueError("config.objective.alpha=0 gives the GRPO term no "
                       "weight (loss = (1 - alpha) CE + alpha GRPO): set "
                       "--config.objective.alpha=1.")
    if rl.baseline != "group":
      raise ValueError(f"config.rl.baseline={rl.baseline!r} is not used by "
                       "rl.mode='grpo' (its advantages are relative to the "
                       "group, rl.group_std): leave rl.baseline='group'.")
    if rl.kl_weight and rl.kl_estimator == "k3" and (
        rl.top_k or rl.top_p < 1.0):
      raise ValueError(
          "config.rl.kl_estimator='k3' estimates KL(pi || ref) without bias "
          "only on samples from pi's full distribution; with rl.top_k="
          f"{rl.top_k} / rl.top_p={rl.top_p} it estimates something else: "
          "set --config.rl.kl_estimator=exact, or rl.top_k=0 and "
          "rl.top_p=1.")
  else:
    if rl.inner_steps != 1:
      raise ValueError(f"config.rl.inner_steps={rl.inner_steps} needs "
                       "rl.mode='grpo' (other modes update once per sample).")
    grpo_only = {"rl.epsilon_high": (rl.epsilon_high, 0.0),
                 "rl.loss_aggregation": (rl.loss_aggregation,
                                         "sequence_mean"),
                 "rl.group_std": (rl.group_std, True),
                 "rl.credit": (rl.credit, "token"),
                 "rl.credit_lambda": (rl.get("credit_lambda", 0.5), 0.5),
                 "rl.credit_baseline": (rl.get("credit_baseline",
                                               "position"), "position"),
                 "rl.kl_estimator": (rl.kl_estimator, "k3")}
    changed = [f"{k}={v!r}" for k, (v, default) in grpo_only.items()
               if v != default]
    if rl.mode and changed:
      raise ValueError(
          f"config.{changed[0].split('=')[0]}: {', '.join(changed)} only "
          f"change rl.mode='grpo'; rl.mode={rl.mode!r} would ignore them "
          "(seq / instant pick the credit by mode; their KL is exact): "
          "leave them at their defaults or set rl.mode=grpo.")
  if rl.mode and rl.kl_weight and not (c.init_from or m.get("hf_path")):
    raise ValueError("config.rl.kl_weight > 0 needs --config.init_from=WORKDIR "
                     "or --config.model.hf_path=DIR (the frozen reference "
                     "model), or set rl.kl_weight=0.")

  # Prompt optimisation.
  p = c.prompt
  _one_of("prompt.mode", p.mode, PROMPT_MODES)
  if p.mode:
    if not c.init_from:
      raise ValueError(f"config.prompt.mode={p.mode!r} tunes a prompt for a "
                       "frozen model: set --config.init_from=WORKDIR.")
    if c.task != "g2p":
      raise ValueError(f"config.prompt.mode={p.mode!r} needs task='g2p' (the "
                       "prompt slots after BOS), got task={c.task!r}.")
    _at_least(c, ("prompt.length",), 1)
    if d.prompt_len != p.length:
      raise ValueError(f"config.data.prompt_len={d.prompt_len} must equal "
                       f"prompt.length={p.length} (the slots the prompt "
                       "fills).")
  if p.mode == "soft":
    _one_of("prompt.init", p.init, PROMPT_INITS)
    if p.init == "tag" and not d.tags:
      raise ValueError("config.prompt.init='tag' needs data.tags=True (the "
                       "task tag it starts from).")
  if p.mode == "search":
    _one_of("prompt.strategy", p.strategy, SEARCH_STRATEGIES)
    _at_least(c, ("prompt.population", "prompt.rounds", "prompt.elite",
                  "prompt.score_words"), 1)
    _in_range("prompt.mutation_rate", p.mutation_rate, 0.0, 1.0)

  # Mesh and batch: against the devices when their number is known.
  _check_mesh_sizes([c.mesh[a] for a in MESH_AXES])
  if num_devices is not None:
    dims = mesh_shape(c.mesh, num_devices)
    shards = dims[0] * dims[1]
    if c.batch_size % shards:
      raise ValueError(
          f"config.batch_size={c.batch_size} does not divide over the "
          f"batch axes data x fsdp = {shards}; use a multiple of {shards}.")
  if c.batch_size % num_processes:
    raise ValueError(f"config.batch_size={c.batch_size} must divide by the "
                     f"{num_processes} processes.")


# ------------------------------------------------------------ prompt runs


def with_frozen_model(config: ml_collections.ConfigDict
                      ) -> ml_collections.ConfigDict:
  """A prompt config (`prompt.mode` set) completed from the frozen run in
  `config.init_from`: its task, model, vocabulary padding and data come
  from that run's config.json, and only what the prompt needs is added:
  the direction to tune (`data.directions`, the prompt config's), the P
  slots (`data.prompt_len = prompt.length`) and the source room for them.
  Anything else is left as it is; a config without a prompt mode, or whose
  `init_from` has no config.json, is returned unchanged.
  """
  path = os.path.join(config.init_from or "", "config.json")
  if not config.prompt.mode or not os.path.exists(path):
    return config
  frozen = with_defaults(from_json(path), default_config())
  out = ml_collections.ConfigDict(config.to_dict())
  slots = max(int(frozen.data.prompt_len), 1 if frozen.data.tags else 0)
  length = int(config.prompt.length)
  with out.unlocked():
    out.task = frozen.task
    out.vocab_multiple = frozen.vocab_multiple
    out.model = ml_collections.ConfigDict(frozen.model.to_dict())
    out.data = ml_collections.ConfigDict(frozen.data.to_dict())
    out.data.directions = config.data.directions
    out.data.prompt_len = length
    out.data.source_len = int(frozen.data.source_len) + max(0, length - slots)
  return out
