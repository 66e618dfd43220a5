"""Experiment configs: `FILE[:ARG]` Python files with `get_config(arg)`.

Overrides come as `--config.a.b=value` (big_vision / ml_collections style);
values are parsed with the type of the field they replace.
"""

import ast
import importlib.util
import json
import os
from typing import Iterable, List

import ml_collections


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
  return type(old)(ast.literal_eval(text))


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
