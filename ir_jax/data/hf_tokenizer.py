"""A Hugging Face checkpoint's tokenizer (`tokenizer.json`), without torch.

  tok = hf_tokenizer.load("path/to/checkpoint")
  ids = tok.encode("Hello")                      # BOS etc. as the checkpoint says
  batch, mask = tok.pad([tok.encode(t) for t in texts], side="left")

The fast tokenizer is read with the `tokenizers` library, so ids are the
ones `transformers.AutoTokenizer` gives (its post-processor adds BOS / EOS
exactly as configured). BOS, EOS and PAD come from the checkpoint's files,
first found wins: `tokenizer_config.json` / `special_tokens_map.json` (the
token strings), then `generation_config.json` and `config.json` (ids). A
checkpoint without a pad token pads with EOS, as HF's generation does.
The project's own symbol vocabularies (`ir_jax.data.vocab`) stay for G2P.

A GGUF file's tokenizer is rebuilt from its header (`from_gguf_metadata`:
byte-level BPE tokens, merges, token types, special ids and the
pre-tokenizer named in `tokenizer.ggml.pre`, from `PRE_TOKENIZERS`).

Chat templates (`Tokenizer.apply_chat_template`) are a checkpoint's jinja2
code, so untrusted: they render in jinja2's ImmutableSandboxedEnvironment
with transformers' settings (trim_blocks, lstrip_blocks, loop controls,
`raise_exception`, `tojson`), and an unsafe attribute (`''.__class__`) or
a printed undefined value raises instead of rendering as ''.
"""

import dataclasses
import functools
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np


def _read(path: str, name: str) -> dict:
  file = os.path.join(path, name)
  if not os.path.isfile(file):
    return {}
  with open(file) as f:
    return json.load(f)


def _token_string(value) -> Optional[str]:
  """A special token as tokenizer_config.json spells it (str or AddedToken
  dict)."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _first_id(value) -> Optional[int]:
  if isinstance(value, (list, tuple)):
    return int(value[0]) if value else None
  return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Text <-> ids with the checkpoint's special tokens.

  Attributes:
    tokenizer: the `tokenizers.Tokenizer`.
    bos_id, eos_id, pad_id: ids or None (pad_id falls back to eos_id).
    eos_ids: every id that ends generation (generation_config may list
      several, as Llama 3 does).
  """
  tokenizer: object
  bos_id: Optional[int]
  eos_id: Optional[int]
  pad_id: Optional[int]
  eos_ids: Tuple[int, ...] = ()
  chat_template: Optional[str] = None
  special_tokens: Tuple[Tuple[str, str], ...] = ()  # (name, text), e.g. bos.

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True
             ) -> str:
    return self.tokenizer.decode([int(i) for i in ids],
                                 skip_special_tokens=skip_special_tokens)

  def pad(self, sequences: Sequence[Sequence[int]], length: int = 0,
          side: str = "right") -> Tuple[np.ndarray, np.ndarray]:
    """(ids int32[B, L], mask bool[B, L]) padded with `pad_id` on `side`
    ("left" for prompts to generate from, "right" for teacher forcing);
    L = `length` or the longest. Longer sequences are an error."""
    if side not in ("left", "right"):
      raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    longest = max((len(s) for s in sequences), default=0)
    length = length or longest
    if longest > length:
      raise ValueError(f"a sequence has {longest} tokens, more than "
                       f"length={length}.")
    pad = self.pad_id if self.pad_id is not None else 0
    ids = np.full((len(sequences), length), pad, np.int32)
    mask = np.zeros((len(sequences), length), bool)
    for i, s in enumerate(sequences):
      where = slice(length - len(s), length) if side == "left" else slice(
          0, len(s))
      ids[i, where] = s
      mask[i, where] = True
    return ids, mask


  def apply_chat_template(self, messages: Sequence[dict],
                          add_generation_prompt: bool = True) -> str:
    """The chat prompt text of `messages` ([{"role", "content"}, ...]),
    as transformers' `apply_chat_template(tokenize=False)` renders it."""
    if not self.chat_template:
      raise ValueError("this tokenizer has no chat template (tokenizer_config"
                       ".json chat_template / tokenizer.chat_template in a "
                       "GGUF file); set data.chat_template=False.")
    return render_chat_template(self.chat_template, messages,
                                add_generation_prompt=add_generation_prompt,
                                **dict(self.special_tokens))

  def save(self, path: str) -> None:
    """tokenizer.json + tokenizer_config.json (special tokens, chat
    template) + special_tokens_map.json that `load` and transformers'
    AutoTokenizer read back."""
    os.makedirs(path, exist_ok=True)
    self.tokenizer.save(os.path.join(path, "tokenizer.json"))
    text = lambda i: None if i is None else self.tokenizer.id_to_token(i)
    names = {k: v for k, v in (("bos_token", text(self.bos_id)),
                               ("eos_token", text(self.eos_id)),
                               ("pad_token", text(self.pad_id)))
             if v is not None}
    config = {**names, "tokenizer_class": "PreTrainedTokenizerFast",
              "clean_up_tokenization_spaces": False,
              "model_max_length": 1 << 30}
    if self.chat_template:
      config["chat_template"] = self.chat_template
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=1, ensure_ascii=False)
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
      json.dump(names, f, indent=1, ensure_ascii=False)


def _sandbox():
  """jinja2's immutable sandbox with transformers' chat-template settings,
  refusing (not blanking) unsafe attributes and printed undefined values."""
  import jinja2
  from jinja2 import sandbox

  class Undefined(jinja2.Undefined):
    """False in a test, an error when printed or iterated."""
    __str__ = __iter__ = __len__ = jinja2.Undefined._fail_with_undefined_error

  class Sandbox(sandbox.ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj, attribute):
      raise sandbox.SecurityError(
          f"access to attribute {attribute!r} of a "
          f"{type(obj).__name__} object is refused (sandboxed template).")

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None,
             sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)

  env = Sandbox(trim_blocks=True, lstrip_blocks=True, undefined=Undefined,
                extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  return env


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
  return _sandbox().from_string(template)


def render_chat_template(template: str, messages: Sequence[dict], *,
                         add_generation_prompt: bool = True,
                         **special_tokens) -> str:
  """`template` rendered for `messages` in the sandbox (see the module
  docstring); `special_tokens` (bos_token=..., eos_token=...) are passed
  as transformers passes them. Raises ValueError naming what was
  refused."""
  import jinja2
  from jinja2 import sandbox
  try:
    return _compiled(template).render(messages=list(messages),
                           add_generation_prompt=add_generation_prompt,
                           tools=None, documents=None, **special_tokens)
  except (sandbox.SecurityError, jinja2.exceptions.TemplateError) as e:
    raise ValueError(f"chat template refused: {e}") from e


# llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) -> the `tokenizers`
# pre-tokenizer that splits text as llama.cpp's regexes do (llama-vocab.cpp).
_GPT2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
         r"|\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
           r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    # Digits one by one, then GPT-2's split (SmolLM, StarCoder).
    "smollm": ("digits", _GPT2), "starcoder": ("digits", _GPT2),
    "gpt-2": (None, _GPT2), "default": (None, _GPT2),
    "llama-bpe": (None, _LLAMA3), "llama3": (None, _LLAMA3),
    "qwen2": (None, _QWEN2),
}


def _pre_tokenizer(name: str):
  from tokenizers import Regex, pre_tokenizers
  if name not in PRE_TOKENIZERS:
    raise ValueError(
        f"tokenizer.ggml.pre={name!r} is not a known pre-tokenizer (known: "
        f"{', '.join(sorted(PRE_TOKENIZERS))}); guessing would change the "
        "token ids. Convert the original Hugging Face checkpoint instead.")
  digits, pattern = PRE_TOKENIZERS[name]
  steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
  if pattern == _GPT2:  # ByteLevel's own regex is GPT-2's.
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False,
                                          trim_offsets=True, use_regex=True))
  else:
    steps += [pre_tokenizers.Split(Regex(pattern), "isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False,
                                       trim_offsets=False, use_regex=False)]
  return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


def from_gguf_metadata(meta: dict) -> Tokenizer:
  """A byte-level BPE tokenizer from a GGUF header's `tokenizer.ggml.*`
  fields (ir_jax.models.gguf.metadata). Control (type 3) and user-defined
  (type 4) tokens become added tokens (control ones special), as
  llama.cpp treats them. Raises ValueError naming an unsupported field."""
  from tokenizers import AddedToken, Tokenizer as Fast, decoders, models
  from tokenizers import processors
  kind = meta.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"tokenizer.ggml.model={kind!r} is not supported (only "
                     "byte-level BPE, 'gpt2'); convert the original Hugging "
                     "Face checkpoint instead.")
  tokens = list(meta["tokenizer.ggml.tokens"])
  types = np.asarray(meta.get("tokenizer.ggml.token_type",
                              np.ones(len(tokens))), np.int64)
  merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  fast = Fast(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                         fuse_unk=False, byte_fallback=False))
  fast.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre",
                                               "default"))
  fast.decoder = decoders.ByteLevel()
  added = [AddedToken(tokens[i], special=types[i] == 3, normalized=False)
           for i in np.flatnonzero((types == 3) | (types == 4))]
  fast.add_tokens(added)
  ids = {k: (int(meta[f"tokenizer.ggml.{k}_token_id"])
             if f"tokenizer.ggml.{k}_token_id" in meta else None)
         for k in ("bos", "eos", "padding")}
  bos, eos = ids["bos"], ids["eos"]
  pad = ids["padding"] if ids["padding"] is not None else eos
  if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
    fast.post_processor = processors.TemplateProcessing(
        single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
        special_tokens=[(tokens[bos], bos)])
  else:
    fast.post_processor = processors.ByteLevel(trim_offsets=False)
  names = tuple((f"{k}_token", tokens[v]) for k, v in
                (("bos", bos), ("eos", eos), ("pad", pad)) if v is not None)
  return Tokenizer(fast, bos, eos, pad,
                   (eos,) if eos is not None else (),
                   meta.get("tokenizer.chat_template"), names)


def load(path: str) -> Tokenizer:
  """The tokenizer of a checkpoint directory (needs `tokenizer.json`)."""
  from tokenizers import Tokenizer as Fast
  file = os.path.join(path, "tokenizer.json")
  if not os.path.isfile(file):
    raise FileNotFoundError(
        f"{path}: no tokenizer.json (the fast tokenizer). A checkpoint with "
        "only a slow tokenizer (tokenizer.model) can be converted once with "
        f"transformers: AutoTokenizer.from_pretrained('{path}')"
        f".save_pretrained('{path}').")
  fast = Fast.from_file(file)
  tok_config = {**_read(path, "special_tokens_map.json"),
                **_read(path, "tokenizer_config.json")}
  generation = _read(path, "generation_config.json")
  model = _read(path, "config.json")

  def special(name):
    text = _token_string(tok_config.get(f"{name}_token"))
    if text is not None and fast.token_to_id(text) is not None:
      return fast.token_to_id(text)
    for source in (generation, model):
      value = _first_id(source.get(f"{name}_token_id"))
      if value is not None:
        return value
    return None

  bos, eos, pad = special("bos"), special("eos"), special("pad")
  eos_ids = generation.get("eos_token_id", model.get("eos_token_id"))
  eos_ids = tuple(int(i) for i in (eos_ids if isinstance(eos_ids, list) else
                                   [eos_ids] if eos_ids is not None else []))
  if eos is not None and eos not in eos_ids:
    eos_ids = (eos,) + eos_ids
  names = tuple((f"{k}_token", fast.id_to_token(v)) for k, v in
                (("bos", bos), ("eos", eos), ("pad", pad)) if v is not None)
  template = tok_config.get("chat_template")
  if isinstance(template, list):  # Named templates: the default one.
    template = {t.get("name"): t.get("template") for t in template}.get(
        "default")
  return Tokenizer(fast, bos, eos, pad if pad is not None else eos, eos_ids,
                   template, names)


def _bytes_of_unicode():
  """GPT-2's byte-level alphabet: printable character -> byte."""
  keep = (list(range(ord("!"), ord("~") + 1)) +
          list(range(ord("\u00a1"), ord("\u00ac") + 1)) +
          list(range(ord("\u00ae"), ord("\u00ff") + 1)))
  chars, n = list(keep), 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(keep, chars)}


def token_byte_table(tokenizer: "Tokenizer") -> Tuple[np.ndarray, np.ndarray]:
  """(token_bytes int32[V, L], token_byte_lengths int32[V]): the UTF-8 bytes
  each token id spells, for the byte-level rewards (`ir_jax.rewards.chars`).

  Byte-level BPE tokens are mapped back through GPT-2's byte alphabet, so
  the bytes of a token sequence are exactly the bytes of its decoded text;
  added tokens spell their content; special tokens (and EOS / PAD) spell
  nothing. Other tokenizers fall back to `decode([id])` per token. L is
  the longest token (at least 1)."""
  fast = tokenizer.tokenizer
  size = tokenizer.vocab_size
  alphabet = _bytes_of_unicode()
  added = fast.get_added_tokens_decoder() if hasattr(
      fast, "get_added_tokens_decoder") else {}
  byte_level = "ByteLevel" in json.dumps(json.loads(fast.to_str()).get(
      "decoder") or {})
  ends = {i for i in (tokenizer.eos_id, tokenizer.pad_id) if i is not None}
  ends |= set(tokenizer.eos_ids)
  spelled = []
  for i in range(size):
    token = fast.id_to_token(i)
    if i in ends or token is None or (i in added and added[i].special):
      spelled.append(b"")
    elif i in added:
      spelled.append(added[i].content.encode("utf-8"))
    elif byte_level and all(c in alphabet for c in token):
      spelled.append(bytes(alphabet[c] for c in token))
    else:
      spelled.append(fast.decode([i], skip_special_tokens=False).encode(
          "utf-8"))
  return byte_table_of(spelled)


def byte_table_of(spelled: Sequence[bytes]) -> Tuple[np.ndarray, np.ndarray]:
  """(int32[V, L] bytes, 0-padded; int32[V] lengths) of one byte string per
  token id; L is the longest (at least 1)."""
  width = max([1] + [len(b) for b in spelled])
  table = np.zeros((len(spelled), width), np.int32)
  lengths = np.asarray([len(b) for b in spelled], np.int32)
  for i, b in enumerate(spelled):
    table[i, :len(b)] = list(b)
  return table, lengths


def write_symbol_tokenizer(path: str, symbols, *, chars: bool) -> None:
  """tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) for
  a project vocabulary (`ir_jax.data.vocab`: specials first), so that an
  exported from-scratch model (`ir-jax export`) is a complete checkpoint.

  chars=True (charlm) splits text into characters; otherwise (G2P)
  symbols are whitespace-separated. Encoding a prompt adds the project's
  source layout, <bos> ... <sep> (the model was trained on it), so
  `AutoTokenizer(prompt)` + `generate` continues it as `ir-jax generate`
  does; decoding drops the specials and joins characters (chars) or
  symbols with spaces."""
  from tokenizers import Regex, Tokenizer as Fast, decoders, models
  from tokenizers import pre_tokenizers, processors
  from ir_jax.data.vocab import BOS, EOS, PAD, SEP, SPECIALS, UNK
  table = {s: i for i, s in enumerate(symbols)}
  fast = Fast(models.WordLevel(table, unk_token=SPECIALS[UNK]))
  if chars:
    fast.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    fast.decoder = decoders.Fuse()
  else:
    fast.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast.add_special_tokens(list(SPECIALS))
  bos, sep = SPECIALS[BOS], SPECIALS[SEP]
  fast.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A {sep}", pair=f"{bos} $A {sep} $B {sep}",
      special_tokens=[(bos, BOS), (sep, SEP)])
  os.makedirs(path, exist_ok=True)
  fast.save(os.path.join(path, "tokenizer.json"))
  names = {"pad_token": SPECIALS[PAD], "bos_token": bos,
           "eos_token": SPECIALS[EOS], "unk_token": SPECIALS[UNK]}
  with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
    json.dump(names, f, indent=1)
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({**names, "tokenizer_class": "PreTrainedTokenizerFast",
               "clean_up_tokenization_spaces": False}, f, indent=1)
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": BOS, "eos_token_id": EOS,
               "pad_token_id": PAD}, f, indent=1)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json")


__all__ = ["PRE_TOKENIZERS", "TOKENIZER_FILES", "Tokenizer",
           "from_gguf_metadata", "load", "render_chat_template",
           "byte_table_of", "token_byte_table",
           "write_symbol_tokenizer"]
