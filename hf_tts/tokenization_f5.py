"""F5-TTS / E2-TTS text tokenizer: upstream's `vocab.txt` (line number = id) with its char and pinyin front ends.

Ids equal upstream's: in "pinyin" mode (every released model) a text goes through the same conversion as upstream's
`convert_char_to_pinyin` (rjieba segmentation, Chinese characters to tone-numbered pinyin with tone sandhi, a space
before each Chinese syllable and before multi-letter ASCII words that follow a non-separator); in "char" mode every
character is one token (what upstream's char-vocab models were trained on). Tokens missing from the vocab map to id 0,
as upstream's `list_str_to_idx` does; `encode_batch` reports which ones they were.

Chinese text needs the `zh` extra (pypinyin + rjieba), and so does exact parity in general: rjieba's word segmentation
decides where upstream inserts spaces. Without the extra, Chinese text raises an InputError that names the extra, and
other text is segmented by an approximation of rjieba (words, dotted and hyphenated runs kept whole) with a one-time
warning; it agrees on plain prose and can differ on code-like text (URLs, "a+b").
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizer
from transformers.utils import logging

from hf_tts.errors import InputError

logger = logging.get_logger(__name__)

TOKENIZER_TYPES = ("pinyin", "char")
# Upstream pads id sequences with -1 (the text embedding shifts ids by +1 so padding lands on the filler row 0).
TEXT_PAD_ID = -1
# The tokenizer's pad token, for transformers' padding (which needs an id >= 0): a special token appended after the
# vocab, so its id is len(vocab) = config.text_num_embeds, one past the last text id. The models read that id (and
# attention_mask == 0) as upstream's -1 padding.
PAD_TOKEN = "<pad>"
# Upstream's replacements applied before segmentation, to keep common typography inside the vocab.
_TYPOGRAPHY = str.maketrans({";": ",", "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
# A multi-letter ASCII word gets a space in front unless the previous token is one of these.
_NO_SPACE_BEFORE_WORD = " :'\""
# Approximates rjieba's segments of non-Han text: words, numbers, "F5-TTS", "3.5%", "img.shields.io".
_ALNUM_RUN = re.compile(r"[A-Za-z0-9_%-]+(?:\.[A-Za-z0-9_%-]+)*")
ZH_EXTRA_HINT = "pip install 'hf_tts[zh]'"
_warned_missing_zh: list[bool] = []  # non-empty once the approximation warning was logged


def is_chinese_char(char: str) -> bool:
    """Upstream's test for characters that go through pinyin (bopomofo to CJK unified ideographs)."""
    return "\u3100" <= char <= "\u9fff"


def read_vocab_file(vocab_file: str | os.PathLike) -> list[str]:
    """Tokens of an upstream `vocab.txt`, one per line, the line number being the id.

    A line is the token followed by a newline (the token itself may be a space), as upstream reads it.
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise InputError(f"vocab file {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"vocab file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the newline that ends the last line
    if not tokens:
        raise InputError(f"vocab file {path} is empty; expected one token per line (upstream's vocab.txt)")
    first_line: dict[str, int] = {}
    for line_number, token in enumerate(tokens):
        if token in first_line:
            raise InputError(
                f"vocab file {path} lists {token!r} twice (lines {first_line[token] + 1} and {line_number + 1}); "
                "each token must appear once because its line number is its id"
            )
        first_line[token] = line_number
    return tokens


def check_text(text: object, what: str, *, max_chars: int | None = None) -> str:
    """`text` if it is a string of valid Unicode (encodable as UTF-8) of at most `max_chars` characters, else an
    InputError naming `what`. A lone surrogate comes from broken input: a Python string built from invalid UTF-8 with
    `surrogateescape` (how Linux hands undecodable command-line bytes to Python) or a bad escape."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise InputError(
            f"{what} is not valid Unicode text: {bad!r} at character {error.start} is a lone surrogate (undecodable "
            "bytes, such as invalid UTF-8 on a command line); give UTF-8 text (on the command line: check the "
            "terminal's encoding, or use --text-file with a UTF-8 file)"
        ) from None
    if max_chars is not None and len(text) > max_chars:
        raise InputError(
            f"{what} has {len(text)} characters, more than the {max_chars} one request may speak; split it into "
            "several requests"
        )
    return text


def _load_zh_tools(text: str) -> tuple[Callable[[str], list[str]], Callable[[str], list[str]]]:
    """(rjieba.cut, word -> TONE3 pinyin with tone sandhi), or an InputError naming the `zh` extra."""
    try:
        import rjieba
        from pypinyin import Style, lazy_pinyin
    except ImportError as error:
        chinese = "".join(dict.fromkeys(c for c in text if is_chinese_char(c)))[:10]
        raise InputError(
            f"text contains Chinese characters ({chinese!r}) that need pinyin conversion, which needs the zh extra "
            f"(missing module {error.name!r}): {ZH_EXTRA_HINT}"
        ) from error
    return rjieba.cut, lambda word: lazy_pinyin(word, style=Style.TONE3, tone_sandhi=True)


def _segment_without_jieba(text: str) -> list[str]:
    """Segment text that has no Chinese characters roughly as rjieba does: word runs stay whole, every other
    character stands alone."""
    if not _warned_missing_zh:
        _warned_missing_zh.append(True)
        logger.warning(
            "rjieba/pypinyin are not installed: word segmentation is approximated, so ids may differ from upstream "
            f"around punctuation in code-like text; for exact ids: {ZH_EXTRA_HINT}"
        )
    segments: list[str] = []
    position = 0
    for match in _ALNUM_RUN.finditer(text):
        segments.extend(text[position : match.start()])
        segments.append(match.group())
        position = match.end()
    segments.extend(text[position:])
    return segments


def convert_text_to_pinyin_tokens(text: str) -> list[str]:
    """Upstream's `convert_char_to_pinyin` for one text: the token list the pinyin vocab indexes."""
    text = text.translate(_TYPOGRAPHY)
    try:
        cut, to_pinyin = _load_zh_tools(text)
    except InputError:
        if any(is_chinese_char(c) for c in text):
            raise
        cut, to_pinyin = _segment_without_jieba, None
    tokens: list[str] = []
    for segment in cut(text):
        utf8_length = len(segment.encode("utf-8"))
        if utf8_length == len(segment):  # pure ASCII
            if tokens and utf8_length > 1 and tokens[-1] not in _NO_SPACE_BEFORE_WORD:
                tokens.append(" ")
            tokens.extend(segment)
            continue
        # Only 3-byte (CJK range) characters: convert the whole word so polyphones and tone sandhi see its context.
        syllables = to_pinyin(segment) if to_pinyin is not None and utf8_length == 3 * len(segment) else None
        if syllables is not None and len(syllables) == len(segment):
            for char, syllable in zip(segment, syllables):
                if is_chinese_char(char):
                    tokens.append(" ")
                tokens.append(syllable)
            continue
        # Mixed text, or a run pypinyin keeps whole (where upstream would fail): character by character.
        for char in segment:
            if is_chinese_char(char):
                tokens.append(" ")
                tokens.extend(to_pinyin(char))
            else:
                tokens.append(char)
    return tokens


@dataclass
class F5TextBatch:
    """Padded ids of a batch of texts, ready for the model's `text` argument."""

    ids: torch.Tensor  # (B, Nt) int64, padded with -1 like upstream's list_str_to_idx
    unknown_tokens: list[str]  # distinct tokens missing from the vocab (encoded as id 0), in order of appearance


class F5Tokenizer(PreTrainedTokenizer):
    r"""Char / pinyin tokenizer over upstream F5-TTS `vocab.txt`, with transformers' conventions: `tokenizer(texts,
    padding=True, truncation=True, max_length=N, return_tensors="pt")` gives `input_ids` padded on the right with
    `<pad>` (id len(vocab), one past the last text id) and `attention_mask`; the models take both and treat the
    padding as upstream's -1. `encode_batch` pads with -1 itself, as upstream's `list_str_to_idx`.

    Args:
        vocab_file: upstream's `vocab.txt` (one token per line; the line number is the id; line 0 is a space).
        tokenizer_type: "pinyin" (Chinese characters become pinyin syllables; what released models use) or "char"
            (one token per character).
    """

    vocab_files_names = {"vocab_file": "vocab.txt"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"  # the text embedding reads a sample's ids from position 0

    def __init__(self, vocab_file: str, tokenizer_type: str = "pinyin", **kwargs):
        if tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"tokenizer_type must be one of {TOKENIZER_TYPES}, got {tokenizer_type!r}")
        self.vocab_file = str(vocab_file)
        self.tokenizer_type = tokenizer_type
        # Set before super().__init__, which already asks for the vocab.
        self.id_to_token = read_vocab_file(vocab_file)
        self.vocab = {token: index for index, token in enumerate(self.id_to_token)}
        # Folders saved before the tokenizer had a pad token get it too (appended after the vocab).
        kwargs.setdefault("pad_token", PAD_TOKEN)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        # "<pad>" typed in a text is five characters, as upstream reads it, never the pad token.
        kwargs.setdefault("split_special_tokens", True)
        super().__init__(tokenizer_type=tokenizer_type, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def get_vocab(self) -> dict[str, int]:
        # transformers' convention: the vocab plus the added tokens (<pad>), so len(tokenizer) counts them
        return {**self.vocab, **self._added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        check_text(text, "the text to tokenize")
        if self.tokenizer_type == "pinyin":
            return convert_text_to_pinyin_tokens(text)
        return list(text)

    def _convert_token_to_id(self, token: str) -> int:
        # Upstream maps every unknown token to 0 (the space); there is no dedicated unk id.
        return self.vocab.get(token, 0)

    def _convert_id_to_token(self, index: int) -> str:
        return self.id_to_token[index]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def encode_batch(self, texts: str | list[str]) -> F5TextBatch:
        """Ids of `texts` padded with -1 into one (B, Nt) tensor, as upstream's `list_str_to_idx` builds them."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts:
            raise InputError(f"encode_batch needs a text or a non-empty list of texts, got {texts!r:.60}")
        sequences, unknown = [], {}
        for index, text in enumerate(texts):
            tokens = self.tokenize(check_text(text, f"text {index}" if len(texts) > 1 else "the text"))
            unknown.update((token, None) for token in tokens if token not in self.vocab)
            sequences.append(torch.tensor([self._convert_token_to_id(t) for t in tokens], dtype=torch.long))
        ids = pad_sequence(sequences, batch_first=True, padding_value=TEXT_PAD_ID)
        return F5TextBatch(ids=ids, unknown_tokens=list(unknown))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (f"{filename_prefix}-" if filename_prefix else "") + self.vocab_files_names["vocab_file"]
        path = Path(save_directory) / name
        path.write_text("".join(f"{token}\n" for token in self.id_to_token), encoding="utf-8")
        return (str(path),)


__all__ = ["F5TextBatch", "F5Tokenizer", "check_text", "convert_text_to_pinyin_tokens", "read_vocab_file"]
