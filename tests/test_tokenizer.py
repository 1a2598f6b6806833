"""F5Tokenizer: ids equal upstream's (fixture `text` tensors), char mode, unknown tokens, zh extra, save/load."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from hf_tts.errors import InputError
from hf_tts.tokenization_f5 import F5Tokenizer, convert_text_to_pinyin_tokens
from tests.conftest import upstream_fixture


@pytest.fixture(scope="module")
def vocab_file():
    return upstream_fixture("f5_vocab.txt")


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return F5Tokenizer(str(vocab_file))


@pytest.mark.parametrize("fixture", ["f5_v1_tiny", "e2_tiny"])
def test_pinyin_ids_equal_upstream_text_tensor(tokenizer, fixture):
    # Compares our -1 padded ids for cases.json `texts` with the `text` tensor upstream built (exact equality).
    folder = upstream_fixture(fixture)
    cases = json.loads((folder / "cases.json").read_text())
    expected = load_file(folder / "cases.safetensors")["text"]
    for text, pinyin in zip(cases["texts"], cases["texts_pinyin"]):
        assert convert_text_to_pinyin_tokens(text) == pinyin
    batch = tokenizer.encode_batch(cases["texts"])
    assert batch.ids.dtype == torch.long
    assert torch.equal(batch.ids, expected)
    assert batch.unknown_tokens == []


def test_sample_text_ids_and_call_api(tokenizer):
    folder = upstream_fixture("f5_v1_tiny")
    cases = json.loads((folder / "cases.json").read_text())
    expected = load_file(folder / "cases.safetensors")["sample_text"]
    text = "".join(cases["sample_text"][0])
    assert torch.equal(tokenizer.encode_batch(text).ids, expected)
    assert tokenizer(text)["input_ids"] == expected[0].tolist()


def test_pinyin_rules(tokenizer):
    # Typography is normalised, Chinese words get tone sandhi, multi-letter ASCII words after punctuation get a space.
    assert convert_text_to_pinyin_tokens("a;b") == ["a", ",", "b"]
    assert convert_text_to_pinyin_tokens("\u201cok\u201d") == ['"', "o", "k", '"']
    assert convert_text_to_pinyin_tokens("你好") == [" ", "ni2", " ", "hao3"]
    assert convert_text_to_pinyin_tokens("(hello)") == ["(", " ", "h", "e", "l", "l", "o", ")"]


def test_char_mode_is_one_token_per_character(vocab_file):
    char_tokenizer = F5Tokenizer(str(vocab_file), tokenizer_type="char")
    assert char_tokenizer.tokenize("Hi, (you)") == list("Hi, (you)")
    batch = char_tokenizer.encode_batch(["ab", "abc"])
    vocab = char_tokenizer.get_vocab()
    assert batch.ids.tolist() == [[vocab["a"], vocab["b"], -1], [vocab["a"], vocab["b"], vocab["c"]]]
    # A Han character is not in the pinyin vocab: unknown -> id 0, reported.
    batch = char_tokenizer.encode_batch("a你")
    assert batch.ids.tolist() == [[vocab["a"], 0]]
    assert batch.unknown_tokens == ["你"]


def test_unknown_tokens_map_to_zero_and_are_reported(tokenizer):
    batch = tokenizer.encode_batch(["x\u00a0y", "\u00a0z\u2603"])
    vocab = tokenizer.get_vocab()
    assert batch.ids.tolist() == [[vocab["x"], 0, vocab["y"]], [0, vocab["z"], 0]]
    assert batch.unknown_tokens == ["\u00a0", "\u2603"]


def test_vocab_line_number_is_id(tokenizer, vocab_file):
    lines = vocab_file.read_text(encoding="utf-8").split("\n")[:-1]
    assert tokenizer.vocab_size == len(lines) == 2545
    assert tokenizer.convert_ids_to_tokens(0) == " "
    assert tokenizer.convert_tokens_to_ids("ni3") == lines.index("ni3")


def test_save_and_auto_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_bytes() == upstream_fixture("f5_vocab.txt").read_bytes()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, F5Tokenizer)
    assert loaded.tokenizer_type == "pinyin"
    text = "你好，世界。Mixed 中文 and English!"
    assert torch.equal(loaded.encode_batch(text).ids, tokenizer.encode_batch(text).ids)


def test_chinese_without_zh_extra_names_the_extra(tokenizer, monkeypatch):
    real_import = builtins.__import__

    def import_without_zh(name, *args, **kwargs):
        if name in ("rjieba", "pypinyin"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_zh)
    with pytest.raises(InputError, match=r"pip install 'hf_tts\[zh\]'"):
        tokenizer.encode_batch("Hello 你好")
    # Text without Chinese still tokenizes (approximate segmentation; plain prose matches upstream).
    assert tokenizer.tokenize("Hello world, this is F5.") == list("Hello world, this is F5.")


@pytest.mark.parametrize(
    ("content", "message"),
    [("a\nb\na\n", "twice"), ("", "empty"), (b"\xff\xfe\n", "not UTF-8")],
)
def test_bad_vocab_files(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        F5Tokenizer(str(path))
    with pytest.raises(InputError, match="does not exist"):
        F5Tokenizer(str(tmp_path / "missing.txt"))


def test_unknown_tokenizer_type(vocab_file):
    with pytest.raises(ValueError, match="tokenizer_type"):
        F5Tokenizer(str(vocab_file), tokenizer_type="byte")
