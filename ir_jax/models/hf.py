"""Hugging Face checkpoints in and out: Llama, Mistral, Qwen2, Qwen3, GPT-2.

  model, params = hf.load("path/to/checkpoint")          # a local directory
  logits = hf.logits(model, params, input_ids, attention_mask)
  hf.save("out/", model, params)    # AutoModelForCausalLM.from_pretrained

The model is the project's own `ir_jax.models.Transformer` (logical axes,
KV cache, `nn.scan`, remat), configured from `config.json`, so decoding,
in-loop rewards, the objectives, meshes and `ir-jax compile` work on it
unchanged. Only safetensors are read (`model.safetensors` or a sharded
`model.safetensors.index.json`): unpickling `pytorch_model.bin` runs
arbitrary code, so such a directory is refused with the command that
converts it. Each tensor is read alone and placed straight into its
sharding (`mesh=`), so neither a device nor host RAM ever holds more than
the model's share plus one tensor.

Layouts. torch `nn.Linear` weights are [out, in] and are transposed into
Flax kernels [in, out]; GPT-2's `Conv1D` is already [in, out], and its
fused `c_attn` [E, 3E] splits into query, key and value. Llama's q/k
weights are in the half-split RoPE layout that `transformer.rope` uses, so
no permutation is needed. Positions are HF's: right padding counts 0, 1,
... from the first token; left padding (generation) from the first valid
one, as `generate` computes them from the attention mask.

Supported config fields (anything else that changes the function is
refused by name): GQA (`num_key_value_heads`), explicit `head_dim`,
`rms_norm_eps`, `rope_theta` / `rope_scaling` (transformers 4.x) or
`rope_parameters` (5.x) with rope type `default` or `llama3`, tied or
untied embeddings, Qwen2's q/k/v biases, Qwen3's q/k RMSNorm, GPT-2's
LayerNorm, learned positions and tanh-GELU.
"""

import functools
import json
import os
from typing import Any, Dict, Iterable, Iterator, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ir_jax.models.transformer import Transformer

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
_DTYPES = {"float32": (jnp.float32, np.float32),
           "bfloat16": (jnp.bfloat16, ml_dtypes.bfloat16)}
_CONVERT = ('python -c "from transformers import AutoModelForCausalLM as M; '
            "M.from_pretrained('{path}').save_pretrained('{path}', "
            'safe_serialization=True)"')


class CheckpointError(ValueError):
  """A checkpoint this loader cannot read faithfully (names the field)."""


# ------------------------------------------------------------------ config


def read_config(path: str) -> Dict[str, Any]:
  """config.json of a checkpoint directory, as a dict."""
  file = os.path.join(path, "config.json")
  if not os.path.isfile(file):
    raise CheckpointError(f"{path}: no config.json (not a Hugging Face "
                          "checkpoint directory).")
  with open(file) as f:
    return json.load(f)


def _rope(hf: Dict[str, Any]) -> Tuple[float, tuple]:
  """(theta, scaling pairs) from either spelling of the rope settings."""
  params = hf.get("rope_parameters")
  if params:                                          # transformers 5.x
    params = dict(params)
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10_000.0)))
    scaling = params
  else:                                               # transformers 4.x
    theta = float(hf.get("rope_theta", 10_000.0))
    scaling = dict(hf.get("rope_scaling") or {})
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return theta, ()
  if kind != "llama3":
    raise CheckpointError(
        f"rope_scaling.rope_type={kind!r} is not supported (only 'default' "
        "and 'llama3').")
  keys = ("factor", "low_freq_factor", "high_freq_factor",
          "original_max_position_embeddings")
  missing = [k for k in keys if k not in scaling]
  if missing:
    raise CheckpointError(f"rope_scaling (llama3) lacks {missing}.")
  return theta, (("rope_type", "llama3"),) + tuple(
      (k, float(scaling[k])) for k in keys)


def _refuse(hf, field, ok, why):
  if field in hf and hf[field] not in ok:
    raise CheckpointError(f"config.json: {field}={hf[field]!r} is not "
                          f"supported ({why}).")


def _special_ids(hf: Dict[str, Any]) -> Dict[str, int]:
  """pad_id / eos_id from config.json (the first of an eos list; no pad
  token pads with EOS); {} when it names no EOS. The tokenizer's files
  (ir_jax.data.hf_tokenizer) override them for a text task."""
  eos = hf.get("eos_token_id")
  eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
  if not isinstance(eos, int):
    return {}
  pad = hf.get("pad_token_id")
  return {"eos_id": eos, "pad_id": pad if isinstance(pad, int) else eos}


def module_config(hf: Dict[str, Any]) -> Dict[str, Any]:
  """`Transformer` fields for a Hugging Face config dict."""
  return {**_module_config(hf), **_special_ids(hf)}


def _module_config(hf: Dict[str, Any]) -> Dict[str, Any]:
  kind = hf.get("model_type")
  if kind not in MODEL_TYPES:
    raise CheckpointError(
        f"config.json: model_type={kind!r} is not supported; supported: "
        f"{', '.join(MODEL_TYPES)}.")
  if kind == "gpt2":
    _refuse(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"),
            "GPT-2's tanh GELU only")
    for field in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                  "add_cross_attention"):
      _refuse(hf, field, (False, None), "not implemented")
    _refuse(hf, "scale_attn_weights", (True,), "not implemented")
    e = int(hf["n_embd"])
    return dict(vocab_size=int(hf["vocab_size"]), embed_dim=e,
                num_layers=int(hf["n_layer"]), num_heads=int(hf["n_head"]),
                mlp_dim=int(hf.get("n_inner") or 4 * e), norm="layer",
                norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                max_positions=int(hf["n_positions"]), mlp="gelu_tanh",
                use_bias=True, tie_embeddings=True)
  _refuse(hf, "hidden_act", ("silu",), "SwiGLU with SiLU only")
  _refuse(hf, "mlp_bias", (False, None), "no MLP biases")
  _refuse(hf, "sliding_window" if kind == "mistral" else "use_sliding_window",
          (None, False), "sliding-window attention is not implemented")
  _refuse(hf, "attention_bias", (False, None) if kind != "qwen2" else
          (False, True, None), "attention biases only as Qwen2 has them")
  heads = int(hf["num_attention_heads"])
  head_dim = int(hf.get("head_dim") or hf["hidden_size"] // heads)
  theta, scaling = _rope(hf)
  return dict(
      vocab_size=int(hf["vocab_size"]), embed_dim=int(hf["hidden_size"]),
      num_layers=int(hf["num_hidden_layers"]), num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_size=head_dim, mlp_dim=int(hf["intermediate_size"]),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=theta,
      rope_scaling=scaling, qkv_bias=kind == "qwen2",
      qk_norm=kind == "qwen3",
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def model_type_of(model: Transformer) -> str:
  """The Hugging Face family a Transformer is saved as."""
  if model.max_positions:
    return "gpt2"
  if model.qk_norm:
    return "qwen3"
  return "qwen2" if model.qkv_bias else "llama"


def hf_config(model: Transformer, dtype: str = "float32") -> Dict[str, Any]:
  """config.json for `model` (what `save` writes)."""
  if getattr(model, "prefix_len", 0):
    raise ValueError(
        f"a prefix LM (prefix_len={model.prefix_len}, config.model.prefix_lm)"
        " has no Hugging Face causal-LM equivalent: transformers would run it "
        "causally and give other logits. Export a causal model.")
  ids = {"eos_token_id": model.eos_id, "pad_token_id": model.pad_id}
  return {**_hf_config(model, dtype), **ids}


def _hf_config(model: Transformer, dtype: str) -> Dict[str, Any]:
  kind = model_type_of(model)
  if kind == "gpt2":
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": model.vocab_size, "n_embd": model.embed_dim,
            "n_layer": model.num_layers, "n_head": model.num_heads,
            "n_inner": model.mlp_dim, "n_positions": model.max_positions,
            "layer_norm_epsilon": model.norm_eps,
            "activation_function": "gelu_new", "tie_word_embeddings": True,
            "torch_dtype": dtype}
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "qwen3": "Qwen3ForCausalLM"}[kind]
  scaling = dict(model.rope_scaling) or None
  out = {"architectures": [arch], "model_type": kind,
         "vocab_size": model.vocab_size, "hidden_size": model.embed_dim,
         "intermediate_size": model.mlp_dim,
         "num_hidden_layers": model.num_layers,
         "num_attention_heads": model.num_heads,
         "num_key_value_heads": model.kv_heads, "head_dim": model.head_dim,
         "hidden_act": "silu", "rms_norm_eps": model.norm_eps,
         "rope_theta": model.rope_theta, "rope_scaling": scaling,
         "max_position_embeddings": int(
             (scaling or {}).get("original_max_position_embeddings", 4096)
             * (scaling or {}).get("factor", 1)),
         "tie_word_embeddings": model.tie_embeddings,
         "attention_bias": kind == "qwen2", "torch_dtype": dtype}
  if kind == "llama":
    out["mlp_bias"] = False
  if kind in ("qwen2", "qwen3"):
    out["use_sliding_window"] = False
  return out


# ------------------------------------------------------------ name layout

# Each entry: (HF tensor name, our param path, how): "t" transposes a torch
# Linear [out, in] into a kernel [in, out]; "=" copies; "qkv:i" takes the
# i-th third of GPT-2's fused c_attn along its last axis.


def layout(model: Transformer) -> List[Tuple[str, Tuple[str, ...], str]]:
  """(HF name, param path, transform) for every tensor of `model`."""
  out = []
  if model_type_of(model) == "gpt2":
    out += [("transformer.wte.weight", ("embed", "embedding"), "="),
            ("transformer.wpe.weight", ("position_embed", "embedding"), "="),
            ("transformer.ln_f.weight", ("final_norm", "scale"), "="),
            ("transformer.ln_f.bias", ("final_norm", "bias"), "=")]
    for i in range(model.num_layers):
      h, me = f"transformer.h.{i}.", f"layer_{i}"
      for j, name in enumerate(("query", "key", "value")):
        out += [(h + "attn.c_attn.weight", (me, name, "kernel"), f"qkv:{j}"),
                (h + "attn.c_attn.bias", (me, name, "bias"), f"qkv:{j}")]
      for hf_name, ours in (("attn.c_proj", "out"), ("mlp.c_fc", "wi_up"),
                            ("mlp.c_proj", "wo")):
        out += [(h + hf_name + ".weight", (me, ours, "kernel"), "="),
                (h + hf_name + ".bias", (me, ours, "bias"), "=")]
      for hf_name, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
        out += [(h + hf_name + ".weight", (me, ours, "scale"), "="),
                (h + hf_name + ".bias", (me, ours, "bias"), "=")]
    return out
  out += [("model.embed_tokens.weight", ("embed", "embedding"), "="),
          ("model.norm.weight", ("final_norm", "scale"), "=")]
  if not model.tie_embeddings:
    out.append(("lm_head.weight", ("logits", "kernel"), "t"))
  for i in range(model.num_layers):
    h, me = f"model.layers.{i}.", f"layer_{i}"
    for hf_name, ours in (("self_attn.q_proj", "query"),
                          ("self_attn.k_proj", "key"),
                          ("self_attn.v_proj", "value"),
                          ("self_attn.o_proj", "out"),
                          ("mlp.gate_proj", "wi_gate"),
                          ("mlp.up_proj", "wi_up"),
                          ("mlp.down_proj", "wo")):
      out.append((h + hf_name + ".weight", (me, ours, "kernel"), "t"))
      if model.qkv_bias and ours in ("query", "key", "value"):
        out.append((h + hf_name + ".bias", (me, ours, "bias"), "="))
    out += [(h + "input_layernorm.weight", (me, "attn_norm", "scale"), "="),
            (h + "post_attention_layernorm.weight", (me, "mlp_norm", "scale"),
             "=")]
    if model.qk_norm:
      out += [(h + "self_attn.q_norm.weight", (me, "query_norm", "scale"),
               "="),
              (h + "self_attn.k_norm.weight", (me, "key_norm", "scale"), "=")]
  return out


def _to_ours(tensor: np.ndarray, how: str) -> np.ndarray:
  if how == "t":
    return tensor.T
  if how.startswith("qkv:"):
    return np.split(tensor, 3, axis=-1)[int(how[4:])]
  return tensor


def _layer_path(path, scan: bool):
  """`layer_i/...` -> ("layers", ...), i for scanned params; else (path, None)."""
  if scan and path[0].startswith("layer_"):
    return ("layers",) + path[1:], int(path[0][len("layer_"):])
  return path, None


# ---------------------------------------------------------------- reading


def _weight_files(path: str) -> Dict[str, str]:
  """HF tensor name -> the safetensors file holding it."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  if os.path.isfile(single):
    from safetensors import safe_open
    with safe_open(single, framework="numpy") as f:
      return {k: single for k in f.keys()}
  if any(n.startswith("pytorch_model") and n.endswith(".bin")
         for n in os.listdir(path)):
    raise CheckpointError(
        f"{path} holds only pickled PyTorch weights (pytorch_model*.bin); "
        "loading a pickle runs arbitrary code, so only safetensors are read. "
        "Convert it once where you trust the file:\n  "
        + _CONVERT.format(path=path))
  raise CheckpointError(f"{path}: no model.safetensors or "
                        "model.safetensors.index.json.")


def _tensors(files: Dict[str, str], names) -> Iterator[Tuple[str, np.ndarray]]:
  """(name, array) for each of `names`, one tensor in memory at a time."""
  from safetensors import safe_open
  by_file: Dict[str, List[str]] = {}
  for name in names:
    by_file.setdefault(files[name], []).append(name)
  for file, group in by_file.items():
    with safe_open(file, framework="numpy") as f:
      for name in group:
        yield name, f.get_tensor(name)


def abstract_params(model: Transformer, boxed: bool = False):
  """ShapeDtypeStructs of `model`'s params (logical boxes kept if `boxed`)."""
  def init():  # Traced, so the logical constraints hold under any mesh.
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return params["params"] if boxed else nn.meta.unbox(params["params"])
  return jax.eval_shape(init)


def load(path: str, *, dtype: str = "float32", mesh=None, rules=None,
         scan_layers: bool = False, remat: bool = False
         ) -> Tuple[Transformer, Dict[str, Any]]:
  """A Hugging Face checkpoint directory as (model, params).

  Args:
    path: a local directory with config.json and safetensors weights.
    dtype: "float32" or "bfloat16", for params and activations (logits are
      float32 either way).
    mesh, rules: place each param straight into its sharding from the
      logical rules (default `ir_jax.config.DEFAULT_RULES`); None puts
      them on the default device.
    scan_layers, remat: the model's layer scan and rematerialisation.

  Raises:
    CheckpointError naming the field or tensor: unsupported model_type,
    rope type or sliding window, pickled weights only, a missing or
    misshapen tensor.
  """
  model = build(path, dtype=dtype, scan_layers=scan_layers, remat=remat)
  return model, load_params(path, model, mesh=mesh, rules=rules)


def build(path: str, *, dtype: str = "float32", scan_layers: bool = False,
          remat: bool = False) -> Transformer:
  """The Transformer of a checkpoint's config.json, without weights."""
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
  return Transformer(**module_config(read_config(path)),
                     dtype=_DTYPES[dtype][0], scan_layers=scan_layers,
                     remat=remat)


def load_params(path: str, model: Transformer, *, mesh=None, rules=None,
                dtype=None) -> Dict[str, Any]:
  """The weights of checkpoint `path` as `model`'s params (built by
  `build`, possibly cloned with LoRA adapters, which get no weights here),
  each read and placed straight into its sharding on `mesh`, in `dtype`
  (None: the model's compute dtype; a training run asks for its params'
  dtype, so f32 weights are never rounded through bf16)."""
  files = _weight_files(path)
  names = [n for n, _, _ in layout(model)]
  missing = sorted(set(names) - set(files))
  if missing:
    raise CheckpointError(f"{path}: missing tensor(s) {missing[:5]}"
                          + (" ..." if len(missing) > 5 else ""))
  return place_params(path, model, _tensors(files, dict.fromkeys(names)),
                      mesh=mesh, rules=rules, dtype=dtype)


def place_params(source: str, model: Transformer,
                 tensors: Iterable[Tuple[str, np.ndarray]], *, mesh=None,
                 rules=None, dtype=None) -> Dict[str, Any]:
  """`model`'s params from (HF tensor name, torch-layout array) pairs.

  Each tensor is placed as it arrives, into its sharding on `mesh` (from
  the logical `rules`) or on the default device, so host memory holds one
  tensor at a time. A scanned model's layer stacks are allocated on the
  device first and each layer's slice written into them (donated), never
  assembled on the host. Shapes are checked against the model; `source`
  names the checkpoint in errors. Every name of `layout(model)` must come.
  """
  dtype = jnp.dtype(dtype or model.dtype)
  npdtype = {jnp.dtype(v[0]): v[1] for v in _DTYPES.values()}[dtype]
  boxed = abstract_params(model, boxed=True)
  shapes = abstract_params(model)
  shardings = None
  if mesh is not None:
    from ir_jax import config as config_lib, parallel
    shardings = parallel.logical_to_shardings(
        boxed, mesh, rules or config_lib.DEFAULT_RULES)
  by_name: Dict[str, List[Tuple[Tuple[str, ...], str]]] = {}
  for name, ours, how in layout(model):
    by_name.setdefault(name, []).append((ours, how))

  def leaf(tree, p):
    for k in p:
      tree = tree[k]
    return tree

  placed: Dict[Tuple[str, ...], Any] = {}
  seen = set()
  for name, tensor in tensors:
    if name not in by_name:
      continue
    seen.add(name)
    for ours, how in by_name[name]:
      p, layer = _layer_path(ours, model.scan_layers)
      array = np.ascontiguousarray(_to_ours(tensor, how), npdtype)
      want = leaf(shapes, p).shape
      got = array.shape if layer is None else (model.num_layers,) + array.shape
      if tuple(got) != tuple(want):
        raise CheckpointError(
            f"{source}: tensor {name} has shape {tensor.shape}; the config "
            f"implies {want if layer is None else want[1:]} for "
            f"{'/'.join(p)} (check the config against the weights).")
      sharding = leaf(shardings, p) if shardings is not None else None
      if layer is None:
        placed[p] = (jax.device_put(array, sharding) if sharding is not None
                     else jnp.asarray(array))
        continue
      if p not in placed:
        placed[p] = _zeros(tuple(want), dtype, sharding)()
      placed[p] = _set_layer(sharding)(placed[p], array, layer)
      del array
  missing = sorted(set(by_name) - seen)
  if missing:
    raise CheckpointError(f"{source}: missing tensor(s) {missing[:5]}"
                          + (" ..." if len(missing) > 5 else ""))
  params: Dict[str, Any] = {}
  for p, value in placed.items():
    node = params
    for k in p[:-1]:
      node = node.setdefault(k, {})
    node[p[-1]] = value
  return params


@functools.lru_cache(maxsize=None)
def _zeros(shape, dtype, sharding):
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _set_layer(sharding):
  """stack[layer] = x, the stack donated (updated in place)."""
  return jax.jit(
      lambda stack, x, layer: jax.lax.dynamic_update_index_in_dim(
          stack, x.astype(stack.dtype), layer, 0),
      out_shardings=sharding, donate_argnums=0)


# ---------------------------------------------------------------- writing


def save(path: str, model: Transformer, params, *, dtype: str = "float32",
         max_shard_bytes: int = 0) -> None:
  """Writes config.json + safetensors that `transformers` loads.

  Args:
    path: output directory (created).
    model, params: a Transformer of a supported family and its params
      (LoRA adapters are merged in: `lora.merge`).
    dtype: "float32" or "bfloat16" on disk.
    max_shard_bytes: > 0 splits the weights into files of about this size
      with a `model.safetensors.index.json`, as `save_pretrained` does.
  """
  from safetensors.numpy import save_file
  from ir_jax.models import lora
  model, params = lora.merge(model, params)
  npdtype = _DTYPES[dtype][1]
  os.makedirs(path, exist_ok=True)
  config = hf_config(model, dtype)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  gathered: Dict[str, List[Tuple[str, np.ndarray]]] = {}
  host = lambda a: np.asarray(jax.device_get(a))
  for name, ours, how in layout(model):
    p, layer = _layer_path(ours, model.scan_layers)
    value = params
    for k in p:
      value = value[k]
    value = host(value if layer is None else value[layer])
    gathered.setdefault(name, []).append((how, value))
  tensors = {}
  for name, parts in gathered.items():
    if parts[0][0].startswith("qkv:"):
      array = np.concatenate([v for _, v in sorted(parts)], axis=-1)
    else:
      how, array = parts[0]
      array = array.T if how == "t" else array
    tensors[name] = np.ascontiguousarray(array.astype(npdtype))
  shards: List[Dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(tensors):
    if max_shard_bytes and size and size + tensors[name].nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensors[name]
    size += tensors[name].nbytes
  meta = {"format": "pt"}
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, "model.safetensors"), metadata=meta)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(path, file), metadata=meta)
    weight_map.update({k: file for k in shard})
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(
        t.nbytes for t in tensors.values())}, "weight_map": weight_map}, f,
              indent=2)


# ---------------------------------------------------------------- running


def logits(model: Transformer, params, input_ids, attention_mask=None
           ) -> jax.Array:
  """float32[B, T, V]: the plain forward of right-padded `input_ids`
  int[B, T] (`attention_mask` 1 at real tokens; None = all real)."""
  ids = jnp.asarray(input_ids, jnp.int32)
  mask = (jnp.ones(ids.shape, bool) if attention_mask is None
          else jnp.asarray(attention_mask).astype(bool))
  return _forward(model)(params, ids, mask)


@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda params, ids, mask: model.apply(
      {"params": params}, ids, mask)[0].astype(jnp.float32))


def greedy(model: Transformer, params, input_ids, attention_mask=None, *,
           max_new_tokens: int) -> jax.Array:
  """int32[B, max_new_tokens]: greedy continuation of left-padded prompts
  (no stopping at EOS, so it compares token for token with HF's
  `generate(do_sample=False)` without an eos_token_id)."""
  ids = jnp.asarray(input_ids, jnp.int32)
  mask = (jnp.ones(ids.shape, bool) if attention_mask is None
          else jnp.asarray(attention_mask).astype(bool))
  return _greedy(model, max_new_tokens)(params, ids, mask)


@functools.lru_cache(maxsize=None)
def _greedy(model, steps):
  def run(params, ids, mask):
    batch = ids.shape[0]
    cache = model.init_cache(batch, ids.shape[1] + steps)
    out, cache = model.apply({"params": params}, ids, mask, cache,
                             num_logits=1)
    first = out[:, -1].argmax(-1).astype(jnp.int32)

    def step(carry, _):
      token, cache = carry
      out, cache = model.apply({"params": params}, token[:, None],
                               jnp.ones((batch, 1), bool), cache)
      nxt = out[:, -1].argmax(-1).astype(jnp.int32)
      return (nxt, cache), nxt

    _, rest = jax.lax.scan(step, (first, cache), None, length=steps - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)
  return jax.jit(run)


__all__ = ["CheckpointError", "MODEL_TYPES", "abstract_params", "build",
           "greedy", "hf_config", "layout", "load", "load_params", "logits",
           "model_type_of", "module_config", "place_params", "read_config",
           "save"]
