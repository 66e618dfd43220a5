"""`ir_jax.pretrained`: one door to a checkpoint, a Hugging Face directory
or a `.gguf` file; both give the same model, params and tokenizer."""

import numpy as np
import pytest

pytest.importorskip("gguf")

import gguf_files  # noqa: E402
from ir_jax import pretrained  # noqa: E402
from ir_jax.models import gguf, hf  # noqa: E402


def test_a_gguf_file_and_its_converted_directory_agree(tmp_path):
  path = str(tmp_path / "tiny.gguf")
  gguf_files.write(path, "qwen2", types={"matrix": "Q8_0"})
  out = str(tmp_path / "hf")
  gguf.convert(path, out)
  assert pretrained.is_gguf(path) and not pretrained.is_gguf(out)
  assert not pretrained.is_gguf(str(tmp_path))
  assert pretrained.module_config(path) == pretrained.module_config(out)
  for source in (path, out):
    model = pretrained.build(source, scan_layers=True)
    params = pretrained.load_params(source, model)
    assert params["layers"]["query"]["bias"].shape[0] == model.num_layers
    tok = pretrained.tokenizer(source)
    assert tok.encode("the quick fox") == gguf.tokenizer(path).encode(
        "the quick fox")
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}])
  (m1, p1), (m2, p2) = pretrained.load(path), pretrained.load(out)
  ids = np.arange(3, 20)[None]
  np.testing.assert_array_equal(np.asarray(hf.logits(m1, p1, ids)),
                                np.asarray(hf.logits(m2, p2, ids)))


def test_params_in_the_dtype_asked_for(tmp_path):
  path = str(tmp_path / "tiny.gguf")
  gguf_files.write(path)
  model = pretrained.build(path, dtype="bfloat16")
  params = pretrained.load_params(path, model, dtype="float32")
  assert params["embed"]["embedding"].dtype == np.float32
  assert pretrained.load_params(path, model)["embed"][
      "embedding"].dtype.name == "bfloat16"
