"""Language models with one interface: `(tokens, valid, cache) -> (logits, cache)`.

Examples are prefix-LM pairs (ir_jax.data.tasks): a left-padded source and
a right-padded target; `target_logits` is the teacher-forced forward that
every objective differentiates.
"""

from typing import Tuple

import jax
import jax.numpy as jnp

from ir_jax.data.vocab import EOS, PAD
from ir_jax.models.lstm import LSTM
from ir_jax.models.transformer import Transformer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build(model_config, vocab_size: int, deterministic_dropout=None):
  """The model named by `model_config.kind` ('transformer' or 'lstm')."""
  cfg = dict(model_config)
  kind = cfg.pop("kind")
  cfg["dtype"] = _DTYPES[cfg.get("dtype", "float32")]
  if kind == "transformer":
    return Transformer(vocab_size=vocab_size, **cfg)
  if kind == "lstm":
    return LSTM(vocab_size=vocab_size, **cfg)
  raise ValueError(f"model.kind must be 'transformer' or 'lstm', got {kind!r}.")


def special_ids(model) -> Tuple[int, int]:
  """(pad_id, eos_id) of `model`: its tokenizer's (a Hugging Face
  checkpoint's, `data.task="text"`), or the project vocabulary's PAD / EOS.
  A checkpoint without a pad token pads with EOS (pad_id == eos_id)."""
  return (int(getattr(model, "pad_id", PAD)),
          int(getattr(model, "eos_id", EOS)))


def model_inputs(batch, pad_id: int = PAD) -> Tuple[jax.Array, jax.Array]:
  """Teacher forcing: the source plus all target tokens but the last.

  batch: source int32[B, P], target int32[B, T]. Returns tokens
  int32[B, P + T - 1] and their validity mask (False at `pad_id`).
  """
  tokens = jnp.concatenate([batch["source"], batch["target"][:, :-1]], axis=1)
  return tokens, tokens != pad_id


def target_logits(model, params, batch, rng=None) -> jax.Array:
  """float32[B, T, V]: logits at the positions that predict the target
  (position t predicts target[:, t]). `rng` turns dropout on."""
  tokens, valid = model_inputs(batch, special_ids(model)[0])
  kwargs = {} if rng is None else {"rngs": {"dropout": rng},
                                   "deterministic": False}
  logits, _ = model.apply({"params": params}, tokens, valid, **kwargs)
  return logits[:, batch["source"].shape[1] - 1:]


__all__ = ["LSTM", "Transformer", "build", "model_inputs", "special_ids",
           "target_logits"]
