"""F5Tokenizer: ids equal upstream's (fixture `text` tensors), char mode, unknown tokens, zh extra, save/load, and
transformers' conventions (padding, attention_mask, truncation, pad_token) with models that take what it returns and
give the same outputs as for upstream's -1 padded ids."""

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
from tests.test_f5_models import fixture_model


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


# ------------------------------------------------------------------ transformers conventions


def test_padding_attention_mask_and_pad_token(tokenizer):
    texts = ["Hello world, this is F5.", "Hi!", "你好"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == tokenizer.vocab_size == 2545
    assert len(tokenizer) == tokenizer.vocab_size + 1
    assert set(batch) == {"input_ids", "attention_mask"}
    upstream = tokenizer.encode_batch(texts).ids
    assert batch["input_ids"].shape == upstream.shape
    # Same ids where the mask is 1; the pad id exactly where upstream has -1.
    assert torch.equal(batch["attention_mask"].bool(), upstream != -1)
    assert torch.equal(batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -1), upstream)
    assert torch.equal(batch["input_ids"] == tokenizer.pad_token_id, upstream == -1)
    # Unpadded call: lists, with a mask of ones.
    single = tokenizer("Hi!")
    assert single["input_ids"] == upstream[1, :3].tolist() and single["attention_mask"] == [1, 1, 1]
    assert tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True) == "Hi!"


def test_truncation_and_pad_to_length(tokenizer):
    batch = tokenizer(["Hello world", "Hi"], padding="max_length", truncation=True, max_length=4, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 4)
    assert batch["input_ids"][0].tolist() == tokenizer.encode_batch("Hell").ids[0].tolist()
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_pad_token_text_is_plain_characters(tokenizer):
    # "<pad>" typed in a text is read as characters, as upstream reads it, never as padding.
    assert tokenizer("a<pad>b")["input_ids"] == tokenizer.encode_batch("a<pad>b").ids[0].tolist()
    assert tokenizer.pad_token_id not in tokenizer("a<pad>b")["input_ids"]


def test_pad_token_survives_save_and_load_and_old_folders_get_it(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "new")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "new")
    assert loaded.pad_token == "<pad>" and loaded.pad_token_id == 2545
    # A folder written before the tokenizer had a pad token (tokenizer_config.json without it).
    old = tmp_path / "old"
    old.mkdir()
    (old / "vocab.txt").write_bytes(upstream_fixture("f5_vocab.txt").read_bytes())
    (old / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "F5Tokenizer", "tokenizer_type": "pinyin"})
    )
    old_loaded = AutoTokenizer.from_pretrained(old)
    padded = old_loaded(["ab", "abc"], padding=True, return_tensors="pt")
    assert padded["input_ids"][0, -1].item() == old_loaded.pad_token_id == 2545


@pytest.fixture(scope="module", params=["f5_v1_tiny", "e2_tiny"])
def fixture_loaded(request):
    return fixture_model(request.param)


def test_models_take_tokenizer_output_with_upstream_results(tokenizer, fixture_loaded):
    """Backbone, forward (loss) and sample on the tokenizer's padded ids + attention_mask give exactly what the
    -1 padded ids give, and the backbone still matches upstream's fixture outputs."""
    model, c, meta = fixture_loaded
    batch = tokenizer(meta["texts"], padding=True, return_tensors="pt")
    assert torch.equal(tokenizer.encode_batch(meta["texts"]).ids, c["text"])
    with torch.no_grad():
        from_tokenizer = model.backbone(c["x"], c["cond"], batch["input_ids"], c["time"], mask=c["mask"])
        from_upstream_ids = model.backbone(c["x"], c["cond"], c["text"], c["time"], mask=c["mask"])
    assert torch.equal(from_tokenizer, from_upstream_ids)
    assert (from_tokenizer - c["out_cond"]).abs().max().item() <= 1e-5

    # forward: the training loss with the same random draws
    mel = c["x"]
    torch.manual_seed(0)
    loss_upstream = model(mel, c["text"]).loss
    torch.manual_seed(0)
    loss_tokenizer = model(mel=mel, **batch).loss
    assert torch.equal(loss_upstream, loss_tokenizer)

    # sample: a batch of two texts on the fixture's mel prompt
    frames = c["cond"].shape[1]
    options = dict(steps=2, cfg_strength=2.0, lens=torch.tensor([10, 12]), seed=3)
    upstream_mel = model.sample(c["cond"], c["text"], frames, **options)
    assert torch.equal(model.sample(c["cond"], batch["input_ids"], frames, **options), upstream_mel)
    assert torch.equal(model.sample(c["cond"], duration=frames, **batch, **options), upstream_mel)
    # Left padding (another tokenizer setting) reads the same through the attention mask.
    tokenizer.padding_side = "left"
    try:
        left = tokenizer(meta["texts"], padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    assert not torch.equal(left["input_ids"], batch["input_ids"])
    assert torch.equal(model.sample(c["cond"], duration=frames, **left, **options), upstream_mel)


def test_model_text_input_errors(fixture_loaded):
    model, c, _ = fixture_loaded
    with pytest.raises(InputError, match="not both"):
        model.sample(c["cond"], c["text"], 48, input_ids=c["text"])
    with pytest.raises(InputError, match="text ids are missing"):
        model.sample(c["cond"], duration=48)
    with pytest.raises(InputError, match="attention_mask has shape"):
        model.sample(c["cond"], c["text"], 48, attention_mask=torch.ones(2, 3))
    with pytest.raises(InputError, match="needs `duration`"):
        model.sample(c["cond"], c["text"])
