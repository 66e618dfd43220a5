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


def prompt_mask(source: jax.Array, pad_id: int = PAD) -> jax.Array:
  """bool[B, P]: the real tokens of left-padded prompts int32[B, P].

  A prompt's length is P minus its leading pads: a token equal to
  `pad_id` inside the prompt stays valid, so a checkpoint that pads with a
  real token (SmolLM2 pads with `<|im_end|>`, which ends every ChatML
  turn) keeps its chat turns. The text task refuses a prompt that starts
  with the pad token (it would be read as padding).
  """
  return jnp.cumsum(source != pad_id, axis=-1) > 0


def model_inputs(batch, pad_id: int = PAD) -> Tuple[jax.Array, jax.Array]:
  """Teacher forcing: the source plus all target tokens but the last.

  batch: source int32[B, P] (left-padded), target int32[B, T] (right-
  padded), target_lengths int32[B] (EOS included). Returns tokens
  int32[B, P + T - 1] and their validity mask, from the lengths, not from
  token ids (`prompt_mask`; target slot t is valid for t < length), so a
  pad id equal to a real token is harmless.
  """
  target = batch["target"][:, :-1]
  tokens = jnp.concatenate([batch["source"], target], axis=1)
  lengths = batch.get("target_lengths")
  if lengths is None:  # A bare pair: its target padding is pad_id.
    target_valid = target != pad_id
  else:
    target_valid = jnp.arange(target.shape[1]) < lengths[:, None]
  return tokens, jnp.concatenate(
      [prompt_mask(batch["source"], pad_id), target_valid], axis=1)


def target_logits(model, params, batch, rng=None) -> jax.Array:
  """float32[B, T, V]: logits at the positions that predict the target
  (position t predicts target[:, t]). `rng` turns dropout on."""
  tokens, valid = model_inputs(batch, special_ids(model)[0])
  kwargs = {} if rng is None else {"rngs": {"dropout": rng},
                                   "deterministic": False}
  logits, _ = model.apply({"params": params}, tokens, valid, **kwargs)
  return logits[:, batch["source"].shape[1] - 1:]


__all__ = ["LSTM", "Transformer", "build", "model_inputs", "prompt_mask",
           "special_ids", "target_logits"]
