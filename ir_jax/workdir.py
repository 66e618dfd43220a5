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
import sys
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ir_jax import config as config_lib
from ir_jax import state as state_lib

PROMPT_DIR = "prompt"


# ------------------------------------------------------------- metrics


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  """The records of `<workdir>/metrics.jsonl` in order ([] if none yet):
  train means (with `step`) and eval records (with `split`)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
  """The newest step on disk (readable or not; `restore_params` says)."""
  with checkpoint_manager(workdir) as manager:
    return manager.latest_step()


def save_checkpoint(manager, step: int, state, iterator) -> None:
  """Saves `state` and the iterator's position; a save that fails (disk
  full, no permission) stops the run with what to do, and the previous
  checkpoint stays as it was."""
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(iterator.get_state())), force=True)
    manager.wait_until_finished()
    write_manifest(step_path(manager, step))
  except Exception as e:  # OSError, or orbax/tensorstore wrapping one.
    manager.reload()
    previous = [s for s in manager.all_steps() if s < step]
    kept = (f"step {max(previous)} is intact" if previous else
            "no earlier checkpoint exists")
    raise RuntimeError(
        f"Could not save the checkpoint of step {step} in "
        f"{manager.directory} ({_reason(e)}); {kept}. Free disk space or "
        "fix the folder's permissions, then rerun the same command to "
        "resume.") from e


def _reason(e: BaseException) -> str:
  """The first line of an error, with its type."""
  lines = str(e).strip().splitlines() or [""]
  return f"{type(e).__name__}: {lines[0][:300]}"


# ------------------------------------------------- checkpoint manifests
#
# After orbax has committed a step, each process writes the checksums of
# the files it wrote (its `ocdbt.process_<i>` folders; process 0 also
# every file outside them) to `ir_jax_manifest.process_<i>.json` in the
# step, atomically (temp file + rename), through etils.epath as orbax
# does, so gs:// workdirs work the same way. A restore verifies the
# manifests before any array is read.

MANIFEST = "ir_jax_manifest"
_CHUNK = 1 << 22


def step_path(manager, step: int):
  """The epath.Path of a step's folder (local or gs://)."""
  from etils import epath
  return epath.Path(str(manager.directory)) / str(step)


def _step_files(step_dir) -> Dict[str, Any]:
  """{relative posix path: epath.Path} of every file of a step, manifests
  and their temp files excluded."""
  out = {}
  stack = [step_dir]
  while stack:
    folder = stack.pop()
    for child in folder.iterdir():
      if child.is_dir():
        stack.append(child)
        continue
      rel = child.relative_to(step_dir).as_posix()
      if not child.name.lstrip(".").startswith(MANIFEST):
        out[rel] = child
  return out


def _owner(rel: str) -> int:
  """The process that wrote a file: its `ocdbt.process_<i>` folder's, else
  process 0 (metadata, commit markers, the data iterator)."""
  for part in rel.split("/"):
    if part.startswith("ocdbt.process_"):
      return int(part[len("ocdbt.process_"):])
  return 0


def _digest(path) -> Dict[str, Any]:
  digest, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      digest.update(block)
      size += len(block)
  return {"size": size, "sha256": digest.hexdigest()}


def write_manifest(step_dir, process: Optional[int] = None) -> None:
  """Writes this process's manifest of a committed step (see above)."""
  process = jax.process_index() if process is None else process
  files = {rel: _digest(path) for rel, path in sorted(
      _step_files(step_dir).items()) if _owner(rel) == process}
  name = f"{MANIFEST}.process_{process}.json"
  temp = step_dir / f".{name}.tmp"
  temp.write_text(json.dumps({"version": 1, "algorithm": "sha256",
                              "process": process, "files": files},
                             indent=0, sort_keys=True))
  temp.rename(step_dir / name)


def verify_manifest(step_dir, process: Optional[int] = None
                    ) -> Tuple[str, str]:
  """("verified" | "absent" | "mismatch", what): checks the files this
  process wrote against its manifest; process 0 also refuses files no
  manifest lists. "absent": the step has no manifest at all (written
  before checksums, or a crash between orbax's commit and the manifest).
  A mismatch names the file: changed bytes, another size, missing, extra,
  or an unreadable manifest."""
  process = jax.process_index() if process is None else process
  manifests = sorted(p for p in step_dir.iterdir()
                     if p.name.startswith(MANIFEST + ".process_"))
  if not manifests:
    return "absent", "no checksum manifest"
  listed: Dict[str, Dict[str, Any]] = {}
  for path in manifests:
    try:
      listed.update(json.loads(path.read_text())["files"])
    except (ValueError, KeyError) as e:
      return "mismatch", f"{path.name} is not a readable manifest ({e})"
  present = _step_files(step_dir)
  for rel, want in sorted(listed.items()):
    if _owner(rel) != process:
      continue
    if rel not in present:
      return "mismatch", f"{rel} is missing"
    got = _digest(present[rel])
    if got != want:
      what = ("size" if got["size"] != want["size"] else "checksum")
      return "mismatch", f"{rel} has another {what} than when it was saved"
  if process == 0:
    extra = sorted(set(present) - set(listed))
    if extra:
      return "mismatch", f"{extra[0]} is not in the manifest (extra file)"
  return "verified", ""


def _agreed(status: str) -> str:
  """Every process's verdict on a step, so that all of them restore (or
  skip) the same one: "mismatch" if any found one."""
  if jax.process_count() == 1:
    return status
  from jax.experimental import multihost_utils
  codes = {"verified": 0, "absent": 1, "mismatch": 2}
  got = multihost_utils.process_allgather(np.asarray(codes[status]))
  return {v: k for k, v in codes.items()}[int(np.max(got))]


def _unfinished(step_dir: str) -> str:
  """Why a local step folder is not a finished checkpoint ("" if it is):
  orbax writes commit_success.txt into it and each item last."""
  if "://" in step_dir or not os.path.isdir(step_dir):
    return ""
  for folder in [step_dir] + [os.path.join(step_dir, d)
                              for d in ("state", "data")]:
    if os.path.isdir(folder) and not os.path.exists(
        os.path.join(folder, "commit_success.txt")):
      return f"no commit marker in {os.path.relpath(folder, step_dir)}"
  return ""


def _readable_steps(manager, restore, move_aside: bool):
  """(value, step) of `restore(step)` at the newest step that reads.

  The order matters: 1. a step without orbax's commit markers, or whose
  files do not match their checksum manifest (changed, truncated, missing
  or extra files), is unreadable before any array is read; 2. a verified
  step is restored, and anything raised then (EIO, ENOSPC, EACCES,
  MemoryError, a device error) stops the run with the reason and moves
  nothing: the checkpoint is good, the machine is not; 3. a committed step
  with no manifest (written before checksums, or a crash between the
  commit and the manifest) is trusted as orbax reads it, with a one-line
  note, and an error restoring it makes it unreadable. An unreadable step
  is reported in one line naming the file and, with `move_aside`, renamed
  to STEP.unreadable (never deleted), so training continues from the step
  before it. Returns (value, step, "verified" | "absent"), or (None, None,
  None) when no step exists; raises when none reads.
  """
  manager.reload()
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable: List[int] = []
  lead = jax.process_index() == 0
  for step in steps:
    step_dir = os.path.join(str(manager.directory), str(step))
    try:
      problem = _unfinished(step_dir)
      if problem:
        raise ValueError(problem)
      status, problem = verify_manifest(step_path(manager, step))
      status = _agreed(status)
      if status == "mismatch":
        raise ValueError(problem or "a checksum mismatch on another process")
      if status == "absent" and lead:
        print(f"Checkpoint step {step} in {manager.directory} has no checksum "
              "manifest (saved before checksums, or a crash right after the "
              "save): trusting it as orbax reads it.", file=sys.stderr)
    except Exception as e:  # A bad step, found before any array is read.
      _unreadable(manager, step, step_dir, e, move_aside)
      unreadable.append(step)
      continue
    if status == "verified":
      try:
        return restore(step), step, status
      except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
          raise
        raise RuntimeError(
            f"Checkpoint step {step} in {manager.directory} matches its "
            f"checksums, but restoring it failed ({_reason(e)}). Nothing was "
            "moved: fix the cause (disk, memory, device) and rerun the same "
            "command.") from e
    try:
      return restore(step), step, status
    except Exception as e:  # Whatever orbax or tensorstore raise.
      _unreadable(manager, step, step_dir, e, move_aside)
      unreadable.append(step)
  if unreadable:
    raise RuntimeError(
        f"No readable checkpoint in {manager.directory} (unreadable steps: "
        f"{unreadable}{', moved aside as STEP.unreadable' if move_aside else ''}"
        "). Start afresh with a new --workdir, or move a good checkpoint "
        "back in place.")
  return None, None, None


def _unreadable(manager, step: int, step_dir: str, e: BaseException,
                move_aside: bool) -> None:
  """Reports an unreadable step in one line and, with `move_aside`,
  renames it to STEP.unreadable (process 0)."""
  where = ""
  if move_aside and jax.process_index() == 0:
    where = f"; moved aside to {_move_aside(step_dir)}"
  if move_aside:
    manager.reload()  # Forget the moved step.
  if jax.process_index() == 0:
    print(f"Checkpoint step {step} in {manager.directory} is unreadable "
          f"({_reason(e)}){where}.", file=sys.stderr)


def _move_aside(step_dir: str) -> str:
  target, k = step_dir + ".unreadable", 1
  while os.path.exists(target):
    target, k = f"{step_dir}.unreadable.{k}", k + 1
  os.rename(step_dir, target)
  return target


def restore_checkpoint(manager, state, iterator):
  """(state, step) from the newest readable checkpoint, onto `state`'s
  shardings (whatever mesh wrote it), with the data iterator set to where
  it was; (state, None) when there is none. Unreadable newer checkpoints
  are moved aside (STEP.unreadable)."""
  def restore(step):
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=ocp.args.JsonRestore()))
    iterator.set_state(restored["data"])
    return restored["state"]

  restored, step, _ = _readable_steps(manager, restore, move_aside=True)
  return (state, None) if step is None else (restored, step)


def restore_params(workdir: str, target_params) -> Any:
  """Params of the newest readable checkpoint of a run (for init_from,
  eval, generate); unreadable newer ones are reported, left in place."""
  return readable_params(workdir, target_params)[0]


def readable_params(workdir: str, target_params):
  """(params, step) of the newest readable checkpoint; see restore_params."""
  with checkpoint_manager(workdir) as manager:

    def restore(step):
      meta = manager.item_metadata(step)["state"]
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, meta)
      return manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]["params"]

    params, step, status = _readable_steps(manager, restore,
                                           move_aside=False)
    newest = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
  if jax.process_index() == 0:
    how = ("checksums verified" if status == "verified" else
           "no checksum manifest")
    older = "" if step == newest else f"; the newest, {newest}, is unreadable"
    print(f"Using checkpoint step {step} of {workdir} ({how}{older}).",
          file=sys.stderr)
  want = jax.tree.map(jnp.shape, target_params)
  got = jax.tree.map(jnp.shape, params)
  if want != got:
    raise ValueError(f"Params in {workdir} do not fit this model "
                     f"(saved {got}, expected {want}).")
  return params, step


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
  return load_run_with_step(workdir)[:4]


def load_run_with_step(workdir: str):
  """(config, task, model, params, step): `load_run` and the step of the
  checkpoint it read (the newest readable one)."""
  config = load_config(workdir)
  task = state_lib.build_task(config)
  model = state_lib.make_model(config, task)
  tx = state_lib.make_optimizer(config)
  abstract = state_lib.abstract_params(config, model, tx, task)
  params, step = readable_params(workdir,
                                 state_lib.checkpointed(config, abstract))
  if state_lib.adapters_only(config):  # The base from the checkpoint dir.
    from ir_jax import pretrained
    params = state_lib.from_checkpointed(
        config, params, pretrained.load_params(config.model.hf_path, model))
  return config, task, model, params, step


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
