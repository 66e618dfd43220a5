"""ir_jax.config: loading, overrides, the schema and every check."""

import os
import re

import hypothesis
import hypothesis.strategies as st
import jax
import ml_collections
import pytest

from ir_jax import config as config_lib
from ir_jax import state as state_lib
from ir_jax import step as step_lib
from helpers import ROOT, tiny


def test_unknown_config_key_lists_valid_keys():
  with pytest.raises(ValueError, match="Valid keys"):
    tiny(**{"optim.learnign_rate": 1.0})
  with pytest.raises(ValueError, match="variants"):
    config_lib.load(os.path.join(ROOT, "experiments", "g2p.py:huge"))


def test_every_shipped_config_validates():
  specs = ["g2p.py", "g2p.py:tiny", "g2p.py:lstm,fused", "g2p.py:multi",
           "g2p.py:base", "charlm.py", "charlm.py:lstm,tiny"]
  for spec in specs:
    config_lib.validate(config_lib.load(os.path.join(ROOT, "experiments", spec)))
  for spec in ("g2p_rl.py:instant,tiny", "prompt.py:soft,tiny",
               "prompt.py:search,greedy"):
    c = config_lib.load(os.path.join(ROOT, "experiments", spec))
    c.init_from = c.init_from or "runs/g2p"
    config_lib.validate(c)
  for stage in ("sft", "grpo_token", "grpo_sequence", "sft_wall"):
    c = config_lib.load(os.path.join(ROOT, "experiments",
                                     f"llm_rl.py:spell_backward,{stage}"))
    c.model.hf_path = "smollm2.gguf"
    config_lib.validate(c)
  with pytest.raises(ValueError, match="TASK,STAGE"):
    config_lib.load(os.path.join(ROOT, "experiments", "llm_rl.py:sft"))
  for name in ("v4_8", "v5litepod_16", "v5p_64", "v6e_256",
               "llama3_8b_v5p_64", "qwen3_8b_v6e_64", "qwen3_8b_v6e_64.py:full"):
    name = name if name.endswith(":full") else name + ".py"
    c = config_lib.load(os.path.join(ROOT, "tpu_configs", name))
    config_lib.validate(c, num_devices=c.chips)


def test_overrides_parse_with_the_fields_type():
  c = tiny(**{"total_steps": "7", "optim.learning_rate": "1e-3",
              "data.stress": "true", "rl.mode": "seq",
              "data.paths": "('a.txt', 'b.txt')"})
  assert c.total_steps == 7 and c.optim.learning_rate == 1e-3
  assert c.data.stress is True and c.rl.mode == "seq"
  assert c.data.paths == ("a.txt", "b.txt")
  for key, text in (("total_steps", "abc"), ("data.stress", "maybe"),
                    ("data.paths", "5"), ("model.num_heads", "3.5")):
    with pytest.raises(ValueError, match=f"--config.{key}="):
      tiny(**{key: text})
  with pytest.raises(ValueError, match="must look like"):
    config_lib.apply_overrides(tiny(), ["--config.seed"])


def test_saved_configs_round_trip_and_gain_new_defaults(tmp_path):
  c = tiny()
  path = str(tmp_path / "config.json")
  config_lib.save(c, path)
  loaded = config_lib.from_json(path)
  del loaded.rl                      # As written before `rl` existed.
  merged = config_lib.with_defaults(loaded, config_lib.default_config())
  assert merged.rl.to_dict() == config_lib.default_config().rl.to_dict()
  assert merged.model.to_dict() == c.model.to_dict()
  config_lib.validate(merged)        # Lists (JSON) pass as tuples.


# (overrides, field the message names, words of the fix). Each is a mistake
# that, unchecked, fails late or silently.
BAD = [
    ({"total_steps": 0}, "config.total_steps", ">= 1"),
    ({"batch_size": -4}, "config.batch_size", ">= 1"),
    ({"task": "mt"}, "config.task", "'g2p'"),
    ({"data.target_len": 0}, "config.data.target_len", "EOS"),
    ({"data.source_len": 2}, "config.data.source_len", "BOS"),
    ({"data.directions": "g2p,x2y"}, "config.data.directions", "p2g"),
    ({"model.num_heads": 3}, "config.model.num_heads", "must divide"),
    ({"model.num_heads": 32}, "config.model.embed_dim / num_heads", "even"),
    ({"model.embed_dim": 0}, "config.model.embed_dim", ">= 1"),
    ({"model.dtype": "float16"}, "config.model.dtype", "'bfloat16'"),
    ({"model.dropout": 1.0}, "config.model.dropout", "[0.0, 1.0)"),
    ({"optim.learning_rate": 0.0}, "config.optim.learning_rate", "> 0"),
    ({"optim.b2": 1.0}, "config.optim.b2", "(0.0, 1.0)"),
    ({"objective.alpha": 1.5}, "config.objective.alpha", "[0.0, 1.0]"),
    ({"objective.alpha_schedule": "cosine"}, "config.objective.alpha_schedule",
     "'warmup'"),
    ({"objective.gamma": 0.0}, "config.objective.gamma", "> 0"),
    ({"objective.soft_ed_implementation": "cuda"},
     "config.objective.soft_ed_implementation", "'pallas'"),
    ({"rl.mode": "ppo"}, "config.rl.mode", "'instant'"),
    ({"rl.mode": "seq", "rl.baseline": "mean"}, "config.rl.baseline",
     "'greedy'"),
    ({"rl.mode": "seq", "rl.num_samples": 0}, "config.rl.num_samples", ">= 1"),
    ({"rl.mode": "seq", "rl.temperature": 0.0}, "config.rl.temperature",
     "greedy"),
    ({"rl.mode": "seq", "rl.top_p": 0.0}, "config.rl.top_p", "(0.0, 1.0]"),
    ({"rl.mode": "seq", "rl.kl_weight": 0.1}, "config.rl.kl_weight",
     "init_from"),
    ({"prompt.mode": "soft"}, "config.prompt.mode", "init_from"),
    ({"prompt.mode": "tune", "init_from": "runs/x"}, "config.prompt.mode",
     "'search'"),
    ({"prompt.mode": "soft", "init_from": "runs/x"}, "config.data.prompt_len",
     "prompt.length"),
    ({"prompt.mode": "soft", "init_from": "runs/x", "data.prompt_len": 4,
      "prompt.init": "tag"}, "config.prompt.init", "data.tags=True"),
    ({"prompt.mode": "search", "init_from": "runs/x", "data.prompt_len": 4,
      "prompt.strategy": "anneal"}, "config.prompt.strategy", "'evolve'"),
    ({"rl.mode": "mwer", "rl.num_samples": 1}, "config.rl.num_samples",
     ">= 2"),
    ({"rl.mode": "mwer", "rl.candidates": "nbest"}, "config.rl.candidates",
     "beam"),
    ({"optim.schedule": "linear"}, "config.optim.schedule", "constant"),
    # Combinations that would silently change the objective (#29).
    ({"rl.mode": "instant", "rl.credit": "sequence"}, "config.rl.credit",
     "rl.mode=grpo"),
    ({"rl.mode": "seq", "rl.loss_aggregation": "constant"},
     "config.rl.loss_aggregation", "defaults"),
    ({"rl.mode": "grpo", "objective.alpha": 1.0, "rl.baseline": "greedy"},
     "config.rl.baseline", "'group'"),
    ({"rl.mode": "grpo", "objective.alpha": 1.0, "rl.kl_weight": 0.1,
      "init_from": "runs/x", "rl.top_k": 5}, "config.rl.kl_estimator",
     "kl_estimator=exact"),
    ({"data.length_buckets": -1}, "config.data.length_buckets", ">= 0"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "config.mesh", "-1"),
    ({"mesh.tensor": 0}, "config.mesh", "positive"),
    ({"logical_rules": "(('embed', 'model'),)"}, "config.logical_rules",
     "mesh axes"),
]


@pytest.mark.parametrize("overrides,field,fix", BAD,
                         ids=[",".join(b[0]) for b in BAD])
def test_validate_names_the_field_and_the_fix(overrides, field, fix):
  with pytest.raises(ValueError) as e:
    config_lib.validate(tiny(**overrides))
  assert field in str(e.value) and fix in str(e.value), str(e.value)


def test_validate_checks_types_and_model_fields_by_kind():
  # ConfigDict keeps a field's type once set; a section built anew (as
  # configs build their model section) is checked here.
  c = tiny()
  c.model = ml_collections.ConfigDict(dict(c.model, num_layers="2"))
  with pytest.raises(ValueError, match=r"config.model.num_layers must be an "
                     "integer, got '2'"):
    config_lib.validate(c)
  c = tiny()
  c.data = ml_collections.ConfigDict(dict(c.data, stress=1))
  with pytest.raises(ValueError, match="config.data.stress must be a boolean"):
    config_lib.validate(c)
  c = tiny()
  c.data.sorce_len = 5
  with pytest.raises(ValueError, match=r"Unknown config keys \['data.sorce_len'\]"):
    config_lib.validate(c)
  c = tiny()
  c.model.hidden_dim = 64           # An LSTM field on a Transformer.
  with pytest.raises(ValueError, match="transformer model does not take"):
    config_lib.validate(c)
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py:lstm,tiny"))
  config_lib.validate(c)
  c.model.kind = "gru"
  with pytest.raises(ValueError, match="config.model.kind"):
    config_lib.validate(c)


def test_mesh_against_devices_and_processes():
  c = tiny(**{"batch_size": 16})
  config_lib.validate(c, num_devices=8)
  assert config_lib.mesh_shape(c.mesh, 8) == (8, 1, 1)
  c = tiny(**{"mesh.fsdp": 3})
  with pytest.raises(ValueError, match="do not divide the 8 devices"):
    config_lib.validate(c, num_devices=8)
  c = tiny(**{"mesh.data": 2, "mesh.fsdp": 2})
  with pytest.raises(ValueError, match="has 4 devices but 8 are visible"):
    config_lib.validate(c, num_devices=8)
  c = tiny(**{"batch_size": 12})
  with pytest.raises(ValueError, match="data x fsdp = 8"):
    config_lib.validate(c, num_devices=8)
  with pytest.raises(ValueError, match="divide by the 5 processes"):
    config_lib.validate(tiny(), num_devices=1, num_processes=5)


# ------------------------------------------------------------------ fuzz

_DEFAULTS = config_lib.default_config()
_KEYS = [k for k in config_lib.leaf_keys(_DEFAULTS) if k != "logical_rules"]
_WORDS = sorted(set(config_lib.RL_MODES + config_lib.BASELINES +
                    config_lib.PROMPT_MODES + config_lib.PROMPT_INITS +
                    config_lib.SEARCH_STRATEGIES + config_lib.TASKS +
                    config_lib.ALPHA_SCHEDULES + config_lib.IMPLEMENTATIONS +
                    config_lib.DTYPES + ("lstm", "g2p,p2g", "xyz", "runs/x")))
_VALUES = st.one_of(
    st.sampled_from([-2, -1, 0, 1, 2, 3, 4, 8, 16, 64, 300]),
    st.sampled_from([-1.0, 0.0, 1e-3, 0.5, 0.99, 1.0, 1.5]),
    st.booleans(), st.sampled_from(_WORDS))
def test_length_buckets_refuse_the_prefix_lm():
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py:prefix,tiny"))
  c.data.length_buckets = 3
  with pytest.raises(ValueError, match=r"config\.data\.length_buckets.*"
                     r"prefix_lm(.|\n)*data\.length_buckets=0"):
    config_lib.validate(c)




def _typed(key):
  """Values of the default's type for `key` (its default among them), so
  about half of the override sets are valid; others come from `_VALUES`."""
  if key not in _KEYS:
    return _VALUES
  default = _DEFAULTS
  for part in key.split("."):
    default = default[part]
  if isinstance(default, bool):
    typed = st.booleans()
  elif isinstance(default, int):
    typed = st.sampled_from([0, 1, 2, 4, 8, 16])
  elif isinstance(default, float):
    typed = st.sampled_from([0.0, 1e-3, 0.1, 0.5, 1.0])
  elif isinstance(default, str):
    typed = st.sampled_from(_WORDS)
  else:
    return st.just(default)
  return st.one_of(st.just(default), typed, _VALUES)


_OVERRIDES = st.lists(st.sampled_from(
    _KEYS + ["optim.learnign_rate", "model.hidden_dim", "bogus"]).flatmap(
        lambda k: st.tuples(st.just(k), _typed(k))), max_size=4)
_FIELD = re.compile(r"(?:config\.|')([A-Za-z_][\w.]*[\w])")
_SECTIONS = {k.split(".")[0] for k in _KEYS}


def _named_fields(line: str, overrides):
  """The config keys a message's first line names (after `config.` or in
  quotes) that are real fields or sections, or keys the overrides set."""
  asked = {k for k, _ in overrides}
  return {n for n in _FIELD.findall(line)
          if n in asked or n in _KEYS or n in _SECTIONS}


def _trace_step(c, setup):
  task, model, tx, _, _ = setup
  state = jax.eval_shape(lambda: state_lib.init_state(c, model, tx, task))
  batch = {k: jax.ShapeDtypeStruct((c.batch_size,) + v.shape[1:], v.dtype)
           for k, v in task.train.items()}
  ref = state.params if c.rl.mode and c.rl.kl_weight else None
  _, metrics = jax.eval_shape(step_lib.make_train_step(c, model, tx),
                              state, batch, ref)
  assert metrics["loss"].shape == ()


@pytest.mark.slow
def test_fuzzed_configs_validate_or_name_the_field():
  """260 random override sets: each is refused with a message whose first
  line names a config field (one it set, or a real field it conflicts
  with), or it validates; at least 25 valid ones (one device) trace their
  train step from shapes without error. (Planted bug this catches: the
  unknown-key refusal worded without the key, "Unknown config key.")"""
  traced, refused = [], []

  @hypothesis.settings(max_examples=260, deadline=None, derandomize=True,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(_OVERRIDES, st.sampled_from([1, 8]))
  def one(overrides, devices):
    c = tiny()
    try:
      config_lib.apply_overrides(
          c, [f"--config.{k}={v}" for k, v in overrides])
      config_lib.validate(c, num_devices=devices)
      if devices != 1 or len(traced) >= 30:
        return
      setup = state_lib.setup(c)   # The data may still refuse (no pairs).
    except ValueError as e:
      first = str(e).splitlines()[0]
      assert _named_fields(first, overrides), (overrides, first)
      refused.append(overrides)
      return
    _trace_step(c, setup)
    traced.append(overrides)

  one()
  assert len(traced) >= 25 and len(refused) >= 25, (len(traced),
                                                   len(refused))


def _hf(**overrides):
  c = config_lib.load(os.path.join(ROOT, "experiments", "hf.py:lora,tiny"))
  c.model.hf_path = "ckpt"
  c.data.train_path = c.data.eval_path = "items.jsonl"
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


@pytest.mark.parametrize("overrides,field,fix", [
    ({"model.hf_path": ""}, "task='text'", "model.hf_path"),
    ({"data.eval_path": ""}, "config.data.eval_path", "JSONL"),
    ({"data.target_len": 1}, "config.data.target_len", "EOS"),
    ({"model.prefix_lm": True}, "config.model.prefix_lm", "model.hf_path"),
])
def test_text_task_checks(overrides, field, fix):
  with pytest.raises(ValueError) as e:
    config_lib.validate(_hf(**overrides))
  assert field in str(e.value) and fix in str(e.value), str(e.value)


def test_lora_checks_and_the_two_target_lists_agree():
  from ir_jax.models import transformer
  assert config_lib.LORA_TARGETS == transformer.LORA_TARGETS
  config_lib.validate(_hf())
  c = _hf()
  c.model.lora.targets = "query,proj"
  with pytest.raises(ValueError, match="config.model.lora.targets"):
    config_lib.validate(c)
  c = _hf()
  c.model.lora.alpha = 0.0
  with pytest.raises(ValueError, match="config.model.lora.alpha"):
    config_lib.validate(c)
  # LoRA and hf_path are transformer fields, off by default: an LSTM
  # config refuses them, and configs without them (every run saved before
  # them) stay valid.
  c = config_lib.load(os.path.join(ROOT, "experiments", "g2p.py:lstm,tiny"))
  c.model.hf_path = "x"
  with pytest.raises(ValueError, match="lstm model does not take"):
    config_lib.validate(c)
  assert "hf_path" not in tiny().model
  # A KL reference comes from init_from or the checkpoint itself.
  config_lib.validate(_hf(**{"rl.mode": "instant", "rl.kl_weight": 0.1}))
