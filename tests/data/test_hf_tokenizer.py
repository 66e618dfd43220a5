"""A checkpoint's tokenizer.json: ids equal transformers.AutoTokenizer's,
special tokens from the checkpoint's files."""

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from ir_jax.data import hf_tokenizer  # noqa: E402

CORPUS = ["the quick brown fox jumps over the lazy dog",
          "phonemes: HH AH0 L OW1", "naïve café — ünïcödé", "1234 + 5678 = ?",
          "tab\tand\nnewline", "  leading and trailing spaces  "] * 20
STRINGS = ["the fox", "HH AH0 L OW1", "café naïve", "", " ", "  two  spaces",
           "unseen words: zebra quixotic", "emoji 🙂 and 中文", "a\nb\tc"]


def make_tokenizer(path, bos=True):
  from tokenizers import models, pre_tokenizers, decoders, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE(unk_token=None))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if bos:
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B",
        special_tokens=[("<s>", tok.token_to_id("<s>"))])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
      pad_token="<pad>")
  fast.save_pretrained(path)
  return fast


def test_ids_equal_autotokenizer(tmp_path):
  make_tokenizer(tmp_path)
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ours = hf_tokenizer.load(str(tmp_path))
  for text in STRINGS:
    assert ours.encode(text) == theirs.encode(text), text
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(
        text, add_special_tokens=False), text
    ids = theirs.encode(text)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
      theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)
  assert ours.encode("the fox")[0] == ours.bos_id
  assert ours.vocab_size == len(theirs)


def test_special_ids_from_config_files_and_pad_fallback(tmp_path):
  make_tokenizer(tmp_path, bos=False)
  config = json.load(open(tmp_path / "tokenizer_config.json"))
  for key in ("pad_token", "eos_token"):
    config.pop(key, None)
  json.dump(config, open(tmp_path / "tokenizer_config.json", "w"))
  (tmp_path / "special_tokens_map.json").unlink(missing_ok=True)
  json.dump({"eos_token_id": [2, 1]}, open(tmp_path / "generation_config.json",
                                          "w"))
  tok = hf_tokenizer.load(str(tmp_path))
  assert tok.eos_id == 2 and tok.eos_ids == (2, 1)
  assert tok.pad_id == 2                    # No pad token: pad with EOS.


def test_pad_left_and_right(tmp_path):
  make_tokenizer(tmp_path)
  tok = hf_tokenizer.load(str(tmp_path))
  seqs = [tok.encode("the quick fox"), tok.encode("a")]
  ids, mask = tok.pad(seqs, side="left")
  assert ids.shape == mask.shape == (2, len(seqs[0]))
  assert list(ids[1, mask[1]]) == seqs[1] and not mask[1, 0]
  ids, mask = tok.pad(seqs, length=12, side="right")
  assert list(ids[1, :len(seqs[1])]) == seqs[1]
  assert (ids[1, len(seqs[1]):] == tok.pad_id).all()
  with pytest.raises(ValueError, match="more than length"):
    tok.pad(seqs, length=2)
  assert np.issubdtype(ids.dtype, np.integer)


def test_missing_tokenizer_json_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    hf_tokenizer.load(str(tmp_path))


def test_token_byte_table_spells_the_decoded_text(tmp_path):
  """Byte-level BPE (a GGUF header's tokenizer): the bytes of the tokens of
  any text are the text's UTF-8 bytes; special tokens spell nothing."""
  pytest.importorskip("gguf")
  import gguf_files
  from ir_jax.models import gguf
  path = str(tmp_path / "t.gguf")
  gguf_files.write(path)
  tok = gguf.tokenizer(path)
  table, lengths = hf_tokenizer.token_byte_table(tok)
  assert table.shape[0] == lengths.shape[0] == tok.vocab_size
  assert lengths[tok.eos_id] == 0 and lengths[tok.bos_id] == 0
  for text in gguf_files.CORPUS + ["  x  12 ÷ 🙂 unseen wörds"]:
    ids = tok.encode(text, add_special_tokens=False)
    spelled = b"".join(bytes(table[i, :lengths[i]].astype(np.uint8).tolist())
                       for i in ids)
    assert spelled == text.encode("utf-8"), text
  chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
  ids = tok.encode(chat, add_special_tokens=False)
  spelled = b"".join(bytes(table[i, :lengths[i]].tolist()) for i in ids)
  assert spelled == chat.replace("<|im_start|>", "").replace(
      "<|im_end|>", "").encode()


def test_named_chat_templates_use_the_default(tmp_path):
  make_tokenizer(tmp_path)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text()) if (
      tmp_path / "tokenizer_config.json").exists() else {}
  config["chat_template"] = [
      {"name": "tool_use", "template": "TOOLS"},
      {"name": "default", "template": "{{ messages[0]['content'] }}!"}]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  tok = hf_tokenizer.load(str(tmp_path))
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi!"
