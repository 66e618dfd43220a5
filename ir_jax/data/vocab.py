"""Token vocabularies shared by every task: specials first, then symbols."""

import dataclasses
from typing import Dict, List, Sequence, Tuple

PAD, BOS, SEP, EOS, UNK = 0, 1, 2, 3, 4
SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>", "<unk>")


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Maps symbols (characters, phonemes, task tags) to ids and back."""
  symbols: Tuple[str, ...]

  @classmethod
  def build(cls, symbols: Sequence[str]) -> "Vocab":
    seen = dict.fromkeys(s for s in symbols if s not in SPECIALS)
    return cls(SPECIALS + tuple(sorted(seen)))

  @property
  def size(self) -> int:
    return len(self.symbols)

  @property
  def index(self) -> Dict[str, int]:
    return {s: i for i, s in enumerate(self.symbols)}

  def encode(self, seq: Sequence[str]) -> List[int]:
    index = self.index
    return [index.get(s, UNK) for s in seq]

  def decode(self, ids: Sequence[int]) -> List[str]:
    """Ids up to the first EOS, dropping specials."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS:
        break
      if i >= len(SPECIALS) and i < len(self.symbols):
        out.append(self.symbols[i])
    return out
