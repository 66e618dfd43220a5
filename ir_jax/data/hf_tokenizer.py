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
"""

import dataclasses
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
  return Tokenizer(fast, bos, eos, pad if pad is not None else eos, eos_ids)


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


__all__ = ["TOKENIZER_FILES", "Tokenizer", "load", "write_symbol_tokenizer"]
