"""Language models with one interface: `(tokens, valid, cache) -> (logits, cache)`.

Examples are prefix-LM pairs (ir_jax.data.tasks): a left-padded source and
a right-padded target; `target_logits` is the teacher-forced forward that
every objective differentiates.
"""

from typing import Any, Tuple

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
  target, target_valid = completion_inputs(batch, pad_id)
  tokens = jnp.concatenate([batch["source"], target], axis=1)
  return tokens, jnp.concatenate(
      [prompt_mask(batch["source"], pad_id), target_valid], axis=1)


def completion_inputs(batch, pad_id: int = PAD
                      ) -> Tuple[jax.Array, jax.Array]:
  """The target part of `model_inputs`: target[:, :-1] int32[N, T - 1] and
  its validity bool[N, T - 1] (slot t valid for t < target_lengths; by
  token id, != pad_id, for a bare pair without lengths)."""
  target = batch["target"][:, :-1]
  lengths = batch.get("target_lengths")
  if lengths is None:  # A bare pair: its target padding is pad_id.
    return target, target != pad_id
  return target, jnp.arange(target.shape[1]) < lengths[:, None]


def target_logits(model, params, batch, rng=None) -> jax.Array:
  """float32[N, T, V]: logits at the positions that predict the target
  (position t predicts target[:, t]); the LM head runs there alone.

  batch: source int32[B, P] (left-padded), target int32[N, T] and
  target_lengths int32[N], with N = B K. K = 1 is one pass over
  `model_inputs`. K > 1 is a group-shared prompt (GRPO's K samples of one
  prompt, rows ordered [b0 k0, b0 k1, ...]): each prompt is computed once,
  its cache written K times (`shared_prompt_pass`), and the completions
  [N, T - 1] run against it; equal to the K = 1 pass on the repeated
  source up to float rounding, and so are its gradients (the prompt's is
  the sum over its K completions: the transpose of the repeat). With
  dropout (`rng`), the K completions share their prompt's dropout mask
  (parity holds at dropout 0). A soft prompt (`prompt_length` > 0) takes
  the repeated pass: its slots are found from the BOS of each row, which a
  completion may also hold. The LSTM takes the same path (its carry is
  the cache); a bidirectional source encoder reads the source up to its
  SEP, which every task's sources end with.
  """
  source, target = batch["source"], batch["target"]
  b, n = source.shape[0], target.shape[0]
  if n % b:
    raise ValueError(f"target_logits: {n} target rows are not a multiple of "
                     f"the {b} source rows.")
  k = n // b
  if k > 1 and getattr(model, "prompt_length", 0):
    source, k = jnp.repeat(source, k, axis=0), 1
  pad = special_ids(model)[0]
  kwargs = lambda key: {} if rng is None else {
      "rngs": {"dropout": key}, "deterministic": False}
  t = target.shape[1]
  if k == 1:
    tokens, valid = model_inputs(dict(batch, source=source), pad)
    logits, _ = model.apply({"params": params}, tokens, valid,
                            num_logits=t, **kwargs(rng))
    return logits
  first, cache = shared_prompt_pass(model, {"params": params}, source, k,
                                    source.shape[1] + t - 1, **kwargs(rng))
  first = jnp.repeat(first, k, axis=0)
  if t == 1:
    return first
  tokens, valid = completion_inputs(batch, pad)
  rest, _ = model.apply(
      {"params": params}, tokens, valid, cache,
      **kwargs(None if rng is None else jax.random.fold_in(rng, 1)))
  return jnp.concatenate([first, rest], axis=1)


# Where each cache entry (Transformer: k, v, valid, index, position; LSTM:
# c, h, position, context, has_context) keeps its batch axis; None: shared
# by the batch (the Transformer's write index).
CACHE_BATCH_AXIS = {"k": 1, "v": 1, "valid": 1, "c": 1, "h": 1,
                    "position": 0, "context": 0, "has_context": 0,
                    "index": None}


def map_cache_rows(cache, fn):
  """The cache with `fn(leaf, axis)` applied to every entry with a batch
  axis (`CACHE_BATCH_AXIS`); an unknown entry is an error, not a guess."""
  def apply(path, leaf):
    key = path[-1].key
    if key not in CACHE_BATCH_AXIS:
      raise ValueError(f"unknown cache entry {key!r}: add its batch axis to "
                       "ir_jax.models.CACHE_BATCH_AXIS.")
    axis = CACHE_BATCH_AXIS[key]
    return leaf if axis is None else fn(leaf, axis)
  return jax.tree_util.tree_map_with_path(apply, cache)


def repeat_cache(cache, k: int):
  """Each row of a cache repeated k times in a row ([b0, b0, .., b1, ..]),
  the layout of K samples per prompt. Differentiable: the gradient of a
  repeated row is the sum over its copies."""
  return map_cache_rows(cache, lambda a, axis: jnp.repeat(a, k, axis=axis))


def shared_prompt_pass(model, variables, source: jax.Array, k: int,
                       slots: int, **kwargs) -> Tuple[jax.Array, Any]:
  """Each prompt computed once for its K samples.

  source: int32[B, P] prompts (left-padded). Returns (logits float32[B,
  1, V] at each prompt's last position, the cache of B K rows and `slots`
  positions holding each prompt K times in a row: [b0, b0, .., b1, ..]).
  A Transformer writes the K copies layer by layer into a cache allocated
  at B K rows (`cache_repeat`), so no second full-size cache exists; an
  LSTM's carry is O(1) a row and is repeated after the pass
  (`repeat_cache`). `kwargs` go to `model.apply` (dropout's rngs).
  """
  pad = special_ids(model)[0]
  mask = prompt_mask(source, pad)
  if isinstance(model, Transformer):
    cache = model.init_cache(source.shape[0] * k, slots)
    return model.apply(variables, source, mask, cache, num_logits=1,
                       cache_repeat=k, **kwargs)
  logits, cache = model.apply(variables, source, mask,
                              model.init_cache(source.shape[0], slots),
                              num_logits=1, **kwargs)
  return logits, repeat_cache(cache, k)


__all__ = ["CACHE_BATCH_AXIS", "LSTM", "Transformer", "build",
           "map_cache_rows", "model_inputs", "prompt_mask", "repeat_cache",
           "shared_prompt_pass", "special_ids", "target_logits"]
