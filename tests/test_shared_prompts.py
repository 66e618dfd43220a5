"""Group-shared prompts (`rl.share_prompts`, `models.target_logits` with
K samples per source row, `decode.sample_with_rewards(share_prompts=)`)
against the repeated layout they replace: the same logits, losses and
gradients up to float rounding, on Llama- and Qwen3-shaped Transformers
(grouped-query attention, q/k norm, scanned layers), LSTMs, LoRA and full
fine-tuning, left-padded ragged prompts and ragged completions (one ends at
its first token, one never ends), and on a 2x2x2 CPU mesh."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import decode, models, objectives, rewards
from ir_jax.data.vocab import SEP
from ir_jax.models import lora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K, B, P, T, V = 3, 2, 7, 5, 64

FAMILIES = {
    # Llama: grouped-query attention (4 query heads on 2 KV heads), tied
    # embeddings, Llama-3 RoPE scaling.
    "llama": lambda: models.Transformer(
        vocab_size=V, embed_dim=32, num_layers=2, num_heads=4,
        num_kv_heads=2, mlp_dim=64, tie_embeddings=True, rope_theta=500.0,
        rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0),
                      ("low_freq_factor", 1.0),
                      ("original_max_position_embeddings", 8),
                      ("rope_type", "llama3"))),
    # Qwen3: q/k RMSNorm, head_dim wider than embed / heads; layers scanned.
    "qwen3": lambda: models.Transformer(
        vocab_size=V, embed_dim=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_size=16, qk_norm=True, mlp_dim=64,
        scan_layers=True),
    "lstm": lambda: models.LSTM(vocab_size=V, embed_dim=16, hidden_dim=32),
    "bidi_lstm": lambda: models.LSTM(vocab_size=V, embed_dim=16,
                                     hidden_dim=32, bidirectional_source=True),
}


def ragged_batch(seed=0):
  """K completions per prompt: prompts left-padded to ragged lengths and
  ending in SEP (as every task's sources do), completion lengths from 1
  (EOS first) to T (no EOS: cut at the limit)."""
  rng = np.random.default_rng(seed)
  source = rng.integers(5, V, (B, P))
  source[:, -1] = SEP
  source[1, :3] = 0                                   # Left padding.
  target = rng.integers(5, V, (B * K, T))
  lengths = rng.integers(2, T, B * K)
  lengths[0], lengths[-1] = 1, T
  return {"source": jnp.asarray(source, jnp.int32),
          "target": jnp.asarray(target, jnp.int32),
          "target_lengths": jnp.asarray(lengths, jnp.int32)}


def repeated(batch):
  return dict(batch, source=jnp.repeat(batch["source"], K, axis=0))


def init(model, batch, adapters):
  params = nn.meta.unbox(model.init(
      jax.random.key(0), *models.model_inputs(repeated(batch)))["params"])
  if adapters:
    model, params = lora.add_adapters(model, params, rank=4, alpha=8.0,
                                      targets=models.transformer.LORA_TARGETS,
                                      rng=jax.random.key(1))
    keys = iter(jax.random.split(jax.random.key(2), 100))
    params = jax.tree_util.tree_map_with_path(   # Trained-looking adapters.
        lambda p, v: 0.1 * jax.random.normal(next(keys), v.shape)
        if p[-1].key == "lora_b" else v, params)
  return model, params


def grpo_terms(model, params, samples, ref_params):
  """GRPO's clipped loss with a k3 KL, from `objectives.policy_logprobs`."""
  logp, _ = objectives.policy_logprobs(model, params, samples, 1.0)
  ref, _ = objectives.policy_logprobs(model, ref_params, samples, 1.0)
  rng = np.random.default_rng(3)
  old = jax.lax.stop_gradient(logp) + jnp.asarray(
      rng.normal(0, 0.1, logp.shape), jnp.float32)
  advantages = jnp.asarray(rng.normal(size=logp.shape), jnp.float32)
  mask = objectives.token_mask(samples["target_lengths"], logp.shape[1])
  loss, _ = objectives.grpo_loss(
      logp, old, advantages, mask, epsilon=0.2, kl_weight=0.04,
      kl_per_token=objectives.k3_kl(logp, ref))
  return loss


def norm(tree) -> float:
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(x))
                            for x in jax.tree.leaves(tree))))


def rel(a, b):
  """|a - b| / |b| over whole pytrees (norm-relative)."""
  return norm(jax.tree.map(lambda x, y: x - y, a, b)) / norm(b)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("adapters", [False, True], ids=["full", "lora"])
def test_shared_prompts_give_the_repeated_loss_and_gradient(family, adapters):
  if adapters and "lstm" in family:
    pytest.skip("LoRA adapters are the Transformer's")
  batch = ragged_batch()
  model, params = init(FAMILIES[family](), batch, adapters)
  ref_params = (lora.adapters_off(params) if adapters else
                jax.tree.map(lambda x: x * 0.9, params))
  logits = {name: models.target_logits(model, params, b)
            for name, b in (("shared", batch), ("repeated", repeated(batch)))}
  assert logits["shared"].shape == (B * K, T, V)
  assert rel(logits["shared"], logits["repeated"]) < 1e-5

  def value_and_grad(samples):
    if not adapters:
      return jax.value_and_grad(grpo_terms, argnums=1)(
          model, params, samples, ref_params)
    trained, frozen = lora.split(params)
    return jax.value_and_grad(lambda a: grpo_terms(
        model, lora.join(a, frozen), samples, ref_params))(trained)

  loss, grad = jax.jit(value_and_grad)(batch)
  loss_rep, grad_rep = jax.jit(value_and_grad)(repeated(batch))
  assert abs(float(loss) - float(loss_rep)) <= 1e-5 * abs(float(loss_rep))
  assert rel(grad, grad_rep) < 1e-5
  assert norm(grad_rep) > 0


def test_the_lm_head_runs_only_where_logits_are_used():
  """target_logits asks the model for T positions, not P + T - 1; prefill
  for one; the values are the full forward's at those positions."""
  batch = ragged_batch()
  model, params = init(FAMILIES["llama"](), batch, False)
  tokens, valid = models.model_inputs(repeated(batch))
  full, _ = model.apply({"params": params}, tokens, valid)
  last, _ = model.apply({"params": params}, tokens, valid, num_logits=T)
  np.testing.assert_array_equal(last, full[:, -T:])
  calls = []
  original = model.__class__.__call__

  def spy(self, *args, num_logits=0, **kwargs):
    calls.append(num_logits)
    return original(self, *args, num_logits=num_logits, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(model.__class__, "__call__", spy)
    models.target_logits(model, params, repeated(batch))
    assert calls == [T]
    calls.clear()
    models.target_logits(model, params, batch)
    assert calls == [1, 0]             # Prompt pass, completions pass.


def test_target_logits_refuses_rows_that_are_not_groups():
  batch = ragged_batch()
  model, params = init(FAMILIES["llama"](), batch, False)
  bad = dict(batch, target=batch["target"][:-1],
             target_lengths=batch["target_lengths"][:-1])
  with pytest.raises(ValueError, match="not a multiple"):
    models.target_logits(model, params, bad)


@pytest.mark.parametrize("family", ["llama", "qwen3", "bidi_lstm"])
def test_a_shared_prefill_decodes_as_the_repeated_one(family):
  """Prefill B prompts and repeat the cache, or prefill B K: the logits of
  the prefill and of three decode steps on the same tokens agree."""
  batch = ragged_batch()
  model, params = init(FAMILIES[family](), batch, False)
  variables = {"params": params}
  source = batch["source"]
  cache = model.init_cache(B, P + 4)
  first, cache = model.apply(variables, source, models.prompt_mask(source),
                             cache, num_logits=1)
  shared = (jnp.repeat(first, K, axis=0), models.repeat_cache(cache, K))
  rows = jnp.repeat(source, K, axis=0)
  rep = model.apply(variables, rows, models.prompt_mask(rows),
                    model.init_cache(B * K, P + 4), num_logits=1)
  tokens = batch["target"]
  for t in range(4):
    assert rel(shared[0], rep[0]) < 1e-5, t
    step = lambda cache: model.apply(variables, tokens[:, t:t + 1],
                                     jnp.ones((B * K, 1), bool), cache)
    shared, rep = step(shared[1]), step(rep[1])


def test_sample_with_rewards_shares_the_prompt():
  batch = ragged_batch()
  model, params = init(FAMILIES["qwen3"](), batch, False)
  run = lambda share: decode.sample_with_rewards(
      model, {"params": params}, batch["source"], batch["target"][::K],
      batch["target_lengths"][::K], jax.random.key(4), max_len=T,
      num_samples=K, reward=rewards.edit_distance_reward(),
      share_prompts=share)
  shared, rep = run(True), run(False)
  same = np.all(np.asarray(shared["tokens"] == rep["tokens"]), axis=1)
  assert same.mean() >= 0.9         # A near-tie may flip; none at this seed.
  np.testing.assert_allclose(np.asarray(shared["logprobs"])[same],
                             np.asarray(rep["logprobs"])[same], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(shared["rewards"])[same],
                                np.asarray(rep["rewards"])[same])


@pytest.mark.parametrize("mode", ["grpo", "seq", "mwer"])
def test_rl_objectives_share_prompts_by_default(mode):
  """Every sampling objective computes its loss on the shared layout and
  gets the repeated layout's loss and gradient (`rl.share_prompts`)."""
  from helpers import tiny
  from ir_jax import state as state_lib
  from ir_jax import step as step_lib
  overrides = {"rl.mode": mode, "objective.alpha": 1.0, "rl.num_samples": 2}
  c = tiny(**overrides)
  assert c.rl.share_prompts
  task, model, tx, _, _ = state_lib.setup(c)
  batch = {k: jnp.asarray(v[:c.batch_size]) for k, v in task.train.items()}
  state = state_lib.init_state(c, model, tx, task)
  out = {}
  for share in (True, False):
    cs = tiny(**overrides, **{"rl.share_prompts": share})
    _, metrics = jax.jit(step_lib.make_train_step(cs, model, tx))(state, batch)
    out[share] = {k: float(metrics[k]) for k in ("loss", "grad_norm",
                                                 "reward")}
  assert out[True]["grad_norm"] > 0
  for key, value in out[True].items():
    assert value == pytest.approx(out[False][key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.multiprocess
def test_shared_prompts_on_a_2x2x2_mesh(tmp_path):
  """GRPO on 8 virtual devices (data 2, fsdp 2, tensor 2): the shared and
  the repeated layout log the same losses and rewards."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  runs = {}
  for share in (True, False):
    out = tmp_path / f"{share}.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "distributed_worker.py"),
         str(out), str(tmp_path / str(share)), "2,2,2", "--steps", "3",
         "--override", "rl.mode=grpo", "--override", "objective.alpha=1.0",
         "--override", "rl.num_samples=2", "--override",
         f"rl.share_prompts={share}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[share] = json.loads(out.read_text())["2,2,2"]
  assert runs[True]["devices"] == 8 and len(runs[True]["losses"]) == 3
  np.testing.assert_allclose(runs[True]["losses"], runs[False]["losses"],
                             rtol=1e-5, atol=1e-6)
