"""One door to a pretrained checkpoint: a Hugging Face directory or a
`.gguf` file, whichever `model.hf_path` names.

  model = pretrained.build(path, dtype="float32", scan_layers=True)
  params = pretrained.load_params(path, model, mesh=mesh, rules=rules)
  tok = pretrained.tokenizer(path)

It sits above `models/` and `data/`: `models.gguf` builds its tokenizer
with `data.hf_tokenizer`, and the text task (`data.text`) reads a GGUF
file's tokenizer through here, so neither floor imports the other's
checkpoint readers in a cycle.
"""

from typing import Any, Dict

from ir_jax.data import hf_tokenizer
from ir_jax.models import gguf, hf


def is_gguf(path: str) -> bool:
  """True when `path` names a `.gguf` file, not a directory."""
  return gguf.is_gguf(path)


def _module(path: str):
  return gguf if is_gguf(path) else hf


def build(path: str, *, dtype: str = "float32", scan_layers: bool = False,
          remat: bool = False):
  """The checkpoint's Transformer, without weights."""
  return _module(path).build(path, dtype=dtype, scan_layers=scan_layers,
                             remat=remat)


def load(path: str, **kwargs):
  """(model, params) of the checkpoint (`hf.load` / `gguf.load` args)."""
  return _module(path).load(path, **kwargs)


def load_params(path: str, model, *, mesh=None, rules=None,
                dtype=None) -> Dict[str, Any]:
  """The checkpoint's weights as `model`'s params, each placed straight
  into its sharding, in `dtype` (None: the model's compute dtype)."""
  return _module(path).load_params(path, model, mesh=mesh, rules=rules,
                                   dtype=dtype)


def hf_config(path: str) -> Dict[str, Any]:
  """config.json (a directory's, or a GGUF header's equivalent)."""
  return gguf.hf_config(path) if is_gguf(path) else hf.read_config(path)


def module_config(path: str) -> Dict[str, Any]:
  """`Transformer` fields (sizes and special ids) of the checkpoint."""
  return hf.module_config(hf_config(path))


def tokenizer(path: str) -> hf_tokenizer.Tokenizer:
  """The checkpoint's tokenizer (tokenizer.json, or the GGUF header's)."""
  return gguf.tokenizer(path) if is_gguf(path) else hf_tokenizer.load(path)


__all__ = ["build", "hf_config", "is_gguf", "load", "load_params",
           "module_config", "tokenizer"]
