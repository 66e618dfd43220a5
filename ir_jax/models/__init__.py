"""Language models with one interface: `(tokens, valid, cache) -> (logits, cache)`."""

import jax.numpy as jnp

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


__all__ = ["LSTM", "Transformer", "build"]
