"""Prompt optimisation on a frozen model: soft prompts and discrete search."""

import json
import os
import shutil
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_jax import cli, decode, models, prompt_search, train
from ir_jax import state as state_lib
from ir_jax import workdir as workdir_lib
from ir_jax import config as config_lib
from ir_jax.data import tasks
from ir_jax.data.vocab import BOS, SEP
from ir_jax.models import prompting
from helpers import FIXTURE, ROOT




KINDS = ("transformer", "lstm")


def _cfg(spec):
  return config_lib.load(os.path.join(ROOT, "experiments", spec))


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
  """Tiny multi-task (tagged g2p + p2g) models of both kinds, trained once."""
  out = {}
  for kind in KINDS:
    workdir = str(tmp_path_factory.mktemp(f"frozen_{kind}"))
    c = _cfg("g2p.py:multi,tiny" + (",lstm" if kind == "lstm" else ""))
    c.total_steps = 10
    train.train_and_evaluate(c, workdir)
    out[kind] = workdir
  return out


def _prompt_cfg(mode, kind, frozen_dir, extra=""):
  c = _cfg(f"prompt.py:{mode},tiny" + (",lstm" if kind == "lstm" else "") +
           extra)
  c.init_from = frozen_dir
  return c


def _params(workdir):
  return workdir_lib.load_run(workdir)[3]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_soft_prompt_trains_only_the_prompt(frozen, kind, tmp_path):
  """CLI run; frozen params bit-identical, prompt moved, and the optimizer
  state holds nothing for the frozen params."""
  workdir = str(tmp_path / "soft")
  spec = os.path.join(ROOT, "experiments", "prompt.py") + ":soft,tiny" + (
      ",lstm" if kind == "lstm" else "")
  assert cli.main(["train", "--config", spec, "--workdir", workdir,
                   f"--config.init_from={frozen[kind]}"]) == 0
  config, _, _, tuned = workdir_lib.load_run(workdir)
  base = _params(frozen[kind])
  assert set(tuned) == set(base) | {"prompt"}
  for a, b in zip(jax.tree.leaves({k: tuned[k] for k in base}),
                  jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  init = prompting.init_soft_prompt(config, None, base["embed"]["embedding"])
  assert not np.allclose(tuned["prompt"], init)
  task = tasks.build(config)
  state = jax.eval_shape(lambda: state_lib.init_state(
      config, state_lib.make_model(config, task), state_lib.make_optimizer(config),
      task))
  opt_floats = sum(l.size for l in jax.tree.leaves(state.opt_state)
                   if l.ndim)
  assert opt_floats == 2 * tuned["prompt"].size     # Adam mu and nu only.
  saved = workdir_lib.load_prompt(workdir, base)
  np.testing.assert_array_equal(saved["value"], tuned["prompt"])
  assert saved["kind"] == "soft"
  # Generate with the tuned prompt on the frozen model's workdir.
  assert cli.main(["generate", "--workdir", frozen[kind], "--prompt",
                   workdir, "hello"]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_from_hand_tag_reproduces_hand_tag(frozen, kind):
  config, task, model, params = workdir_lib.load_run(frozen[kind])
  tag = task.prompt[0]
  source = jnp.asarray(task.eval_sets["dev"].source[:16])
  assert bool((source == tag).any(axis=1).all())
  prompted = model.clone(prompt_length=1)
  p_params = dict(params, prompt=params["embed"]["embedding"][tag][None])
  want, _ = decode.generate(model, {"params": params}, source,
                            max_len=task.target_len)
  # The slot holds another token: only the soft prompt says "tag".
  other = prompting.fill_slots(source, jnp.array([tasks.UNK]))
  got, _ = decode.generate(prompted, {"params": p_params}, other,
                           max_len=task.target_len)
  np.testing.assert_array_equal(got, want)
  batch = {k: jnp.asarray(v[:8]) for k, v in task.train.items()}
  l1 = models.target_logits(model, params, batch)
  batch["source"] = prompting.fill_slots(batch["source"], jnp.array([4]))
  l2 = models.target_logits(prompted, p_params, batch)
  np.testing.assert_array_equal(l1, l2)


def test_prompt_gradient_matches_finite_differences():
  model = models.build(dict(kind="transformer", embed_dim=8, num_layers=1,
                            num_heads=2, mlp_dim=16, prompt_length=2), 24)
  rng = np.random.default_rng(0)
  source = jnp.asarray(np.concatenate([np.zeros((3, 1)), np.full((3, 1), BOS),
                                       rng.integers(5, 24, (3, 5)),
                                       np.full((3, 1), SEP)], 1), jnp.int32)
  batch = {"source": source, "target": jnp.asarray(rng.integers(5, 24, (3, 4)),
                                                   jnp.int32),
           "target_lengths": jnp.array([4, 3, 2])}
  import flax.linen as nn
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(1), source)["params"])
  from ir_jax import objectives

  def loss(prompt):
    logits = models.target_logits(model, dict(params, prompt=prompt), batch)
    return objectives.masked_cross_entropy(logits, batch["target"],
                                           batch["target_lengths"])[0]

  loss = jax.jit(loss)
  p0 = params["prompt"]
  g = jax.grad(loss)(p0)
  assert float(jnp.abs(g).max()) > 1e-4
  eps = 1e-2
  for (i, j) in [(0, 0), (0, 5), (1, 3), (1, 7)]:
    e = jnp.zeros_like(p0).at[i, j].set(eps)
    fd = (loss(p0 + e) - loss(p0 - e)) / (2 * eps)
    np.testing.assert_allclose(g[i, j], fd, rtol=2e-2, atol=2e-4)


def test_population_scoring_equals_scoring_alone(frozen):
  config, task, model, params = workdir_lib.load_run(frozen["transformer"])
  batch = prompt_search.scoring_batch(task, 12, 0)
  cands = np.random.default_rng(0).choice(prompting.symbol_ids(task), (5, 1))
  cands[0, 0] = task.prompt[0]
  score = lambda c: np.asarray(prompt_search.score_population(
      model, {"params": params}, batch["source"], batch["target"],
      batch["target_lengths"], c, max_len=task.target_len))
  together = score(cands)
  alone = np.array([score(cands[i:i + 1])[0] for i in range(len(cands))])
  np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)
  assert (together <= 0).all()


def test_search_is_reproducible_and_improves():
  target = np.array([7, 9, 11])
  score = lambda c: -np.abs(np.asarray(c) - target).sum(1).astype(float)
  runs = [prompt_search.evolve(score, np.arange(5, 20), 3, rounds=8, population=10,
                         elite=3, mutation_rate=0.3, seed=s) for s in (1, 1, 2)]
  assert runs[0][2] == runs[1][2]
  assert runs[0][2] != runs[2][2]
  best = [h["best"] for h in runs[0][2]]
  assert best == sorted(best) and best[-1] > best[0]
  ids, value, _ = prompt_search.greedy_replace(score, np.arange(5, 20), 3, rounds=3,
                                         population=4, seed=0)
  assert value == 0 and list(ids) == [7, 9, 11]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_search_from_cli_logs_and_saves(frozen, kind, tmp_path):
  workdir = str(tmp_path / "search")
  spec = os.path.join(ROOT, "experiments", "prompt.py") + ":search,tiny" + (
      ",lstm" if kind == "lstm" else "")
  assert cli.main(["train", "--config", spec, "--workdir", workdir,
                   f"--config.init_from={frozen[kind]}"]) == 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  curve = [r["best_reward"] for r in records if "best_reward" in r]
  assert len(curve) == 3 and curve == sorted(curve)
  assert {r["split"] for r in records if "split" in r} == {"dev", "test"}
  meta = workdir_lib.load_prompt(workdir, _params(frozen[kind]))
  assert meta["kind"] == "discrete" and len(meta["symbols"]) == 4
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert cli.main(["generate", "--workdir", frozen[kind], "--prompt",
                   workdir, "hello"]) == 0
  assert cli.main(["generate", "--workdir", frozen[kind], "--prompt",
                   " ".join(meta["symbols"]), "hello"]) == 0


def test_mismatched_model_is_refused(frozen, tmp_path):
  params = _params(frozen["transformer"])
  workdir_lib.save_prompt(str(tmp_path), np.ones((4, 32), np.float32), {
      "kind": "soft", "length": 4, "fingerprint": workdir_lib.fingerprint(params),
      "data": {}})
  assert workdir_lib.load_prompt(str(tmp_path), params)["value"].shape == (4, 32)
  other = dict(params, embed={"embedding": params["embed"]["embedding"] + 1})
  with pytest.raises(ValueError, match="another checkpoint"):
    workdir_lib.load_prompt(str(tmp_path), other)
  # A prompt run whose config names another model than the frozen one.
  c = _prompt_cfg("soft", "transformer", frozen["lstm"])
  with pytest.raises(ValueError, match="not this config's model"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  c = _prompt_cfg("soft", "transformer", frozen["transformer"])
  c.init_from = ""
  with pytest.raises(ValueError, match="init_from"):
    config_lib.validate(c)


def test_prompt_config_takes_the_frozen_runs_model_and_data(tmp_path,
                                                            capsys):
  """A single-task run (no task tags) prompt-tuned with the multi-task
  prompt config: model and data come from its config.json; a mismatch
  forced on the command line is still refused."""
  frozen = str(tmp_path / "frozen")
  shutil.copytree(FIXTURE, frozen)
  spec = os.path.join(ROOT, "experiments", "prompt.py:soft,tiny")
  flags = [f"--config.init_from={frozen}", "--config.total_steps=2",
           "--config.log_every=1", "--config.eval_every=100"]
  wd = str(tmp_path / "soft")
  assert cli.main(["train", "--config", spec, "--workdir", wd, *flags]) == 0
  saved = config_lib.from_json(os.path.join(wd, "config.json"))
  base = config_lib.from_json(os.path.join(frozen, "config.json"))
  assert saved.model.to_dict() == base.model.to_dict()
  assert (saved.data.tags, saved.data.stress) == (base.data.tags,
                                                  base.data.stress)
  assert saved.data.prompt_len == saved.prompt.length == 4
  assert saved.data.source_len == base.data.source_len + 4
  assert workdir_lib.load_prompt(wd)["kind"] == "soft"
  capsys.readouterr()
  assert cli.main(["train", "--config", spec, "--workdir",
                   str(tmp_path / "forced"), *flags,
                   "--config.model.embed_dim=48"]) == 2
  assert "not this config's model" in capsys.readouterr().err
