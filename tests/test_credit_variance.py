"""benchmarks/credit_variance.py: its statistics on synthetic gradients of
known signal and noise, its stacked-cotangent gradients against jax.grad of
each credit's loss, and the benchmark end to end on a tiny G2P run and a
tiny random llama GGUF (char_error, the credit's unclipped replay)."""

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import credit_variance as cv  # noqa: E402


def test_statistics_recover_a_known_signal_to_noise():
  rng = np.random.default_rng(0)
  n, p = 400, 200
  mu = rng.normal(size=p)
  mu *= 1.0 / np.linalg.norm(mu)
  sigma = 0.2                           # SNR = |mu|^2 / (p sigma^2) = 0.125.
  ref = mu + sigma * rng.normal(size=(n, p))
  same = mu + sigma * rng.normal(size=(n, p))
  ortho = rng.normal(size=p)
  ortho -= (ortho @ mu) * mu
  ortho /= np.linalg.norm(ortho)
  wrong = ortho + sigma * rng.normal(size=(n, p))
  quiet = mu + sigma / 2 * rng.normal(size=(n, p))      # 4x the SNR.
  rows = cv.statistics(np.stack([ref, same, wrong, quiet]).astype(
      np.float32), ["sequence", "wrong", "quiet"])
  by = {r["credit"]: r for r in rows}
  by["same"] = by["sequence"]
  assert by["same"]["snr"] == pytest.approx(0.125, rel=0.15)
  assert by["same"]["snr_vs_sequence_ci95"] == pytest.approx([1.0, 1.0])
  lo, hi = by["quiet"]["snr_vs_sequence_ci95"]
  assert 1.5 < lo < 4.0 < hi
  assert by["same"]["cosine_disattenuated"] == pytest.approx(1.0, abs=0.05)
  assert by["same"]["cosine_to_reference"] > 0.9
  assert abs(by["wrong"]["cosine_to_reference"]) < 0.1
  assert by["wrong"]["batch_cosine"] < 0.05 < by["same"]["batch_cosine"]


def _tiny_g2p(tmp_path):
  from ir_jax import train
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import helpers
  c = helpers.tiny(**{"total_steps": 3, "eval_every": 10,
                      "checkpoint_every": 3})
  wd = str(tmp_path / "run")
  train.train_and_evaluate(c, wd)
  return wd


def test_stacked_cotangents_give_each_credits_own_gradient(tmp_path):
  import argparse
  import jax
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from ir_jax import objectives
  wd = _tiny_g2p(tmp_path)
  args = argparse.Namespace(tiny=True, samples=4, batch=3)
  config, task, model, params = cv.from_workdir(wd, args)
  specs = cv.credit_specs([0.5])
  batch = {k: jnp.asarray(v)
           for k, v in cv.batch_source(task, 3, 0)(0).items()}
  key = jax.random.key(1)
  grads, _ = cv.make_batch_gradients(config, model, params, specs)(
      params, batch, key)
  mapped, _ = cv.make_batch_gradients(config, model, params, specs,
                                      vjp_batch=3)(params, batch, key)
  np.testing.assert_allclose(mapped, grads, rtol=1e-5,
                             atol=1e-6 * float(jnp.abs(grads).max()))
  rl = config.rl
  scored = objectives.sample_and_score(config, model, params, batch, key,
                                       num_samples=4,
                                       temperature=rl.temperature)
  samples = {"source": objectives.group_source(config, batch["source"]),
             "target": scored["tokens"], "target_lengths": scored["lengths"]}
  mask = objectives.token_mask(scored["lengths"], scored["tokens"].shape[1])
  for i, (_, credit, lam, baseline) in enumerate(specs):
    if credit == "sequence":
      adv = objectives.group_advantages(scored["returns"], 4)[:, None]
    else:
      adv = objectives.credit_advantages(
          scored["token_rewards"], scored["lengths"], scored["returns"], 4,
          credit=credit, lam=lam, baseline=baseline)

    def loss(p, adv=adv):
      lp = objectives.policy_logprobs(model, p, samples, rl.temperature)[0]
      return objectives.aggregate_tokens(adv * lp, mask, rl.loss_aggregation,
                                         int(config.data.target_len))

    want = ravel_pytree(jax.grad(loss)(params))[0]
    np.testing.assert_allclose(grads[i + 1], want, rtol=2e-4,
                               atol=2e-6 * float(jnp.abs(want).max()))
  assert float(jnp.abs(grads[0]).max()) > 0


def test_end_to_end_on_a_tiny_g2p_run(tmp_path):
  wd = _tiny_g2p(tmp_path)
  out = tmp_path / "variance.json"
  cv.main(["--tiny", "--workdir", wd, "--batches", "4", "--batch", "3",
           "--samples", "4", "--name", "tiny_g2p", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  names = [r["credit"] for r in rows]
  assert names == ["reference"] + [s[0] for s in cv.credit_specs([0.5, 0.9])]
  for r in rows:
    assert {"model", "task", "mean_len", "credit", "cosine_to_reference",
            "snr"} <= set(r)
    assert r["task"] == "tiny_g2p" and r["mean_len"] > 0
    assert np.isfinite([r["cosine_to_reference"], r["snr"]]).all()
    assert r["cosine_disattenuated"] is None or np.isfinite(
        r["cosine_disattenuated"])
  # A second checkpoint adds rows; the same one replaces its own.
  cv.main(["--tiny", "--workdir", wd, "--batches", "2", "--batch", "3",
           "--samples", "4", "--name", "tiny_g2p", "--checkpoint", "later",
           "--lambdas", "", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert len(rows) == 10 + 6
  assert "immediate/none" in (tmp_path / "variance.md").read_text()


@pytest.mark.slow
def test_end_to_end_on_a_tiny_llm(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import gguf_files
  gguf = str(tmp_path / "tiny.gguf")
  gguf_files.write(gguf)
  out = tmp_path / "variance.json"
  cv.main(["--tiny", "--llm", "spell_backward", "--hf_path", gguf,
           "--batches", "3", "--batch", "2", "--samples", "3",
           "--lambdas", "0.5", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  assert [r["credit"] for r in rows][:2] == ["reference", "sequence"]
  assert all(np.isfinite(r["snr"]) for r in rows)
