"""Everything a run keeps on disk, and reading it back.

A workdir holds `config.json`, `vocab.json`, `metrics.jsonl` (one JSON
record a line: train means with `step`, eval records with `split`),
`tensorboard/`, `checkpoints/STEP/` (orbax: items `state` and `data`, the
grain iterator) and, for prompt runs, `prompt/` (the tuned prompt and its
`prompt.json`). Compatibility checks refuse a workdir (or a frozen model)
of another model or vocabulary before anything is overwritten.
"""

import hashlib
import json
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ir_jax import config as config_lib
from ir_jax import state as state_lib
from ir_jax.data import tasks

PROMPT_DIR = "prompt"


# ------------------------------------------------------------- metrics


class MetricWriter:
  """metrics.jsonl + TensorBoard (tensorboardX); process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record: Dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    prefix = record.get("split", "train")
    for k, v in record.items():
      if isinstance(v, (int, float)) and k != "step":
        self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])
    self.tb.flush()

  def text(self, tag: str, text: str, step: int) -> None:
    if self.enabled:
      self.tb.add_text(tag, text, step)

  def close(self):
    if self.tb is not None:
      self.tb.close()


def write_run_files(workdir: str, config, task) -> None:
  """config.json and vocab.json: what `load_run` and the compatibility
  checks read back."""
  os.makedirs(workdir, exist_ok=True)
  config_lib.save(config, os.path.join(workdir, "config.json"))
  with open(os.path.join(workdir, "vocab.json"), "w") as f:
    json.dump(list(task.vocab.symbols), f)


# --------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str, config=None) -> ocp.CheckpointManager:
  """The workdir's orbax manager (items `state` and `data`); read-only use
  (eval, generate, init_from) passes no config."""
  options = None
  if config is not None:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler()})


def latest_step(workdir: str) -> Optional[int]:
  return checkpoint_manager(workdir).latest_step()


def save_checkpoint(manager, step: int, state, iterator) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(iterator.get_state())), force=True)


def restore_checkpoint(manager, step: int, state, iterator):
  """The state saved at `step`, onto `state`'s shardings (whatever mesh
  wrote it); the data iterator is set to where it was."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), data=ocp.args.JsonRestore()))
  iterator.set_state(restored["data"])
  return restored["state"]


def restore_params(workdir: str, target_params) -> Any:
  """Latest params of another run (for init_from / eval / generate)."""
  manager = checkpoint_manager(workdir)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
  meta = manager.item_metadata(step)["state"]
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, meta)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))["state"]
  params = restored["params"]
  want = jax.tree.map(jnp.shape, target_params)
  got = jax.tree.map(jnp.shape, params)
  if want != got:
    raise ValueError(f"Params in {workdir} do not fit this model "
                     f"(saved {got}, expected {want}).")
  return params


def load_config(workdir: str):
  """The config a workdir was trained with; fields added since it was
  written take their defaults."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{workdir} has no config.json: not a trained ir_jax workdir (train "
        f"one with: ir-jax train --config FILE --workdir {workdir}).")
  return config_lib.with_defaults(config_lib.from_json(path),
                                  config_lib.default_config())


def load_run(workdir: str):
  """(config, task, model, params) of a trained workdir."""
  config = load_config(workdir)
  task = tasks.build(config)
  model = state_lib.make_model(config, task)
  tx = state_lib.make_optimizer(config)
  params = restore_params(workdir,
                          state_lib.abstract_params(config, model, tx, task))
  return config, task, model, params


# -------------------------------------------------------- compatibility


def run_mismatch(workdir: str, config, task) -> str:
  """"" if the run saved in `workdir` has this config's task, model and
  vocabulary (or nothing is saved there), else what differs."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return ""
  old = config_lib.from_json(path)
  old_sig = {"task": old.task, "model": old.model.to_dict()}
  new_sig = {"task": config.task, "model": config.model.to_dict()}
  if json.dumps(old_sig, sort_keys=True) != json.dumps(new_sig, sort_keys=True):
    return (f"another model:\n  saved   {old_sig}\n  current {new_sig}")
  vocab_path = os.path.join(workdir, "vocab.json")
  if os.path.exists(vocab_path):
    with open(vocab_path) as f:
      saved = json.load(f)
    if saved != list(task.vocab.symbols):
      return (f"another vocabulary ({len(saved)} symbols, now "
              f"{task.vocab.size}): the data config changed (e.g. "
              "data.stress or data.tags)")
  return ""


def check_compatible(workdir: str, config, task) -> None:
  """Refuses a workdir whose checkpoints belong to another model or vocab."""
  mismatch = run_mismatch(workdir, config, task)
  if mismatch:
    raise ValueError(f"{workdir} holds a run of {mismatch}\nUse a new "
                     "--workdir (the old checkpoints are left untouched).")


def check_frozen(init_from: str, config, task) -> None:
  """Refuses a frozen workdir whose model or vocabulary differ from the
  config's (a prompt only means something for the model it was tuned on)."""
  if not os.path.exists(os.path.join(init_from, "config.json")):
    raise FileNotFoundError(f"init_from={init_from!r} has no config.json: "
                            "not a trained ir_jax workdir.")
  mismatch = run_mismatch(init_from, config, task)
  if mismatch:
    raise ValueError(f"The frozen model in {init_from} is not this config's "
                     f"model: {mismatch}\nSet config.model and config.data "
                     "to the frozen run's.")


# -------------------------------------------------------------- prompts


def fingerprint(params) -> str:
  """sha256 of the param tree's structure, shapes and embedding table:
  equal for the same checkpoint, different for another one."""
  h = hashlib.sha256()
  flat = jax.tree_util.tree_flatten_with_path(
      {k: v for k, v in params.items() if k != "prompt"})[0]
  for path, leaf in flat:
    h.update(f"{jax.tree_util.keystr(path)}:{leaf.shape}:{leaf.dtype}".encode())
  h.update(np.asarray(jax.device_get(params["embed"]["embedding"]),
                      np.float32).tobytes())
  return h.hexdigest()[:16]


def save_prompt(directory: str, value, meta: Dict[str, Any]) -> str:
  """WORKDIR/prompt: `value` (soft f32[P, E] or token ids int32[P]) via
  orbax, and prompt.json with its kind, slots, symbols and fingerprint."""
  path = os.path.abspath(os.path.join(directory, PROMPT_DIR))
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(path, "value"), {"value": np.asarray(value)},
              force=True)
  with open(os.path.join(path, "prompt.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return path


def load_prompt(path: str, params=None) -> Dict[str, Any]:
  """{"value": array, **meta} from a prompt directory (or the workdir that
  holds one). With `params`, refuses a prompt tuned for another model."""
  if os.path.isdir(os.path.join(path, PROMPT_DIR)):
    path = os.path.join(path, PROMPT_DIR)
  meta_path = os.path.join(path, "prompt.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"No prompt.json in {path}.")
  with open(meta_path) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckpt:
    value = ckpt.restore(os.path.abspath(os.path.join(path, "value")))["value"]
  if params is not None and fingerprint(params) != meta["fingerprint"]:
    raise ValueError(
        f"The prompt in {path} was tuned for another checkpoint (fingerprint "
        f"{meta['fingerprint']}, this model {fingerprint(params)}; tuned on "
        f"{meta.get('frozen_from')}).")
  return dict(meta, value=np.asarray(value))
