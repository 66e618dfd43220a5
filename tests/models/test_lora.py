"""LoRA: zero-init adapters are a no-op, only adapters train (and hold
optimizer state), merged == unmerged, adapters off == the base model."""

import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ir_jax.models import Transformer, lora

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def base(**kw):
  model = Transformer(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4,
                      mlp_dim=48, **kw)
  ids = jnp.asarray(np.random.default_rng(0).integers(1, 40, (3, 7)))
  params = nn.meta.unbox(model.init(jax.random.key(0), ids)["params"])
  return model, params, ids


def logits(model, params, ids):
  return model.apply({"params": params}, ids)[0]


def randomise_b(params, seed=1):
  """Non-zero B everywhere (a trained adapter)."""
  keys = iter(jax.random.split(jax.random.key(seed), 100))
  return jax.tree_util.tree_map_with_path(
      lambda p, v: 0.1 * jax.random.normal(next(keys), v.shape)
      if p[-1].key == "lora_b" else v, params)


@pytest.mark.parametrize("scan", [False, True])
def test_fresh_adapters_are_a_no_op_and_merge_exactly(scan):
  model, params, ids = base(scan_layers=scan)
  adapted, p = lora.add_adapters(model, params, rank=4, alpha=8.0,
                                 targets=("query", "value", "wi_up", "wo"),
                                 rng=jax.random.key(1))
  np.testing.assert_array_equal(logits(adapted, p, ids),
                                logits(model, params, ids))
  p = randomise_b(p)
  changed = logits(adapted, p, ids)
  assert float(jnp.abs(changed - logits(model, params, ids)).max()) > 1e-2
  plain, merged = lora.merge(adapted, p)
  assert plain.lora_rank == 0
  assert not any(k[-1] in lora.ADAPTERS
                 for k in flax.traverse_util.flatten_dict(merged))
  np.testing.assert_allclose(logits(plain, merged, ids), changed, atol=1e-5)
  # The KL reference: adapters off is the base model.
  np.testing.assert_allclose(logits(adapted, lora.adapters_off(p), ids),
                             logits(model, params, ids), atol=1e-6)


def test_only_adapters_train_and_hold_optimizer_state():
  model, params, ids = base()
  adapted, p = lora.add_adapters(model, params, rank=2, rng=jax.random.key(1))
  tx = lora.optimizer(optax.adam(1e-2))
  opt = tx.init(p)
  adapter_size = sum(v.size for k, v in flax.traverse_util.flatten_dict(
      p).items() if k[-1] in lora.ADAPTERS)
  state_size = sum(x.size for x in jax.tree.leaves(opt)
                   if hasattr(x, "size") and x.ndim > 0)
  assert state_size == 2 * adapter_size        # Adam's two moments, no more.

  def loss(q):
    out = logits(adapted, q, ids)
    return -jax.nn.log_softmax(out)[..., 5].mean()

  new = p
  for _ in range(3):   # B moves first (A's gradient is 0 while B is 0).
    grads = jax.grad(loss)(new)
    updates, opt = tx.update(grads, opt, new)
    new = optax.apply_updates(new, updates)
  flat_old = flax.traverse_util.flatten_dict(p)
  flat_new = flax.traverse_util.flatten_dict(new)
  for k in flat_old:
    same = bool(jnp.array_equal(flat_old[k], flat_new[k]))
    assert same == (k[-1] not in lora.ADAPTERS), k


def test_bad_lora_settings_are_refused():
  model, params, _ = base()
  with pytest.raises(ValueError, match="rank > 0"):
    lora.add_adapters(model, params, rank=0, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="unknown: \\['attn'\\]"):
    lora.add_adapters(model, params, rank=2, targets=("attn",),
                      rng=jax.random.key(0))


@pytest.mark.torch
def test_hf_save_merges_adapters(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  import torch
  from ir_jax.models import hf
  model, params, ids = base()
  adapted, p = lora.add_adapters(model, params, rank=4, rng=jax.random.key(1))
  p = randomise_b(p)
  hf.save(str(tmp_path), adapted, p)
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
  with torch.no_grad():
    theirs = back(input_ids=torch.tensor(np.asarray(ids))).logits.numpy()
  np.testing.assert_allclose(theirs, logits(adapted, p, ids), atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_adapters_save_and_load_round_trip(tmp_path, dtype):
  import ml_dtypes
  rng = np.random.default_rng(0)
  flat = {("layers", "query", "lora_a"): rng.normal(size=(2, 8, 4)),
          ("layers", "query", "lora_b"): rng.normal(size=(2, 4, 8))}
  path = str(tmp_path / "sub" / "adapters.npz")
  lora.save_adapters(flat, path, dtype=dtype)
  back = lora.load_adapters(path)
  assert set(back) == set(flat)
  for k, v in flat.items():
    want = (v.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
            if dtype == "bfloat16" else v.astype(np.float32))
    np.testing.assert_array_equal(back[k], want)
  assert not os.path.exists(path + ".partial.npz")
  # A params tree: its adapters are taken, the base left out.
  tree = {"layers": {"query": {"kernel": np.ones((2, 8, 8)),
                               "lora_a": flat[("layers", "query", "lora_a")],
                               "lora_b": flat[("layers", "query", "lora_b")]}}}
  lora.save_adapters(tree, path, dtype=dtype)
  assert set(lora.load_adapters(path)) == set(flat)
  with pytest.raises(ValueError, match="dtype"):
    lora.save_adapters(flat, path, dtype="float16")


@pytest.mark.parametrize("task", ["spell_backward", "basic_arithmetic"])
def test_the_committed_sft_adapters_load(task):
  """The study's committed SFT adapters (bf16 bits) load as float32 arrays
  of rank 8 in pairs."""
  path = os.path.join(ROOT, "benchmarks", "results", "llm_rl", task, "sft",
                      "adapters.npz")
  adapters = lora.load_adapters(path)
  assert adapters and all(v.dtype == np.float32 for v in adapters.values())
  assert {k[-1] for k in adapters} == {"lora_a", "lora_b"}
  for k, v in adapters.items():
    if k[-1] == "lora_a":
      assert v.shape[-1] == 8 and k[:-1] + ("lora_b",) in adapters
      assert np.isfinite(v).all() and np.abs(v).max() > 0
