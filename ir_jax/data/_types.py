"""The task containers every task builder fills (`ir_jax.data.tasks`,
`ir_jax.data.text`): a task's training arrays, eval sets and vocabulary."""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ir_jax.data.vocab import BOS, EOS, PAD, SEP, Vocab


@dataclasses.dataclass
class EvalSet:
  """Inputs and references for scoring generation."""
  keys: List[str]                       # Word (or context) per row.
  source: np.ndarray                    # int32[W, P]
  references: List[List[Tuple[str, ...]]]
  direction: str = ""                   # Key of Task.target_ids.
  # task="text": the JSONL items (their task and metadata, for a task's
  # own checker at eval time).
  items: Optional[List[Dict]] = None


@dataclasses.dataclass
class Task:
  name: str
  vocab: Vocab
  source_len: int
  target_len: int
  train: Dict[str, np.ndarray]          # source, target, target_lengths
  eval_sets: Dict[str, EvalSet]
  eval_targets: Dict[str, Dict[str, np.ndarray]]  # Teacher-forced eval CE.
  report: Dict[str, int]                # Bad-data counts, never silent.
  prompt: Tuple[int, ...] = ()          # Slot ids after BOS (task tag).
  # Per direction ("g2p", "p2g", "charlm"): the ids decoding may emit, the
  # direction's target symbols and EOS.
  target_ids: Dict[str, Tuple[int, ...]] = dataclasses.field(
      default_factory=dict)
  # The tokenizer's padding and end ids (the project vocabulary's, or a
  # checkpoint's for task="text"); the model is built with them.
  pad_id: int = PAD
  eos_id: int = EOS
  # task="text": prompts rendered by the tokenizer's chat template.
  chat_template: bool = False

  def encode_sources(self, items: Sequence[Sequence[str]]) -> np.ndarray:
    return np.stack([encode_source(self.vocab, s, self.source_len, self.prompt)
                     for s in items])


def encode_source(vocab: Vocab, symbols: Sequence[str], length: int,
                  prompt: Sequence[int] = ()):
  """[PAD.., BOS, prompt.., symbols.., SEP]; `prompt` ids fill the slots
  right after BOS (task tags, or placeholders a soft prompt overwrites)."""
  ids = [BOS, *prompt] + vocab.encode(symbols)[:length - 2 - len(prompt)] + [SEP]
  return np.asarray([PAD] * (length - len(ids)) + ids, np.int32)
