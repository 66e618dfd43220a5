"""Tiny GGUF files written with `gguf.GGUFWriter`, for tests.

Random weights in Hugging Face layout (O(1) logits), a byte-level BPE
vocabulary trained on a small corpus (ChatML specials first), written as
llama.cpp writes them: Llama's q/k rows interleaved by llama.cpp's
`permute`, every matrix in the requested tensor type (`types`: a type per
tensor kind, or K-quants as random valid blocks, which the writer cannot
quantize).
"""

import numpy as np

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]"
          "['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny "
          "model.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role']"
          " + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{%"
          " if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif"
          " %}")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Spell the word backward.",
    "def f(x):\n    return x ** 2 + 12345  # numbers 0 1 2 3 4 5 6 7 8 9",
    "Once upon a time, there was a little girl who loved to read books.",
    "naïve café résumé — 日本語のテキスト, emoji 🙂🚀 and tabs\tand\nnewlines",
    "garden nedrag answer: the answer is 42. Pronounce BATH: B AE TH",
]
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# Byte offsets of the float16 scale fields in each K-quant block (ggml's
# block_qN_K structs): random bytes there could be inf/nan.
_K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2),
             "Q5_K": (0, 2), "Q6_K": (208,)}


def bpe(vocab_size=320):
  """(tokens, merges) of a byte-level BPE trained on CORPUS, SPECIALS first."""
  import json
  from tokenizers import ByteLevelBPETokenizer
  tok = ByteLevelBPETokenizer()
  tok.train_from_iterator(CORPUS * 4, vocab_size=vocab_size, min_frequency=1,
                          special_tokens=list(SPECIALS), show_progress=False)
  model = json.loads(tok._tokenizer.to_str())["model"]
  tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda x: x[1])]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return tokens, merges


def permute(rows, heads):
  """llama.cpp's convert_hf_to_gguf.py `permute` of q/k rows."""
  return rows.reshape(heads, 2, rows.shape[0] // heads // 2,
                      *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def random_k_blocks(kind, rows, cols, rng):
  """uint8[rows, cols / 256 * type_size]: random K-quant blocks with finite
  small scales."""
  import gguf
  qtype = getattr(gguf.GGMLQuantizationType, kind)
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  n = rows * cols // block
  data = rng.integers(0, 256, (n, size), dtype=np.uint8)
  for offset in _K_SCALES[kind]:
    scale = rng.uniform(1e-4, 4e-4, n).astype(np.float16)
    data[:, offset:offset + 2] = scale.view(np.uint8).reshape(n, 2)
  return data.reshape(rows, cols // block * size)


def hf_weights(arch, *, embed, layers, heads, kv_heads, head_dim, mlp, vocab,
               tied, seed):
  """{HF name: float32 array in torch layout} with O(1) logits."""
  rng = np.random.default_rng(seed)
  w = lambda *shape, s=0.15: (s * rng.standard_normal(shape)).astype(
      np.float32)
  out = {"model.embed_tokens.weight": w(vocab, embed, s=0.4),
         "model.norm.weight": 1 + w(embed, s=0.2)}
  if not tied:
    out["lm_head.weight"] = w(vocab, embed, s=0.3)
  for i in range(layers):
    h = f"model.layers.{i}."
    out.update({
        h + "self_attn.q_proj.weight": w(heads * head_dim, embed),
        h + "self_attn.k_proj.weight": w(kv_heads * head_dim, embed),
        h + "self_attn.v_proj.weight": w(kv_heads * head_dim, embed),
        h + "self_attn.o_proj.weight": w(embed, heads * head_dim),
        h + "mlp.gate_proj.weight": w(mlp, embed),
        h + "mlp.up_proj.weight": w(mlp, embed),
        h + "mlp.down_proj.weight": w(embed, mlp),
        h + "input_layernorm.weight": 1 + w(embed, s=0.2),
        h + "post_attention_layernorm.weight": 1 + w(embed, s=0.2)})
    if arch == "qwen2":
      for p, n in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
        out[h + f"self_attn.{p}_proj.bias"] = w(n * head_dim, s=0.1)
    if arch == "qwen3":
      out[h + "self_attn.q_norm.weight"] = 1 + w(head_dim, s=0.2)
      out[h + "self_attn.k_norm.weight"] = 1 + w(head_dim, s=0.2)
  return out


_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down"}


def gguf_name(name):
  if name in _GGUF_NAMES:
    return _GGUF_NAMES[name]
  _, _, i, *rest = name.split(".")
  return f"blk.{i}.{_GGUF_NAMES['.'.join(rest[:-1])]}.{rest[-1]}"


def write(path, arch="llama", *, embed=64, layers=2, heads=4, kv_heads=2,
          head_dim=None, mlp=96, tied=True, seed=0, types=None, pre=None,
          skip=(), reshape=(), extra=None, rope_theta=10_000.0):
  """Writes a tiny GGUF model to `path`; returns its HF-layout weights.

  types: {"embed" | "matrix" | "norm": type name}, e.g. {"matrix": "Q4_1"};
    a K-quant name writes random valid blocks (and the returned weights
    are their dequantized values). skip: GGUF tensor names to leave out;
    reshape: GGUF names written with one row less; extra: {key: value}
    header fields (e.g. {"general.architecture": ...} is not allowed;
    pass arch instead).
  """
  import gguf
  from gguf import quants
  tokens, merges = bpe()
  head_dim = head_dim or embed // heads
  weights = hf_weights(arch, embed=embed, layers=layers, heads=heads,
                       kv_heads=kv_heads, head_dim=head_dim, mlp=mlp,
                       vocab=len(tokens), tied=tied, seed=seed)
  types = {"embed": "F32", "matrix": "F32", "norm": "F32", **(types or {})}
  rng = np.random.default_rng(seed + 1)
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(layers)
  writer.add_context_length(512)
  writer.add_embedding_length(embed)
  writer.add_feed_forward_length(mlp)
  writer.add_head_count(heads)
  writer.add_head_count_kv(kv_heads)
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_rope_freq_base(rope_theta)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(len(tokens))
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre or ("qwen2" if arch != "llama" else "gpt-2"))
  writer.add_token_list(tokens)
  writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
  writer.add_token_merges(merges)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(2)
  writer.add_add_bos_token(False)
  writer.add_chat_template(CHATML)
  for key, value in (extra or {}).items():
    if isinstance(value, str):
      writer.add_string(key, value)
    else:
      writer.add_uint32(key, value)
  kinds = 0
  for name, value in weights.items():
    g = gguf_name(name)
    if g in skip:
      continue
    stored = value
    if arch == "llama" and ".q_proj." in name:
      stored = permute(value, heads)
    elif arch == "llama" and ".k_proj." in name:
      stored = permute(value, kv_heads)
    if g in reshape:
      stored = stored[:-1]
    kind = ("embed" if "embed" in name or "lm_head" in name else
            "norm" if value.ndim == 1 else "matrix")
    t = types[kind]
    if t == "K":
      t = K_QUANTS[kinds % len(K_QUANTS)]
      kinds += 1
    if t in ("F32", "F16", "F64"):
      data = stored.astype({"F32": np.float32, "F16": np.float16,
                            "F64": np.float64}[t])
      writer.add_tensor(g, data)
      deq = data.astype(np.float32)
    else:
      qtype = getattr(gguf.GGMLQuantizationType, t)
      data = (random_k_blocks(t, *stored.shape, rng) if t in K_QUANTS else
              quants.quantize(stored, qtype))
      writer.add_tensor(g, data, raw_dtype=qtype)
      deq = quants.dequantize(data, qtype).reshape(stored.shape)
    if arch == "llama" and ("q_proj" in name or "k_proj" in name):
      n = heads if "q_proj" in name else kv_heads     # permute's inverse
      deq = deq.reshape(n, deq.shape[0] // n // 2, 2, -1).swapaxes(
          1, 2).reshape(deq.shape)
    if g not in reshape:
      weights[name] = np.asarray(deq, np.float32)     # What a reader gets.
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return weights
